// The ledger's canonical encoding (docs/ledger-encoding.md), the same bytes as the server's
// foretell.ledger.canonical: tested against docs/ledger-vectors.json, which the server's code
// writes, so the two cannot drift.
import type { ForecastRecord } from '../api/types'

export const GENESIS_HEX = '0'.repeat(64)
export const VERSION = 1
export const CHECKPOINT_PURPOSE = 'foretell-ledger-checkpoint'

export type Canonical = null | boolean | number | string | Canonical[] | { [key: string]: Canonical }

const SHORT_ESCAPES: Record<string, string> = { '"': '\\"', '\\': '\\\\', '\b': '\\b', '\t': '\\t', '\n': '\\n', '\f': '\\f', '\r': '\\r' }

/** Python's json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True). */
export function encode(value: Canonical): string {
  if (value === null) return 'null'
  if (typeof value === 'boolean') return value ? 'true' : 'false'
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new Error('the ledger encodes only integers as numbers')
    return String(value)
  }
  if (typeof value === 'string') return quote(value)
  if (Array.isArray(value)) {
    let out = '['
    for (let i = 0; i < value.length; i++) out += (i ? ',' : '') + encode(value[i] as Canonical)
    return `${out}]`
  }
  // Keys sorted by UTF-16 code units (the default sort), as Python sorts str. A parsed payload
  // has them in order already: checked in one pass, sorted only when not.
  const keys = Object.keys(value)
  for (let i = 1; i < keys.length; i++) {
    if ((keys[i - 1] as string) > (keys[i] as string)) {
      keys.sort()
      break
    }
  }
  let out = '{'
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i] as string
    out += `${i ? ',' : ''}${quote(key)}:${encode(value[key] as Canonical)}`
  }
  return `${out}}`
}

// Printable ASCII but `"` and `\`: what nearly every string is, copied as it stands.
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/

function quote(text: string): string {
  if (PLAIN.test(text)) return `"${text}"`
  let out = '"'
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string
    const code = text.charCodeAt(i)
    const short = SHORT_ESCAPES[c]
    if (short) out += short
    else if (code >= 0x20 && code <= 0x7e) out += c
    // UTF-16 code units, so a character beyond U+FFFF comes out as its surrogate pair.
    else out += `\\u${code.toString(16).padStart(4, '0')}`
  }
  return `${out}"`
}

const RFC3339 = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$/

/** A Timestamp as the transcoder serves it (UTC, 0-9 fractional digits) → six digits and Z. */
export function time(timestamp: string | undefined): string {
  const match = RFC3339.exec(timestamp ?? '')
  if (!match) throw new Error(`not an RFC 3339 UTC time: ${timestamp ?? '(absent)'}`)
  return `${match[1]}.${(match[2] ?? '').padEnd(6, '0').slice(0, 6)}Z`
}

const FLOAT_BYTES = new Uint8Array(8)
const FLOAT = new DataView(FLOAT_BYTES.buffer)

/** A float as the 16 lowercase hex digits of its IEEE 754 binary64 value, big-endian. */
export function number(value: number | null | undefined): string | null {
  if (value === null || value === undefined) return null
  FLOAT.setFloat64(0, value)
  return hex(FLOAT_BYTES)
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

export function hex(bytes: Uint8Array): string {
  let out = ''
  for (const byte of bytes) out += HEX[byte] as string
  return out
}

export function fromHex(text: string): Uint8Array {
  const out = new Uint8Array(text.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16)
  return out
}

/** A `bytes` field as JSON carries it (base64, standard or URL-safe). */
export function fromBase64(text: string | undefined): Uint8Array {
  const raw = text ?? ''
  const binary = atob(/[-_]/.test(raw) ? raw.replace(/-/g, '+').replace(/_/g, '/') : raw)
  const out = new Uint8Array(binary.length)
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i)
  return out
}

export async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as BufferSource))
}

export async function digest(text: string): Promise<string> {
  return hex(await sha256(new TextEncoder().encode(text)))
}

/** sha256(prev_hash || payload). */
export async function entryHash(prevHash: Uint8Array, payload: string): Promise<Uint8Array> {
  const body = new TextEncoder().encode(payload)
  const joined = new Uint8Array(prevHash.length + body.length)
  joined.set(prevHash)
  joined.set(body, prevHash.length)
  return sha256(joined)
}

export async function keyId(publicKey: Uint8Array): Promise<string> {
  return hex(await sha256(publicKey)).slice(0, 32)
}

/** An API enum word (`DIRECTION_UP`, `RUN_KIND_LIVE`, `RUN_OUTCOME_OK`) → the ledger's word. */
export function word(value: string | undefined, prefix: string): string {
  return value?.startsWith(prefix) ? value.slice(prefix.length).toLowerCase() : '?'
}

/** A forecast as ListForecasts returned it, in the ledger's canonical form. */
export function forecast(record: ForecastRecord): { [key: string]: Canonical } {
  return {
    symbol: record.symbol ?? '',
    as_of: time(record.asOf),
    target_time: time(record.targetTime),
    kind: word(record.kind, 'RUN_KIND_'),
    direction: word(record.direction, 'DIRECTION_'),
    predicted_return: number(record.predictedReturn),
    probability: number(record.probability),
    recorded_at: time(record.recordedTime),
  }
}

/** Sorted by (symbol, target_time) as byte strings, then by encoding, as the server sorts. */
export function sortForecasts<T extends { [key: string]: Canonical }>(forecasts: T[]): T[] {
  const key = (f: T): string => `${String(f.symbol)}\u0000${String(f.target_time)}\u0000${encode(f)}`
  return [...forecasts].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))
}

export interface RunFields {
  id?: string
  model?: string
  version?: number
  asOf?: string
  kind?: string
  outcome?: string
  detail?: string
  log?: string
  durationSeconds?: number
  createTime?: string
}

/** A whole entry payload, rebuilt from a run (as GetRun serves it to its owner), its version's
 * digest and its forecasts. */
export async function runPayload(run: RunFields, versionDigest: string, forecasts: ForecastRecord[]): Promise<string> {
  return encode({
    v: VERSION,
    model: run.model ?? '',
    run_id: run.id ?? '',
    version: run.version ?? 0,
    version_digest: versionDigest,
    kind: word(run.kind, 'RUN_KIND_'),
    as_of: time(run.asOf),
    recorded_at: time(run.createTime),
    outcome: word(run.outcome, 'RUN_OUTCOME_'),
    duration_s: number(run.durationSeconds ?? 0),
    detail_sha256: await digest(run.detail ?? ''),
    log_sha256: await digest(run.log ?? ''),
    forecasts: sortForecasts(forecasts.map(forecast)),
  })
}

export function checkpointMessage(model: string, sequence: number, headHashHex: string, signTime: string, keyIdHex: string): string {
  return encode({
    v: VERSION,
    purpose: CHECKPOINT_PURPOSE,
    model,
    sequence,
    head_hash: headHashHex,
    signed_at: time(signTime),
    key_id: keyIdHex,
  })
}
