// What the measures mean (tooltips) and the small computations the charts need beyond what
// GetPerformance returns: drawdown and the hit rate's confidence band.
import type { Measures, Performance } from './api/types'

/** Records with fewer scored forecasts are labelled too short to judge and not ranked. */
export const MIN_SCORED = 100

export const DEFINITIONS: Record<string, string> = {
  scored: 'Forecasts whose target bar has closed, so the platform could compare them with what happened.',
  hitRate: 'Share of directional calls (up or down, on a move that was not zero) whose direction was right. The interval is the 95 % Wilson score interval.',
  sharpe: 'Annualised Sharpe ratio of the equity curve that follows the model\'s direction each period, after costs.',
  maxDrawdown: 'Largest peak-to-trough fall of that equity curve, as a fraction of the peak.',
  totalReturn: 'Final equity of that curve minus one (compounded, after costs).',
  coverage: 'Runs that ended ok, over the slots that came due from the first to the last recorded run.',
  brier: 'Mean squared difference between the stated probability and the outcome (0 is perfect, lower is better).',
  mae: 'Mean absolute error of the predicted returns.',
  sortino: 'Annualised Sortino ratio: like Sharpe, counting only downside deviation.',
  baseline: 'The better of two naive forecasters: "always up", and "persistence" (repeat the last move).',
}

export type MeasureKey = 'hitRate' | 'sharpe' | 'maxDrawdown' | 'totalReturn' | 'scored' | 'coverage'

export function scored(performance: Performance | undefined): number {
  return Number(performance?.forecasts?.scored ?? 0)
}

/** The better baseline by Sharpe ratio (then hit rate), with its name. */
export function bestBaseline(performance: Performance | undefined): { name: string; measures: Measures } | null {
  const candidates: [string, Measures | undefined][] = [
    ['always up', performance?.alwaysUp],
    ['persistence', performance?.persistence],
  ]
  let best: { name: string; measures: Measures } | null = null
  for (const [name, measures] of candidates) {
    if (!measures) continue
    const key = (m: Measures): number => m.sharpe ?? m.hitRate ?? -Infinity
    if (!best || key(measures) > key(best.measures)) best = { name, measures }
  }
  return best
}

export function drawdown(values: readonly number[]): number[] {
  let peak = -Infinity
  return values.map((value) => {
    peak = Math.max(peak, value)
    return peak > 0 ? value / peak - 1 : 0
  })
}

/** Wilson score interval (95 %) of k successes in n trials. */
export function wilson(k: number, n: number, z = 1.959964): [number, number] {
  if (n === 0) return [0, 1]
  const p = k / n
  const denominator = 1 + (z * z) / n
  const centre = (p + (z * z) / (2 * n)) / denominator
  const half = (z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n))) / denominator
  return [Math.max(0, centre - half), Math.min(1, centre + half)]
}

/** Reliability diagram bins: mean stated probability against observed frequency. */
export function reliability(
  points: readonly { probability: number; hit: boolean }[],
  bins = 10,
): { predicted: number; observed: number; count: number }[] {
  const sums = Array.from({ length: bins }, () => ({ p: 0, hits: 0, count: 0 }))
  for (const { probability, hit } of points) {
    const bin = sums[Math.min(bins - 1, Math.floor(probability * bins))]
    if (!bin) continue
    bin.p += probability
    bin.hits += hit ? 1 : 0
    bin.count++
  }
  return sums
    .filter((bin) => bin.count > 0)
    .map((bin) => ({ predicted: bin.p / bin.count, observed: bin.hits / bin.count, count: bin.count }))
}
