// The TypeScript encoding against the vectors the server's code writes (docs/ledger-vectors.json,
// also checked by tests/test_ledger_vectors.py): a drift on either side fails here or there.
import { describe, expect, it } from 'vitest'
import type { ForecastRecord } from '../../api/types'
import vectors from '../../../../docs/ledger-vectors.json'
import { checkpointMessage, encode, entryHash, fromHex, hex, keyId, number, runPayload, time } from '../canonical'
import { type LedgerJson, verifyLedger } from '../verify'

function base64(hexText: string): string {
  return btoa(String.fromCharCode(...fromHex(hexText)))
}

function ledgerOf(): LedgerJson {
  const point = vectors.checkpoint
  return {
    entries: vectors.entries.map((e) => ({
      sequence: String(e.sequence),
      runId: e.run_id,
      prevHash: base64(e.prev_hash),
      entryHash: base64(e.entry_hash),
      payload: e.payload,
    })),
    checkpoints: [
      { sequence: String(point.sequence), headHash: base64(point.head_hash), signTime: point.sign_time, keyId: point.key_id, signature: base64(point.signature) },
    ],
    keys: [{ keyId: point.key_id, publicKey: base64(point.public_key) }],
    unledgeredRunIds: [],
  }
}

const forecasts = (): ForecastRecord[] => vectors.entries.flatMap((e) => e.api.forecasts as ForecastRecord[])

describe('the canonical encoding', () => {
  it('rebuilds every vector payload from the API responses, byte for byte', async () => {
    for (const entry of vectors.entries) {
      const rebuilt = await runPayload(entry.api.run, entry.api.versionDigest, entry.api.forecasts as ForecastRecord[])
      expect(rebuilt).toBe(entry.payload)
      expect(hex(await entryHash(fromHex(entry.prev_hash), rebuilt))).toBe(entry.entry_hash)
    }
  })

  it('encodes as Python json.dumps(sort_keys, compact, ensure_ascii) does', () => {
    expect(encode({ b: 1, a: ['é', '"\\\n', '\u{1F600}', '\u0001'], c: null })).toBe(
      '{"a":["\\u00e9","\\"\\\\\\n","\\ud83d\\ude00","\\u0001"],"b":1,"c":null}',
    )
    expect(number(1)).toBe('3ff0000000000000')
    expect(number(-0.0012)).toBe('bf53a92a30553261')
    expect(time('2024-03-04T15:00:00Z')).toBe('2024-03-04T15:00:00.000000Z')
    expect(time('2024-03-04T15:00:31.250Z')).toBe('2024-03-04T15:00:31.250000Z')
  })

  it('rebuilds the checkpoint message and its key id', async () => {
    const point = vectors.checkpoint
    expect(checkpointMessage(vectors.model, point.sequence, point.head_hash, point.sign_time, point.key_id)).toBe(point.message)
    expect(await keyId(fromHex(point.public_key))).toBe(point.key_id)
  })
})

describe('verifyLedger', () => {
  it('accepts the honest vectors, signature included', async () => {
    const verdict = await verifyLedger(vectors.model, ledgerOf(), forecasts())
    expect(verdict).toMatchObject({ ok: true, entries: 3, checkpoints: 1, forecastsChecked: 2, withheld: 0 })
    expect(verdict.head).toBe(vectors.checkpoint.head_hash)
    expect(verdict.seen).toEqual({ '3': vectors.checkpoint.head_hash })
  })

  it('names the first entry whose forecasts were changed', async () => {
    const changed = forecasts().map((f) => (f.symbol === 'GOOG' ? { ...f, direction: 'DIRECTION_UP' as const } : f))
    const verdict = await verifyLedger(vectors.model, ledgerOf(), changed)
    expect(verdict.ok).toBe(false)
    expect(verdict.firstBad).toBe(1)
    expect(verdict.problem).toContain('disagree with the ledger')
  })

  it('names the entry whose payload no longer hashes to what was recorded', async () => {
    const ledger = ledgerOf()
    const second = ledger.entries[1]!
    second.payload = second.payload!.replace('"outcome":"missed"', '"outcome":"ok"')
    const verdict = await verifyLedger(vectors.model, ledger, null)
    expect(verdict).toMatchObject({ ok: false, firstBad: 2 })
    expect(verdict.problem).toContain('hash mismatch')
  })

  it('refuses a signature made over another head', async () => {
    const ledger = ledgerOf()
    ledger.checkpoints[0]!.signTime = '2024-03-04T17:15:31Z'
    const verdict = await verifyLedger(vectors.model, ledger, forecasts())
    expect(verdict.problem).toContain('signature does not verify')
  })

  it('chains withheld entries without their contents, and counts them', async () => {
    const ledger = ledgerOf()
    ledger.entries[0] = { ...ledger.entries[0]!, payload: '', withheld: true }
    const verdict = await verifyLedger(vectors.model, ledger, [])
    expect(verdict).toMatchObject({ ok: true, withheld: 1, forecastsChecked: 0 })
  })

  it('compares the head with the checkpoints this browser saw before', async () => {
    const verdict = await verifyLedger(vectors.model, ledgerOf(), forecasts(), { '2': 'ff'.repeat(32) })
    expect(verdict).toMatchObject({ ok: false, firstBad: 2 })
    expect(verdict.problem).toContain('saw before')
  })
})
