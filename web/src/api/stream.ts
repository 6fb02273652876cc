// Server streams over REST: Envoy's gRPC-JSON transcoder answers a server-streaming RPC with one
// chunked JSON array, an element per message, and appends a google.rpc.Status element when the
// stream fails after its first message (the HTTP status is already sent by then). This reads
// that array as it arrives and yields each element as soon as it is complete.
import { ApiError } from './errors'
import { refreshDelay, session } from './session'
import { refreshNow } from './client'
import type { Status } from './types'

export async function* streamMessages<T>(
  path: string,
  opts: { signal: AbortSignal; query?: Record<string, string> },
): AsyncGenerator<T> {
  if (session.refreshToken && refreshDelay() === 0) await refreshNow()
  const url = new URL(path, globalThis.location?.origin ?? 'http://localhost')
  for (const [key, value] of Object.entries(opts.query ?? {})) url.searchParams.set(key, value)
  const headers: Record<string, string> = { accept: 'application/json' }
  if (session.accessToken) headers.authorization = `Bearer ${session.accessToken}`
  const response = await globalThis.fetch(url, { headers, signal: opts.signal })
  if (!response.ok || !response.body) {
    let body: Partial<Status> | undefined
    try {
      body = (await response.json()) as Partial<Status>
    } catch {
      body = undefined
    }
    throw new ApiError(response.status, body)
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
  const parser = new ArrayParser()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      for (const text of parser.push(value)) {
        const element = JSON.parse(text) as unknown
        if (isStatus(element)) throw new ApiError(statusToHttp(element.code ?? 2), element)
        yield element as T
      }
    }
  } finally {
    reader.releaseLock()
  }
}

function isStatus(value: unknown): value is Partial<Status> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const keys = Object.keys(value)
  return typeof (value as { code?: unknown }).code === 'number' && keys.every((k) => k === 'code' || k === 'message' || k === 'details')
}

// The transcoder's own mapping (PITFALLS: gRPC code → HTTP), for a Status that came in-band.
const HTTP_OF: Record<number, number> = { 1: 499, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501, 14: 503, 16: 401 }
function statusToHttp(code: number): number {
  return HTTP_OF[code] ?? 500
}

/** Splits a JSON array of objects arriving in pieces into the texts of its elements. */
export class ArrayParser {
  private buffer = ''
  private depth = 0
  private inString = false
  private escaped = false
  private start = -1
  private opened = false

  push(chunk: string): string[] {
    const out: string[] = []
    const base = this.buffer.length
    this.buffer += chunk
    for (let i = base; i < this.buffer.length; i++) {
      const c = this.buffer[i]
      if (this.inString) {
        if (this.escaped) this.escaped = false
        else if (c === '\\') this.escaped = true
        else if (c === '"') this.inString = false
        continue
      }
      if (!this.opened) {
        if (c === '[') this.opened = true
        continue
      }
      if (c === '"') {
        this.inString = true
      } else if (c === '{' || c === '[') {
        if (this.depth === 0) this.start = i
        this.depth++
      } else if (c === '}' || c === ']') {
        if (this.depth === 0) continue // the array's own end
        this.depth--
        if (this.depth === 0) {
          out.push(this.buffer.slice(this.start, i + 1))
          this.start = -1
        }
      }
    }
    // Keep only what an unfinished element still needs.
    if (this.start >= 0) {
      this.buffer = this.buffer.slice(this.start)
      this.start = 0
    } else {
      this.buffer = ''
    }
    return out
  }
}
