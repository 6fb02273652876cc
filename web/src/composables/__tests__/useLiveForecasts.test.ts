import { effectScope } from 'vue'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { ForecastRecord } from '../../api/types'
import { setTokens } from '../../api/session'
import { forecastKey, useLiveForecasts } from '../useLiveForecasts'

function forecast(hour: number): ForecastRecord {
  const asOf = new Date(Date.UTC(2024, 2, 4, hour)).toISOString()
  return { model: 'm', runId: `run-${hour}`, symbol: 'EURUSD', asOf, targetTime: asOf, direction: 'DIRECTION_UP', kind: 'RUN_KIND_LIVE' }
}

/** A streamed body: the given pieces, then either the array's end or a cut connection. */
function body(pieces: string[], end: 'close' | 'cut' | 'hold'): Response {
  const encoder = new TextEncoder()
  const queue = [...pieces]
  // One piece per read, so a cut comes after what was sent (an error drops queued chunks).
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      const piece = queue.shift()
      if (piece !== undefined) controller.enqueue(encoder.encode(piece))
      else if (end === 'close') controller.close()
      else if (end === 'cut') controller.error(new TypeError('network error'))
    },
  })
  return new Response(stream, { status: 200 })
}

const message = (...fs: ForecastRecord[]): string => JSON.stringify({ forecasts: fs })

describe('useLiveForecasts', () => {
  const fetchMock = vi.fn<typeof fetch>()
  beforeEach(() => {
    vi.stubGlobal('fetch', fetchMock)
    fetchMock.mockReset()
    setTokens(undefined)
  })
  afterEach(() => vi.unstubAllGlobals())

  it('reconnects after a drop, fills the gap from ListForecasts, and never repeats a forecast', async () => {
    const [a, b, c] = [forecast(10), forecast(11), forecast(12)]
    const streams = [
      // Run a arrives, then the connection drops mid-array.
      () => body([`[${message(a)}`], 'cut'),
      // Reopened: b (recorded while closed) arrives on the stream too, racing the gap fill.
      () => body([`[${message(b)}`, `,${message(c)}]`], 'close'),
      () => new Response(JSON.stringify({ code: 7, message: 'subscribe to read this model' }), { status: 403 }),
    ]
    const listed: string[] = []
    // What ListForecasts holds at each gap fill: nothing new at first; a and b after the drop.
    const lists = [[forecast(9)], [b, a, forecast(9)]]
    fetchMock.mockImplementation(async (input) => {
      const url = input instanceof Request ? input.url : String(input)
      if (url.includes(':stream')) return (streams.shift() as () => Response)()
      listed.push(new URL(url).searchParams.get('startTime') ?? '')
      return new Response(JSON.stringify({ forecasts: lists.shift() ?? [] }), { status: 200, headers: { 'content-type': 'application/json' } })
    })
    const got: ForecastRecord[] = []
    const scope = effectScope()
    const live = scope.run(() =>
      useLiveForecasts({ model: 'm', known: [forecast(9)], onForecasts: (fs) => got.push(...fs), backoff: [5] }),
    )!
    await vi.waitFor(() => expect(live.state.value).toBe('stopped'), { timeout: 3000 })
    expect(got.map(forecastKey)).toEqual([a, b, c].map(forecastKey))
    expect(live.received.value).toBe(3)
    // The first gap fill resumes from the page's newest as_of, the second from a's.
    expect(listed).toEqual([forecast(9).asOf, a.asOf])
    expect(live.reason.value).toContain('subscribe to read this model')
    scope.stop()
  })

  it('takes heartbeats as life, and an array closed early (an error after the headers) as a reason to reopen', async () => {
    const a = forecast(10)
    const streams = [
      // What Envoy sends when the server ends the stream with PERMISSION_DENIED mid-way.
      () => body(['[{}', `,${message(a)}`, ',{}', ']'], 'close'),
      () => new Response(JSON.stringify({ code: 7, message: 'no longer readable' }), { status: 403 }),
    ]
    const listed: string[] = []
    fetchMock.mockImplementation(async (input) => {
      const url = input instanceof Request ? input.url : String(input)
      if (url.includes(':stream')) return (streams.shift() as () => Response)()
      listed.push(new URL(url).searchParams.get('startTime') ?? '(all)')
      // The record was empty when the page loaded; by the reopening, a is in the list.
      return new Response(JSON.stringify({ forecasts: listed.length > 1 ? [a] : [] }), { status: 200, headers: { 'content-type': 'application/json' } })
    })
    const got: ForecastRecord[] = []
    const scope = effectScope()
    const live = scope.run(() => useLiveForecasts({ model: 'm', onForecasts: (fs) => got.push(...fs), backoff: [5] }))!
    await vi.waitFor(() => expect(live.state.value).toBe('stopped'))
    expect(got.map(forecastKey)).toEqual([forecastKey(a)])
    // Nothing held at first: the whole (empty) list; the reopening never got its headers.
    expect(listed).toEqual(['(all)'])
    expect(live.reason.value).toContain('no longer readable')
    scope.stop()
  })

  it('stops for good on a 404 and says the model is no longer visible', async () => {
    fetchMock.mockResolvedValue(new Response(JSON.stringify({ code: 5, message: 'not found' }), { status: 404 }))
    const scope = effectScope()
    const live = scope.run(() => useLiveForecasts({ model: 'm', onForecasts: () => {}, backoff: [5] }))!
    await vi.waitFor(() => expect(live.state.value).toBe('stopped'))
    expect(live.reason.value).toContain('no longer visible')
    expect(fetchMock).toHaveBeenCalledTimes(1)
    scope.stop()
  })

  it('keeps retrying while the platform is unreachable, and stops when the page goes', async () => {
    fetchMock.mockRejectedValue(new TypeError('Failed to fetch'))
    const scope = effectScope()
    const live = scope.run(() => useLiveForecasts({ model: 'm', onForecasts: () => {}, backoff: [5] }))!
    await vi.waitFor(() => expect(fetchMock.mock.calls.length).toBeGreaterThan(2))
    expect(live.state.value).toBe('reconnecting')
    scope.stop()
    const calls = fetchMock.mock.calls.length
    await new Promise((resolve) => setTimeout(resolve, 30))
    expect(fetchMock.mock.calls.length).toBeLessThanOrEqual(calls + 1)
  })
})
