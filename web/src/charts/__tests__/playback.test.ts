import { describe, expect, it } from 'vitest'
import { type PlaybackMarker, byAsOf, countUpTo, statsAt, totals } from '../playback'

function marker(asOf: number, up: boolean, realized: number | null, horizon = 2): PlaybackMarker {
  const hit = realized === null || realized === 0 ? null : up === realized > 0
  return { asOf, up, text: '', known: realized === null ? Infinity : asOf + horizon, hit, realized }
}

/** The same figures by walking every marker: what each frame used to do. */
function walk(markers: PlaybackMarker[], now: number) {
  let made = 0
  let calls = 0
  let hits = 0
  let equity = 1
  for (const m of [...markers].sort((a, b) => a.known - b.known)) {
    if (m.asOf <= now) made++
    if (m.known > now || m.hit === null) continue
    calls++
    if (m.hit) hits++
    if (m.realized !== null && m.up !== null) equity *= 1 + (m.up ? m.realized : -m.realized)
  }
  return { made, calls, hits, rate: calls ? hits / calls : undefined, equity }
}

describe('playback totals', () => {
  it('counts values up to x in an ascending array', () => {
    const a = [1, 2, 2, 5]
    expect([0, 1, 2, 3, 5, 9].map((x) => countUpTo(a, x))).toEqual([0, 1, 3, 3, 4, 4])
    expect(countUpTo([], 3)).toBe(0)
  })
  it('answers at every cursor what walking the whole record answers', () => {
    // Unsorted input, mixed horizons, unscorable and flat outcomes.
    const markers = byAsOf([
      marker(5, true, 0.01, 3), marker(1, false, 0.02), marker(2, true, null), marker(3, true, -0.01, 1),
      marker(4, false, -0.03), marker(6, true, 0), marker(7, false, 0.005, 5),
    ])
    const t = totals(markers)
    for (let now = 0; now <= 14; now++) {
      const got = statsAt(t, now)
      const want = walk(markers, now)
      expect({ ...got, equity: Number(got.equity.toFixed(12)) }).toEqual({ ...want, equity: Number(want.equity.toFixed(12)) })
    }
    expect(statsAt(t, 100)).toMatchObject({ made: 7, calls: 5, hits: 2 })
  })
  it('starts empty before the first forecast', () => {
    expect(statsAt(totals([]), 10)).toEqual({ made: 0, calls: 0, hits: 0, rate: undefined, equity: 1 })
  })
})
