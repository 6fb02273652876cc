// The browser's own check of a model's ledger: the same checks, in the same order, as
// `foretell verify` (foretell.cli._verify.check_ledger), on what the REST API served.
import type { ForecastRecord } from '../api/types'
import {
  type Canonical,
  GENESIS_HEX,
  checkpointMessage,
  encode,
  entryHash,
  forecast,
  fromBase64,
  hex,
  keyId,
  sortForecasts,
} from './canonical'

export interface LedgerEntryJson {
  sequence?: string
  runId?: string
  prevHash?: string
  entryHash?: string
  payload?: string
  withheld?: boolean
}
export interface LedgerCheckpointJson {
  sequence?: string
  headHash?: string
  signTime?: string
  keyId?: string
  signature?: string
}
export interface LedgerKeyJson {
  keyId?: string
  publicKey?: string
}

/** Every page of GetLedger put together (JSON as the transcoder serves it). */
export interface LedgerJson {
  entries: LedgerEntryJson[]
  checkpoints: LedgerCheckpointJson[]
  keys: LedgerKeyJson[]
  unledgeredRunIds: string[]
}

export interface Verdict {
  ok: boolean
  entries: number
  withheld: number
  checkpoints: number
  /** Forecasts cross-checked against ListForecasts; null when none were readable. */
  forecastsChecked: number | null
  /** The first problem found, and the entry it is in (0 when it is not one entry's). */
  problem: string
  firstBad: number
  head: string
  /** Checkpoints (sequence → head hash hex) to remember for the next check. */
  seen: Record<string, string>
}

class Mismatch extends Error {
  constructor(
    message: string,
    readonly sequence = 0,
  ) {
    super(message)
  }
}

async function checkEntries(model: string, entries: LedgerEntryJson[]): Promise<{ hashes: Map<number, string>; byRun: Map<string, Canonical> }> {
  // Every digest is started first (WebCrypto hashes off this thread) and the payloads are
  // checked meanwhile; the chain is then walked in order, so the first failing entry is named
  // whichever check it fails.
  const digests = entries.map((entry) =>
    entry.withheld || !entry.payload ? null : entryHash(fromBase64(entry.prevHash), entry.payload),
  )
  const hashes = new Map<number, string>()
  const byRun = new Map<string, Canonical>()
  const asOf: string[] = []
  const storedHex: string[] = []
  let failed: Mismatch | null = null
  let previous = GENESIS_HEX
  for (let i = 0; i < entries.length && !failed; i++) {
    const entry = entries[i] as LedgerEntryJson
    const expected = i + 1
    const sequence = Number(entry.sequence ?? 0)
    const where = `entry ${sequence} (run ${entry.runId ?? '?'})`
    const stored = hex(fromBase64(entry.entryHash))
    storedHex[i] = stored
    try {
      if (sequence !== expected) throw new Mismatch(`entry ${expected} is missing: the chain jumps to ${sequence}`, expected)
      if (hex(fromBase64(entry.prevHash)) !== previous) throw new Mismatch(`${where}: its previous hash is not entry ${expected - 1}'s hash`, sequence)
      if (!entry.withheld) {
        if (!entry.payload) throw new Mismatch(`${where}: its run no longer exists (deleted)`, sequence)
        let document: { [key: string]: Canonical }
        try {
          document = JSON.parse(entry.payload) as { [key: string]: Canonical }
        } catch {
          throw new Mismatch(`${where}: its payload is not JSON`, sequence)
        }
        if (encode(document) !== entry.payload || document.run_id !== entry.runId) {
          throw new Mismatch(`${where}: its payload is not in canonical form for this run`, sequence)
        }
        if (document.model !== model) throw new Mismatch(`${where}: its run belongs to model ${String(document.model)}`, sequence)
        byRun.set(entry.runId ?? '', document.forecasts ?? [])
        asOf[i] = String(document.as_of)
      }
    } catch (e) {
      if (!(e instanceof Mismatch)) throw e
      failed = e
      break
    }
    previous = stored
    hashes.set(sequence, stored)
  }
  const computed = await Promise.all(digests)
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i] as LedgerEntryJson
    const sequence = Number(entry.sequence ?? 0)
    if (failed && failed.sequence <= sequence) break
    const mine = computed[i]
    if (mine && hex(mine) !== storedHex[i]) {
      throw new Mismatch(
        `entry ${sequence} (run ${entry.runId ?? '?'}), as_of ${asOf[i] ?? '?'}: the run or its forecasts differ from what was recorded (hash mismatch)`,
        sequence,
      )
    }
  }
  if (failed) throw failed
  return { hashes, byRun }
}

