// The ledger check as the model page runs it: every page of GetLedger and every readable
// forecast fetched through the typed client, the check itself in a worker (verify.ts), and the
// checkpoints seen kept in this browser's local storage, per site and model.
import { api, call } from '../api/client'
import { ApiError } from '../api/errors'
import type { ForecastRecord } from '../api/types'
import type { LedgerJson, Verdict } from '../ledger/verify'
import type { VerifyRequest } from '../ledger/verify.worker'
import { listForecasts } from './useRecord'

const PAGE = 1000

/** The check itself could not run in this browser (its message is for the reader). */
export class CheckFailed extends Error {}

export async function fetchLedger(model: string): Promise<LedgerJson> {
  const ledger: LedgerJson = { entries: [], checkpoints: [], keys: [], unledgeredRunIds: [] }
  let pageToken = ''
  do {
    const page = await call(api.GET('/v1/models/{model}/ledger', { params: { path: { model }, query: { pageSize: PAGE, pageToken } } }))
    ledger.entries.push(...(page.entries ?? []))
    ledger.checkpoints.push(...(page.checkpoints ?? []))
    ledger.keys.push(...(page.keys ?? []))
    ledger.unledgeredRunIds.push(...(page.unledgeredRunIds ?? []))
    pageToken = page.nextPageToken ?? ''
  } while (pageToken)
  return ledger
}

/** Every live forecast the caller may read (null: none, PERMISSION_DENIED). */
export async function fetchReadable(model: string): Promise<ForecastRecord[] | null> {
  try {
    return (await listForecasts(model, {})).forecasts
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return null
    throw e
  }
}

function memoryKey(model: string): string {
  return `foretell.ledger.${model}`
}

export function loadRemembered(model: string): Record<string, string> {
  try {
    const raw = localStorage.getItem(memoryKey(model))
    const parsed: unknown = raw ? JSON.parse(raw) : {}
    if (typeof parsed !== 'object' || parsed === null) return {}
    return Object.fromEntries(Object.entries(parsed).filter((pair): pair is [string, string] => typeof pair[1] === 'string'))
  } catch {
    return {}
  }
}

export function remember(model: string, seen: Record<string, string>): void {
  localStorage.setItem(memoryKey(model), JSON.stringify(seen))
}

export function verifyInWorker(request: VerifyRequest): Promise<Verdict> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../ledger/verify.worker.ts', import.meta.url), { type: 'module' })
    worker.onmessage = (event: MessageEvent<{ verdict?: Verdict; error?: string }>) => {
      worker.terminate()
      if (event.data.verdict) resolve(event.data.verdict)
      else reject(new CheckFailed(event.data.error ?? 'the check failed'))
    }
    worker.onerror = (event) => {
      worker.terminate()
      reject(new CheckFailed(event.message || 'the check could not run'))
    }
    worker.postMessage(request)
  })
}

/** Fetches, checks and remembers; the verdict and how long the check took in the browser. */
export async function checkLedger(model: string): Promise<{ verdict: Verdict; ms: number }> {
  if (!globalThis.crypto?.subtle) throw new CheckFailed('this browser offers no WebCrypto here (the page must be served over HTTPS or from localhost)')
  const [ledger, forecasts] = await Promise.all([fetchLedger(model), fetchReadable(model)])
  const remembered = loadRemembered(model)
  const started = performance.now()
  const verdict = await verifyInWorker({ model, ledger, forecasts, remembered })
  const ms = performance.now() - started
  if (verdict.ok) remember(model, verdict.seen)
  return { verdict, ms }
}
