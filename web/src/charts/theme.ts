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