function checkForecasts(byRun: Map<string, Canonical>, forecasts: ForecastRecord[], sequenceOf: Map<string, number>): number {
  const listed = new Map<string, { [key: string]: Canonical }[]>()
  for (const record of forecasts) {
    const runId = record.runId ?? ''
    if (!byRun.has(runId)) throw new Mismatch(`forecast of run ${runId} is not in the ledger (inserted)`)
    const list = listed.get(runId) ?? []
    list.push(forecast(record))
    listed.set(runId, list)
  }
  let checked = 0
  for (const [runId, inLedger] of byRun) {
    const readable = sortForecasts(listed.get(runId) ?? [])
    if (encode(readable) !== encode(inLedger)) {
      throw new Mismatch(`entry ${sequenceOf.get(runId) ?? '?'} (run ${runId}): the forecasts served disagree with the ledger`, sequenceOf.get(runId) ?? 0)
    }
    checked += readable.length
  }
  return checked
}

async function signatureOk(publicKey: Uint8Array, signature: Uint8Array, message: string): Promise<boolean> {
  try {
    const key = await crypto.subtle.importKey('raw', publicKey as BufferSource, { name: 'Ed25519' }, false, ['verify'])
    return await crypto.subtle.verify({ name: 'Ed25519' }, key, signature as BufferSource, new TextEncoder().encode(message))
  } catch {
    return false
  }
}

async function checkCheckpoints(model: string, ledger: LedgerJson, hashes: Map<number, string>): Promise<void> {
  const keys = new Map(ledger.keys.map((k) => [k.keyId ?? '', fromBase64(k.publicKey)]))
  for (const point of ledger.checkpoints) {
    const sequence = Number(point.sequence ?? 0)
    const where = `checkpoint at entry ${sequence}`
    const publicKey = keys.get(point.keyId ?? '')
    if (!publicKey || (await keyId(publicKey)) !== point.keyId) throw new Mismatch(`${where}: signed by an unknown key ${point.keyId ?? ''}`, sequence)
    const head = hex(fromBase64(point.headHash))
    const message = checkpointMessage(model, sequence, head, point.signTime ?? '', point.keyId ?? '')
    if (!(await signatureOk(publicKey, fromBase64(point.signature), message))) throw new Mismatch(`${where}: the signature does not verify`, sequence)
    if (hashes.get(sequence) !== head) throw new Mismatch(`${where}: the signed head is not the chain's entry ${sequence}`, sequence)
  }
}

function checkRemembered(hashes: Map<number, string>, remembered: Record<string, string>): void {
  const sequences = Object.keys(remembered).map(Number).sort((a, b) => a - b)
  for (const sequence of sequences) {
    if (hashes.get(sequence) !== remembered[String(sequence)]) {
      throw new Mismatch(`entry ${sequence}: differs from the checkpoint this browser saw before (history rewritten)`, sequence)
    }
  }
}

/** Recomputes the chain and checks it against the forecasts read with ListForecasts (null: not
 * readable), the signed checkpoints and the checkpoints this browser saw before. */
export async function verifyLedger(
  model: string,
  ledger: LedgerJson,
  forecasts: ForecastRecord[] | null,
  remembered: Record<string, string> = {},
): Promise<Verdict> {
  const withheld = ledger.entries.filter((e) => e.withheld).length
  const base = { entries: ledger.entries.length, withheld, checkpoints: ledger.checkpoints.length }
  let checked: number | null = null
  try {
    const { hashes, byRun } = await checkEntries(model, ledger.entries)
    const unledgered = ledger.unledgeredRunIds[0]
    if (unledgered) throw new Mismatch(`run ${unledgered} is live but has no ledger entry (inserted)`)
    if (forecasts !== null) {
      const sequenceOf = new Map(ledger.entries.map((e) => [e.runId ?? '', Number(e.sequence ?? 0)]))
      checked = checkForecasts(byRun, forecasts, sequenceOf)
    }
    await checkCheckpoints(model, ledger, hashes)
    checkRemembered(hashes, remembered)
    const seen = { ...remembered }
    for (const point of ledger.checkpoints) seen[String(Number(point.sequence ?? 0))] = hex(fromBase64(point.headHash))
    const last = ledger.entries.at(-1)
    return { ...base, ok: true, forecastsChecked: checked, problem: '', firstBad: 0, head: last ? hex(fromBase64(last.entryHash)) : '', seen }
  } catch (e) {
    if (!(e instanceof Mismatch)) throw e
    return { ...base, ok: false, forecastsChecked: checked, problem: e.message, firstBad: e.sequence, head: '', seen: remembered }
  }
}
