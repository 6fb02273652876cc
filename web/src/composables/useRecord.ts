// A model's forecasts and the bars they are about, as playback and the reliability diagram
// need them: forecasts paged through (oldest first), bars of the span they cover.
import { api, call } from '../api/client'
import type { operations } from '../api/schema'
import type { ForecastRecord, Resolution, RunKind } from '../api/types'

export interface Candle {
  time: number
  open: number
  high: number
  low: number
  close: number
}

export interface Forecasts {
  forecasts: ForecastRecord[]
  delayedSample: boolean
  sampleRecordedBefore?: string
}

export type ForecastsQuery = Omit<NonNullable<operations['ForecastService_ListForecasts']['parameters']['query']>, 'pageSize' | 'pageToken'>

/** ListForecasts paged through (oldest first), until its last page or `limit` forecasts. */
export async function listForecasts(model: string, query: ForecastsQuery, limit = Infinity): Promise<Forecasts> {
  const forecasts: ForecastRecord[] = []
  let pageToken = ''
  let delayedSample = false
  let sampleRecordedBefore: string | undefined
  do {
    const page = await call(
      api.GET('/v1/models/{model}/forecasts', {
        params: { path: { model }, query: { ...query, pageSize: 1000, pageToken } },
      }),
    )
    forecasts.push(...(page.forecasts ?? []))
    delayedSample = page.delayedSample ?? false
    sampleRecordedBefore = page.sampleRecordedBefore
    pageToken = page.nextPageToken ?? ''
  } while (pageToken && forecasts.length < limit)
  forecasts.reverse()
  return { forecasts, delayedSample, sampleRecordedBefore }
}

export function fetchForecasts(model: string, kind: RunKind, symbol: string, limit = 10_000): Promise<Forecasts> {
  return listForecasts(model, { kind, symbol }, limit)
}

export const RESOLUTION_SECONDS: Record<string, number> = { RESOLUTION_1H: 3600, RESOLUTION_4H: 14400, RESOLUTION_1D: 86400 }

export async function fetchBars(symbol: string, resolution: Resolution, start: number, end: number): Promise<Candle[]> {
  const messages = await call(
    api.GET('/v1/symbols/{symbol}/bars', {
      params: {
        path: { symbol },
        query: { resolution, startTime: new Date(start * 1000).toISOString(), endTime: new Date(end * 1000).toISOString() },
      },
    }),
  )
  const candles: Candle[] = []
  for (const message of messages) {
    const bars = message.bars
    const times = bars?.openTimesUnix ?? []
    for (let i = 0; i < times.length; i++) {
      candles.push({
        time: Number(times[i]),
        open: bars?.opens?.[i] ?? 0,
        high: bars?.highs?.[i] ?? 0,
        low: bars?.lows?.[i] ?? 0,
        close: bars?.closes?.[i] ?? 0,
      })
    }
  }
  return candles
}

export interface Outcome {
  /** Realized relative change of the close from as_of to the target time. */
  realized: number
  hit: boolean | null
  /** When the outcome is known: the target bar's close. */
  known: number
}

/** The outcome of a forecast from the bars (close of the bar ending at as_of against the
 * close of the bar ending at the target time), or null when a bar is missing. */
export function outcome(forecast: ForecastRecord, closeAt: Map<number, number>): Outcome | null {
  const asOf = Date.parse(forecast.asOf ?? '') / 1000
  const target = Date.parse(forecast.targetTime ?? '') / 1000
  const start = closeAt.get(asOf)
  const end = closeAt.get(target)
  if (start === undefined || end === undefined || start === 0) return null
  const realized = end / start - 1
  const direction = forecast.direction
  let hit: boolean | null = null
  if (realized !== 0 && (direction === 'DIRECTION_UP' || direction === 'DIRECTION_DOWN')) {
    hit = (direction === 'DIRECTION_UP') === realized > 0
  }
  return { realized, hit, known: target }
}

/** Close prices by the time each bar closes (open time plus the resolution). */
export function closesByCloseTime(candles: readonly Candle[], seconds: number): Map<number, number> {
  return new Map(candles.map((c) => [c.time + seconds, c.close]))
}
