// Server-streaming RPCs over REST: Envoy's gRPC-JSON transcoder answers a streaming method with
// one chunked JSON array, `[{…},{…}…]`, each element one message, sent as the message arrives.
// This reads that array incrementally over fetch and yields the messages one by one.
//
// An error before the first message is an HTTP error with a google.rpc.Status body (ApiError).
// After it, the status line is gone: over HTTP/1.1 Envoy's transcoder then just closes the array
// (the gRPC status is in trailers that fetch cannot read), so a clean end is no proof of
// success; a caller that must know opens the stream again and gets the error as an HTTP status.
// A transcoder that appends the Status as a last element is understood too (ApiError), and a
// body cut short without its closing `]` is a lost connection (UnreachableError).
import { refreshNow } from './client'
import { ApiError, UnreachableError } from './errors'
import type { Status } from './types'
import { refreshDelay, session } from './session'

export interface StreamOptions {
  signal: AbortSignal
  query?: Record<string, string>
  /** Called once the response headers are in: the server is listening (a server that sends
   * its headers once subscribed, as StreamForecasts does, misses nothing from then on). */
  onOpen?: () => void
}

/** The messages of a server-streaming REST route (`path` as `/v1/...`), as they arrive. */
export async function* streamMessages<T>(path: string, opts: StreamOptions): AsyncGenerator<T> {
  if (session.refreshToken && refreshDelay() === 0) await refreshNow()
  const url = new URL(path, globalThis.location?.origin ?? 'http://localhost')
  for (const [key, value] of Object.entries(opts.query ?? {})) url.searchParams.set(key, value)
  const headers: Record<string, string> = { accept: 'application/json' }
  if (session.accessToken) headers.authorization = `Bearer ${session.accessToken}`

  let response: Response
  try {
    response = await globalThis.fetch(url, { headers, signal: opts.signal, cache: 'no-store' })
  } catch (cause) {
    if (opts.signal.aborted) throw cause
    throw new UnreachableError(cause)
  }
  if (!response.ok) {
    let body: Partial<Status> | undefined
    try {
      body = (await response.json()) as Partial<Status>
    } catch {
      body = undefined
    }
    throw new ApiError(response.status, body)
  }
  if (!response.body) throw new UnreachableError()
  opts.onOpen?.()

  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
  const parser = new ArrayParser()
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<string>
      try {
        chunk = await reader.read()
      } catch (cause) {
        if (opts.signal.aborted) throw cause
        throw new UnreachableError(cause)
      }
      if (chunk.done) break
      for (const element of parser.push(chunk.value)) {
        if (isStatus(element)) throw new ApiError(httpStatusOf(element.code), element)
        yield element as T
      }
    }
  } finally {
    reader.releaseLock()
  }
  if (!parser.closed) throw new UnreachableError(new Error('the stream ended before its last message'))
}

/** A google.rpc.Status (what the transcoder appends on an error) rather than a message. */
function isStatus(element: unknown): element is Status & { code: number } {
  if (typeof element !== 'object' || element === null || Array.isArray(element)) return false
  const keys = Object.keys(element)
  return (
    typeof (element as { code?: unknown }).code === 'number' &&
    (element as { code: number }).code !== 0 &&
    keys.every((key) => key === 'code' || key === 'message' || key === 'details')
  )
}

// The mapping Envoy applies to a status it can still put on the status line (PITFALLS.md).
const HTTP_OF_CODE: Record<number, number> = {
  1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
  12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}
function httpStatusOf(code: number): number {
  return HTTP_OF_CODE[code] ?? 500
}

/**
 * Splits a JSON array arriving in arbitrary pieces into its elements. Only the array's own
 * punctuation is looked at; each element is handed whole to JSON.parse.
 */
export class ArrayParser {
  private buffer = ''
  private depth = 0
  private inString = false
  private escaped = false
  private started = false
  private start = -1
  closed = false

  push(text: string): unknown[] {
    const out: unknown[] = []
    const offset = this.buffer.length
    this.buffer += text
    for (let i = offset; i < this.buffer.length; i++) {
      const c = this.buffer[i]
      if (this.depth > 0) {
        if (this.inString) {
          if (this.escaped) this.escaped = false
          else if (c === '\\') this.escaped = true
          else if (c === '"') this.inString = false
          continue
        }
        if (c === '"') this.inString = true
        else if (c === '{' || c === '[') this.depth++
        else if (c === '}' || c === ']') {
          this.depth--
          if (this.depth === 0) {
            out.push(JSON.parse(this.buffer.slice(this.start, i + 1)))
            this.start = -1
          }
        }
        continue
      }
      if (c === ' ' || c === '\n' || c === '\r' || c === '\t') continue
      if (!this.started) {
        if (c !== '[') throw new UnreachableError(new Error('the stream is not a JSON array'))
        this.started = true
      } else if (this.closed) {
        throw new UnreachableError(new Error('data after the end of the stream'))
      } else if (c === ']') {
        this.closed = true
      } else if (c === '{' || c === '[') {
        this.start = i
        this.depth = 1
      } else if (c !== ',') {
        throw new UnreachableError(new Error('the stream is not a JSON array of messages'))
      }
    }
    // Keep only the element in progress; everything before it has been handed out.
    if (this.start >= 0) {
      this.buffer = this.buffer.slice(this.start)
      this.start = 0
    } else {
      this.buffer = ''
    }
    return out
  }
}
