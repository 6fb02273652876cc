// New forecasts of a model as the platform records them, for as long as the caller may read
// them: StreamForecasts over REST (streamMessages), reopened after a network drop or the
// gateway ending an idle stream, with the gap filled from ListForecasts so that no forecast
// is lost or shown twice. Stops, with the reason, when the server refuses the caller (the
// subscription lapsed, the model went private, the session ended).
import { onScopeDispose, ref, type Ref } from 'vue'
import { ApiError } from '../api/errors'
import { streamMessages } from '../api/stream'
import type { ForecastRecord } from '../api/types'
import { listForecasts } from './useRecord'

export type LiveState = 'connecting' | 'live' | 'reconnecting' | 'stopped'

export interface LiveOptions {
  model: string
  symbol?: string
  /** The newest forecasts the page already holds (those of its newest as_of): the stream
   * resumes from that as_of, and these are not delivered again. */
  known?: ForecastRecord[]
  /** Called with each batch of forecasts not seen before, oldest first. */
  onForecasts: (forecasts: ForecastRecord[]) => void
  /** Reconnect delays in ms (the last repeats); tests shorten them. */
  backoff?: number[]
}

interface StreamForecastsMessage {
  forecasts?: ForecastRecord[]
}

const BACKOFF_MS = [250, 1000, 2000, 5000, 10_000]

/** One key per recorded forecast: unique on (run, symbol, target) in the store. */
export function forecastKey(f: ForecastRecord): string {
  return `${f.runId ?? ''}|${f.symbol ?? ''}|${f.targetTime ?? ''}`
}

/** Why the stream cannot go on, in the user's words; null when reconnecting may help. */
export function stopReason(error: unknown): string | null {
  if (!(error instanceof ApiError)) return null
  if (error.status === 401) return 'Your session ended: sign in again to follow new forecasts.'
  if (error.status === 403) return `Live forecasts stopped: ${error.message || 'you may no longer read this model\'s forecasts'}.`
  if (error.status === 404) return 'Live forecasts stopped: this model is no longer visible to you.'
  if (error.status === 400 || error.status === 409) return `Live forecasts stopped: ${error.message}.`
  return null
}

function byAsOf(a: ForecastRecord, b: ForecastRecord): number {
  return Date.parse(a.asOf ?? '') - Date.parse(b.asOf ?? '') || (a.symbol ?? '').localeCompare(b.symbol ?? '')
}

export function useLiveForecasts(options: LiveOptions): {
  state: Ref<LiveState>
  reason: Ref<string>
  received: Ref<number>
  stop: () => void
} {
  const state = ref<LiveState>('connecting')
  const reason = ref('')
  const received = ref(0)
  const seen = new Set<string>()
  let latest: string | undefined
  for (const f of options.known ?? []) {
    seen.add(forecastKey(f))
    if (f.asOf && (!latest || Date.parse(f.asOf) > Date.parse(latest))) latest = f.asOf
  }
  const controller = new AbortController()
  const backoff = options.backoff ?? BACKOFF_MS

  function deliver(batch: ForecastRecord[]): void {
    const fresh = batch.filter((f) => {
      const key = forecastKey(f)
      if (seen.has(key)) return false
      seen.add(key)
      return true
    })
    if (!fresh.length) return
    fresh.sort(byAsOf)
    const last = fresh.at(-1)?.asOf
    if (last && (!latest || Date.parse(last) > Date.parse(latest))) latest = last
    received.value += fresh.length
    options.onForecasts(fresh)
  }

  async function fillGap(): Promise<void> {
    // From the newest as_of held, inclusive (a run of that slot may have recorded more); with
    // none held (the page's record was empty), every forecast listed is new.
    const query = { symbol: options.symbol ?? '', ...(latest ? { startTime: latest } : {}) }
    deliver((await listForecasts(options.model, query)).forecasts)
  }

  function pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms)
      controller.signal.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
    })
  }

  async function run(): Promise<void> {
    let failures = 0
    while (!controller.signal.aborted) {
      // One attempt: ended by the page (controller) or by a failed gap fill (attempt).
      const attempt = new AbortController()
      const abortAttempt = (): void => attempt.abort()
      controller.signal.addEventListener('abort', abortAttempt, { once: true })
      let gap: Promise<void> = Promise.resolve()
      let gapError: unknown = null
      try {
        const query: Record<string, string> = options.symbol ? { symbol: options.symbol } : {}
        const stream = streamMessages<StreamForecastsMessage>(`/v1/models/${encodeURIComponent(options.model)}/forecasts:stream`, {
          signal: attempt.signal,
          query,
          onOpen: () => {
            state.value = 'live'
            reason.value = ''
            // Listening from here: whatever was recorded while closed is in ListForecasts.
            gap = fillGap().catch((error: unknown) => {
              gapError = error
              attempt.abort()
            })
          },
        })
        let messages = 0
        for await (const message of stream) {
          failures = 0
          messages++
          // An empty message is the server's heartbeat: the stream is alive.
          deliver(message.forecasts ?? [])
        }
        await gap
        if (gapError) throw gapError
        // A clean end: the server ended the stream (an error after the headers looks the same
        // over HTTP/1.1). Opened again, it says why if the caller may no longer read; the
        // pause keeps a stream that keeps ending at once from spinning.
        if (!messages) await pause(backoff[Math.min(failures++, backoff.length - 1)] ?? 1000)
      } catch (caught) {
        await gap
        if (controller.signal.aborted) return
        const error = gapError ?? caught
        const why = stopReason(error)
        if (why) {
          state.value = 'stopped'
          reason.value = why
          return
        }
        state.value = 'reconnecting'
        reason.value = 'Connection lost: reconnecting…'
        await pause(backoff[Math.min(failures++, backoff.length - 1)] ?? 1000)
      } finally {
        controller.signal.removeEventListener('abort', abortAttempt)
      }
    }
  }

  function stop(): void {
    controller.abort()
  }
  onScopeDispose(stop)
  void run()
  return { state, reason, received, stop }
}
