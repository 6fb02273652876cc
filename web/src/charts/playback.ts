// What playback needs at each cursor position, answered in O(log n) from arrays built once per
// record: a frame at the fastest speed must not walk the whole record (6,000 forecasts and
// more) to count hits or pick the markers in view.

export interface PlaybackMarker {
  asOf: number
  up: boolean | null
  text: string
  /** When the outcome is known (target bar closed), and whether it was a hit. */
  known: number
  hit: boolean | null
  /** The realized return over the forecast's horizon, when its bars exist. */
  realized: number | null
}

export interface PlaybackStats {
  made: number
  calls: number
  hits: number
  rate: number | undefined
  equity: number
}

/** Running totals over the scored forecasts in the order their outcomes became known. */
export interface Totals {
  /** as_of of every marker, ascending (markers are sorted by as_of). */
  asOf: Float64Array
  /** When each scored forecast's outcome became known, ascending. */
  known: Float64Array
  /** Hits and equity (1 at the start) after the first k+1 outcomes. */
  hits: Int32Array
  equity: Float64Array
}

/** The number of values in the ascending array that are <= x. */
export function countUpTo(sorted: ArrayLike<number>, x: number): number {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((sorted[mid] ?? Infinity) <= x) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** Markers sorted by as_of, as `totals` and `statsAt` expect them. */
export function byAsOf(markers: PlaybackMarker[]): PlaybackMarker[] {
  return markers.slice().sort((a, b) => a.asOf - b.asOf)
}

export function totals(markers: readonly PlaybackMarker[]): Totals {
  const scored = markers.filter((m) => m.hit !== null && Number.isFinite(m.known)).sort((a, b) => a.known - b.known)
  const hits = new Int32Array(scored.length)
  const equity = new Float64Array(scored.length)
  let h = 0
  let e = 1
  scored.forEach((m, i) => {
    if (m.hit) h++
    if (m.realized !== null && m.up !== null) e *= 1 + (m.up ? m.realized : -m.realized)
    hits[i] = h
    equity[i] = e
  })
  return { asOf: Float64Array.from(markers, (m) => m.asOf), known: Float64Array.from(scored, (m) => m.known), hits, equity }
}

/** Forecasts made, scored calls, hits, hit rate and equity as of `now` (unix seconds). */
export function statsAt(t: Totals, now: number): PlaybackStats {
  const made = countUpTo(t.asOf, now)
  const calls = countUpTo(t.known, now)
  const hits = calls ? (t.hits[calls - 1] ?? 0) : 0
  const equity = calls ? (t.equity[calls - 1] ?? 1) : 1
  return { made, calls, hits, rate: calls ? hits / calls : undefined, equity }
}
