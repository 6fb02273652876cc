import { flushPromises, mount } from '@vue/test-utils'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { setTokens } from '../../../api/session'
import BuildLog from '../BuildLog.vue'

/** A StreamBuildLog body (the transcoder's JSON array) that ends before the build does. */
function cutShort(): Response {
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new TextEncoder().encode('[{"lines":["step 1"],"buildState":"BUILD_STATE_BUILDING"}]'))
      controller.close()
    },
  })
  return new Response(body, { status: 200, headers: { 'content-type': 'application/json' } })
}

describe('BuildLog', () => {
  const fetchMock = vi.fn<typeof fetch>()
  beforeEach(() => {
    vi.useFakeTimers()
    vi.stubGlobal('fetch', fetchMock)
    fetchMock.mockReset()
    setTokens(undefined)
  })
  afterEach(() => {
    vi.unstubAllGlobals()
    vi.useRealTimers()
  })

  it('says so when the log keeps ending before the build, after trying again', async () => {
    fetchMock.mockImplementation(() => Promise.resolve(cutShort()))
    const wrapper = mount(BuildLog, { props: { model: 'm', number: 1 } })
    for (let i = 0; i < 10 && !wrapper.find('[role="alert"]').exists(); i++) {
      await flushPromises()
      await vi.advanceTimersByTimeAsync(1000)
    }
    expect(wrapper.get('[role="alert"]').text()).toBe('The build log ended before the build did.')
    expect(fetchMock.mock.calls.length).toBe(6)
    expect(wrapper.get('[data-testid="build-log"]').text()).toBe('step 1')
    wrapper.unmount()
  })
})
