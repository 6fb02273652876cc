import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError, UnreachableError } from '../errors'
import { setTokens } from '../session'
import { ArrayParser, streamMessages } from '../stream'

/** A response whose body arrives in the given pieces. */
function chunked(pieces: string[], status = 200): Response {
  const encoder = new TextEncoder()
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const piece of pieces) controller.enqueue(encoder.encode(piece))
      controller.close()
    },
  })
  return new Response(body, { status, headers: { 'content-type': 'application/json' } })
}

async function collect<T>(stream: AsyncGenerator<T>): Promise<T[]> {
  const out: T[] = []
  for await (const message of stream) out.push(message)
  return out
}

describe('ArrayParser', () => {
  it('splits elements cut anywhere, strings with brackets and escapes included', () => {
    const text = '[{"a":"x]}\\"{","b":[1,{"c":2}]}\n,{"d":"\\\\"},{}]'
    for (let cut = 0; cut <= text.length; cut++) {
      const parser = new ArrayParser()
      const out = [...parser.push(text.slice(0, cut)), ...parser.push(text.slice(cut))]
      expect(out).toEqual([{ a: 'x]}"{', b: [1, { c: 2 }] }, { d: '\\' }, {}])
      expect(parser.closed).toBe(true)
    }
  })

  it('refuses what is not an array of messages', () => {
    expect(() => new ArrayParser().push('{"code":3}')).toThrow(UnreachableError)
    expect(() => new ArrayParser().push('[1]')).toThrow(UnreachableError)
  })
})

describe('streamMessages', () => {
  const fetchMock = vi.fn<typeof fetch>()
  beforeEach(() => {
    vi.stubGlobal('fetch', fetchMock)
    fetchMock.mockReset()
    localStorage.clear()
    setTokens(undefined)
  })
  afterEach(() => vi.unstubAllGlobals())

  it('yields each message as it arrives and sends the bearer token and the query', async () => {
    setTokens({ accessToken: 'tok', refreshToken: 'r', accessTokenExpireTime: new Date(Date.now() + 600_000).toISOString() })
    fetchMock.mockResolvedValue(chunked(['[{"forecasts":[{"id":"1"}]}', '\n,{"forec', 'asts":[{"id":"2"}]}]']))
    const signal = new AbortController().signal
    const out = await collect(streamMessages<{ forecasts: { id: string }[] }>('/v1/models/m/forecasts:stream', { signal, query: { symbol: 'EURUSD' } }))
    expect(out.map((m) => m.forecasts[0]?.id)).toEqual(['1', '2'])
    const [url, init] = fetchMock.mock.calls[0] ?? []
    expect(String(url)).toContain('/v1/models/m/forecasts:stream?symbol=EURUSD')
    expect((init?.headers as Record<string, string>).authorization).toBe('Bearer tok')
  })

  it('throws ApiError for an HTTP error with its Status', async () => {
    fetchMock.mockResolvedValue(chunked(['{"code":7,"message":"subscribe first"}'], 403))
    const error = await collect(streamMessages('/v1/x', { signal: new AbortController().signal })).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ApiError)
    expect((error as ApiError).status).toBe(403)
    expect((error as ApiError).message).toBe('subscribe first')
  })

  it('throws ApiError for a Status element after messages, having yielded those first', async () => {
    fetchMock.mockResolvedValue(chunked(['[{"forecasts":[]}', ',{"code":7,"message":"no longer readable"}]']))
    const seen: unknown[] = []
    const error = await (async () => {
      for await (const message of streamMessages('/v1/x', { signal: new AbortController().signal })) seen.push(message)
    })().catch((e: unknown) => e)
    expect(seen).toEqual([{ forecasts: [] }])
    expect(error).toBeInstanceOf(ApiError)
    expect((error as ApiError).code).toBe(7)
    expect((error as ApiError).status).toBe(403)
  })

  it('takes a body cut short for a lost connection, not a clean end', async () => {
    fetchMock.mockResolvedValue(chunked(['[{"forecasts":[]}']))
    await expect(collect(streamMessages('/v1/x', { signal: new AbortController().signal }))).rejects.toBeInstanceOf(UnreachableError)
  })

  it('turns a network failure into UnreachableError', async () => {
    fetchMock.mockRejectedValue(new TypeError('Failed to fetch'))
    await expect(collect(streamMessages('/v1/x', { signal: new AbortController().signal }))).rejects.toBeInstanceOf(UnreachableError)
  })
})
