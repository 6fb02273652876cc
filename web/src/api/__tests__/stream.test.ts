import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ApiError } from '../errors'
import { setTokens } from '../session'
import { ArrayParser, streamMessages } from '../stream'

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

async function collect<T>(gen: AsyncGenerator<T>): Promise<T[]> {
  const out: T[] = []
  for await (const item of gen) out.push(item)
  return out
}

describe('ArrayParser', () => {
  it('yields each element once complete, whatever the chunking', () => {
    const text = '[{"lines":["a ] , { \\" b"],"n":{"x":[1,2]}}\n,{"lines":[]}\n]'
    for (let size = 1; size <= text.length; size++) {
      const parser = new ArrayParser()
      const out: string[] = []
      for (let i = 0; i < text.length; i += size) out.push(...parser.push(text.slice(i, i + size)))
      expect(out.map((t) => JSON.parse(t) as unknown)).toEqual([{ lines: ['a ] , { " b'], n: { x: [1, 2] } }, { lines: [] }])
    }
  })
})

describe('streamMessages', () => {
  const fetchMock = vi.fn<typeof fetch>()
  beforeEach(() => {
    vi.stubGlobal('fetch', fetchMock)
    fetchMock.mockReset()
    localStorage.clear()
    setTokens({ accessToken: 'tok', refreshToken: 'r', accessTokenExpireTime: new Date(Date.now() + 3_600_000).toISOString() })
  })
  afterEach(() => vi.unstubAllGlobals())

  it('sends the bearer token and the query, and yields the messages', async () => {
    fetchMock.mockResolvedValue(chunked(['[{"a":1}', ',{"a":2}]']))
    const got = await collect(streamMessages<{ a: number }>('/v1/x:stream', { signal: new AbortController().signal, query: { symbol: 'EURUSD' } }))
    expect(got).toEqual([{ a: 1 }, { a: 2 }])
    const [url, init] = fetchMock.mock.calls[0] as [URL, RequestInit]
    expect(url.pathname).toBe('/v1/x:stream')
    expect(url.searchParams.get('symbol')).toBe('EURUSD')
    expect((init.headers as Record<string, string>).authorization).toBe('Bearer tok')
  })

  it('throws ApiError for an HTTP error with its field violations', async () => {
    fetchMock.mockResolvedValue(
      chunked([JSON.stringify({ code: 3, message: 'bad', details: [{ '@type': 'type.googleapis.com/google.rpc.BadRequest', fieldViolations: [{ field: 'number', description: 'a version number' }] }] })], 400),
    )
    const error = await collect(streamMessages('/v1/x', { signal: new AbortController().signal })).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ApiError)
    expect((error as ApiError).status).toBe(400)
    expect((error as ApiError).fields).toEqual({ number: 'a version number' })
  })

  it('throws ApiError for a google.rpc.Status element after messages', async () => {
    fetchMock.mockResolvedValue(chunked(['[{"a":1},{"code":14,"message":"feed lost"}]']))
    const seen: unknown[] = []
    const error = await (async () => {
      for await (const m of streamMessages('/v1/x', { signal: new AbortController().signal })) seen.push(m)
    })().catch((e: unknown) => e)
    expect(seen).toEqual([{ a: 1 }])
    expect(error).toBeInstanceOf(ApiError)
    expect((error as ApiError).status).toBe(503)
    expect((error as ApiError).message).toBe('feed lost')
  })
})
