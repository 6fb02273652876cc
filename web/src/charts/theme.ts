// Chart colours from the page's CSS variables, so charts follow the light or dark theme.
export interface ChartColors {
  text: string
  grid: string
  accent: string
  good: string
  bad: string
  soft: string
}

export function chartColors(element: Element): ChartColors {
  const style = getComputedStyle(element)
  const read = (name: string, fallback: string): string => style.getPropertyValue(name).trim() || fallback
  return {
    text: read('--fg', '#15191f'),
    grid: read('--line', '#d5dae1'),
    accent: read('--accent', '#1f5fbf'),
    good: read('--good', '#0f7a3d'),
    bad: read('--bad', '#b42318'),
    soft: read('--fg-soft', '#4b5563'),
  }
}

export const BASELINE_COLORS = ['#c77700', '#8a5cf6']

// The time axis' labels, in UTC as lightweight-charts draws them by default, with one Intl
// formatter per kind of label: the default builds a formatter for every label it draws, which
// is most of a playback frame's script time.
const TICK_FORMATS: Intl.DateTimeFormatOptions[] = [
  { year: 'numeric' },
  { month: 'short' },
  { day: 'numeric' },
  { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' },
  { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' },
]
const tickFormats = new Map<number, Intl.DateTimeFormat>()

/** A `tickMarkFormatter` for charts whose times are unix seconds. */
export function tickMark(time: unknown, type: number): string {
  if (typeof time !== 'number') return ''
  let format = tickFormats.get(type)
  if (!format) {
    format = new Intl.DateTimeFormat(undefined, { ...TICK_FORMATS[type], timeZone: 'UTC' })
    tickFormats.set(type, format)
  }
  return format.format(new Date(time * 1000))
}
