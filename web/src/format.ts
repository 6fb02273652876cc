// All formatting in one place: numbers and money for the user's locale, times in the user's
// zone (with the UTC time for a title attribute), enums as words.

const locale = (): string | undefined => undefined // the browser's

// Building an Intl formatter costs far more than using one, and playback formats its figures
// on every frame: one formatter per set of options.
const numberFormats = new Map<string, Intl.NumberFormat>()
const dateFormats = new Map<string, Intl.DateTimeFormat>()
function numberFormat(options: Intl.NumberFormatOptions): Intl.NumberFormat {
  const key = JSON.stringify(options)
  let format = numberFormats.get(key)
  if (!format) numberFormats.set(key, (format = new Intl.NumberFormat(locale(), options)))
  return format
}
function dateFormat(options: Intl.DateTimeFormatOptions): Intl.DateTimeFormat {
  const key = JSON.stringify(options)
  let format = dateFormats.get(key)
  if (!format) dateFormats.set(key, (format = new Intl.DateTimeFormat(locale(), options)))
  return format
}

export function number(value: number | undefined | null, digits = 2): string {
  if (value === undefined || value === null || !Number.isFinite(value)) return '—'
  return numberFormat({
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  }).format(value)
}

export function integer(value: number | string | undefined | null): string {
  if (value === undefined || value === null || value === '') return '0'
  return numberFormat({ maximumFractionDigits: 0 }).format(Number(value))
}

export function percent(value: number | undefined | null, digits = 1): string {
  if (value === undefined || value === null || !Number.isFinite(value)) return '—'
  return numberFormat({
    style: 'percent',
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  }).format(value)
}

/** Minor units of the currency (int64 as a JSON string) as money: "49.00 USD" style. */
export function money(minor: string | number | undefined, currency = 'USD'): string {
  const units = Number(minor ?? 0)
  const format = numberFormat({ style: 'currency', currency })
  const digits = format.resolvedOptions().maximumFractionDigits ?? 2
  return format.format(units / 10 ** digits)
}

export function dateTime(value: string | number | undefined | null): string {
  if (value === undefined || value === null || value === '') return '—'
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value)
  return dateFormat({ dateStyle: 'medium', timeStyle: 'short' }).format(date)
}

export function date(value: string | undefined | null): string {
  if (!value) return '—'
  return dateFormat({ dateStyle: 'medium' }).format(new Date(value))
}

/** The same moment in UTC, ISO style: for title attributes. */
export function utc(value: string | number | undefined | null): string {
  if (value === undefined || value === null || value === '') return ''
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value)
  return `${date.toISOString().replace('T', ' ').slice(0, 16)} UTC`
}

export const RESOLUTIONS: Record<string, string> = {
  RESOLUTION_1H: '1 hour',
  RESOLUTION_4H: '4 hours',
  RESOLUTION_1D: '1 day',
}
export function resolution(value: string | undefined): string {
  return RESOLUTIONS[value ?? ''] ?? '—'
}

const RESOLUTION_HOURS: Record<string, number> = { RESOLUTION_1H: 1, RESOLUTION_4H: 4, RESOLUTION_1D: 24 }
export function horizon(bars: number | undefined, res: string | undefined): string {
  const hours = (bars ?? 1) * (RESOLUTION_HOURS[res ?? ''] ?? 1)
  return hours % 24 === 0 ? plural(hours / 24, 'day') : plural(hours, 'hour')
}

export function plural(n: number, word: string): string {
  return `${integer(n)} ${word}${n === 1 ? '' : 's'}`
}

/** SUBSCRIPTION_STATE_PAST_DUE → "past due". */
export function enumWord(value: string | undefined, prefix: string): string {
  if (!value) return '—'
  return value.replace(prefix, '').toLowerCase().replaceAll('_', ' ')
}

/** The plan's call to action, saying exactly what happens. */
export function planOffer(priceMinor: string | undefined, currency: string | undefined, trialDays: number | undefined): string {
  const price = money(priceMinor, currency ?? 'USD')
  const free = Number(priceMinor ?? 0) === 0
  const monthly = free ? 'free' : `${price} a month`
  if (trialDays) return `${trialDays}-day free trial, then ${monthly}; cancel any time`
  return free ? 'Free; cancel any time' : `${price} a month, billed from today; cancel any time`
}

/** Digits after the point in the currency's minor units (2 for USD, 0 for JPY). */
export function minorDigits(currency: string): number {
  try {
    return new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits ?? 2
  } catch {
    return 2 // not a currency code: the server says so
  }
}
