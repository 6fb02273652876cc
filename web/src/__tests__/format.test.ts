import { describe, expect, it } from 'vitest'
import { enumWord, horizon, minorDigits, money, percent, planOffer, utc } from '../format'
import { drawdown, reliability, wilson } from '../measures'

describe('format', () => {
  it('formats money from minor units with the currency digits', () => {
    expect(money('4900', 'USD')).toMatch(/49\.00/)
    expect(money(500, 'JPY')).toMatch(/500/)
    expect(money(500, 'JPY')).not.toMatch(/5\.00/)
  })
  it('knows how many digits a currency\'s minor units have', () => {
    expect(minorDigits('USD')).toBe(2)
    expect(minorDigits('JPY')).toBe(0)
    expect(minorDigits('not a code')).toBe(2)
  })
  it('says exactly what the plan does', () => {
    expect(planOffer('4900', 'USD', 14)).toMatch(/^14-day free trial, then .*49\.00 a month; cancel any time$/)
    expect(planOffer('1500', 'USD', 0)).toMatch(/15\.00 a month, billed from today/)
  })
  it('shows UTC for hovering and words for enums', () => {
    expect(utc('2024-05-01T12:30:00Z')).toBe('2024-05-01 12:30 UTC')
    expect(enumWord('SUBSCRIPTION_STATE_PAST_DUE', 'SUBSCRIPTION_STATE_')).toBe('past due')
    expect(horizon(24, 'RESOLUTION_1H')).toBe('1 day')
    expect(horizon(3, 'RESOLUTION_4H')).toBe('12 hours')
    expect(percent(undefined)).toBe('—')
  })
})

describe('measures', () => {
  it('computes the drawdown from the running peak', () => {
    expect(drawdown([1, 1.2, 0.9, 1.3])).toEqual([0, 0, 0.9 / 1.2 - 1, 0])
  })
  it('gives the Wilson interval around the rate', () => {
    const [low, high] = wilson(55, 100)
    expect(low).toBeCloseTo(0.452, 2)
    expect(high).toBeCloseTo(0.644, 2)
    expect(wilson(0, 0)).toEqual([0, 1])
  })
  it('bins probabilities for the reliability diagram', () => {
    const bins = reliability([
      { probability: 0.55, hit: true },
      { probability: 0.58, hit: false },
      { probability: 0.91, hit: true },
    ])
    expect(bins).toHaveLength(2)
    expect(bins[0]).toMatchObject({ observed: 0.5, count: 2 })
  })
})
