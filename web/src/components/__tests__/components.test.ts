import { mount } from '@vue/test-utils'
import { describe, expect, it } from 'vitest'
import FormField from '../FormField.vue'
import InfoTip from '../InfoTip.vue'
import Sparkline from '../Sparkline.vue'
import SubscriptionStatus from '../SubscriptionStatus.vue'
import Time from '../Time.vue'

describe('components', () => {
  it('FormField shows the server message and links it to the input', () => {
    const wrapper = mount(FormField, { props: { id: 'email', label: 'Email', modelValue: '', error: 'required' } })
    const input = wrapper.get('input')
    expect(input.attributes('aria-invalid')).toBe('true')
    expect(wrapper.get(`#${input.attributes('aria-describedby')}`).text()).toBe('required')
  })
  it('FormField has no error text when valid', () => {
    const wrapper = mount(FormField, { props: { id: 'email', label: 'Email', modelValue: 'a' } })
    expect(wrapper.find('.field-error').exists()).toBe(false)
  })
  it('InfoTip describes its button with the definition', () => {
    const wrapper = mount(InfoTip, { props: { label: 'Sharpe', text: 'Annualised.' } })
    const button = wrapper.get('button')
    expect(button.attributes('aria-label')).toBe('What is Sharpe?')
    expect(wrapper.get(`#${button.attributes('aria-describedby')}`).text()).toBe('Annualised.')
  })
  it('Time shows UTC on hover', () => {
    const wrapper = mount(Time, { props: { value: '2024-05-01T12:30:00Z' } })
    expect(wrapper.get('time').attributes('title')).toBe('2024-05-01 12:30 UTC')
  })
  it('Sparkline rises green and falls red', () => {
    expect(mount(Sparkline, { props: { values: [1, 2, 3], label: 'x' } }).find('path.up').exists()).toBe(true)
    expect(mount(Sparkline, { props: { values: [3, 2, 1], label: 'x' } }).find('path.down').exists()).toBe(true)
  })
  it('SubscriptionStatus says when a cancelled subscription ends', () => {
    const trial = { state: 'SUBSCRIPTION_STATE_TRIALING', trialEndTime: '2024-05-15T12:00:00Z', currentPeriodEndTime: '2024-05-15T12:00:00Z' } as const
    const going = mount(SubscriptionStatus, { props: { subscription: trial } })
    expect(going.get('[data-testid="state"]').text()).toBe('trialing')
    expect(going.find('[data-testid="ending"]').exists()).toBe(false)
    expect(going.text()).toContain('trial ends on')
    const ending = mount(SubscriptionStatus, { props: { subscription: { ...trial, cancelAtPeriodEnd: true }, stateTestid: 'subscription-state' } })
    expect(ending.get('[data-testid="subscription-state"]').text()).toBe('trialing')
    const badge = ending.get('[data-testid="ending"]')
    expect(badge.text()).toMatch(/^ends on .+ \(cancelled at the end of the trial\)$/)
    expect(badge.get('time').attributes('datetime')).toBe('2024-05-15T12:00:00Z')
  })
})
