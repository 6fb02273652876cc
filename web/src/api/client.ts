// The one typed client of the REST API (openapi-fetch over the generated schema). Every call
// of the app goes through `call`, which turns error bodies into ApiError, network failures
// into UnreachableError (and the offline banner), refreshes the access token before it
// expires, and sends the user to sign in on a 401.
import createClient, { type Middleware } from 'openapi-fetch'
import { ref } from 'vue'
import { ApiError, UnreachableError } from './errors'
import type { paths } from './schema'
import { clearSession, refreshDelay, session, setTokens } from './session'

// Same origin as the app (Envoy serves both); absolute, so Request() works outside browsers too.
export const api = createClient<paths>({
  baseUrl: globalThis.location?.origin ?? '',
  // Looked up per call (not captured once), so tests can stand in for the network.
  fetch: (request: Request) => globalThis.fetch(request),
})

/** Set while the platform is unreachable; the banner offers a retry. */
export const unreachable = ref(false)
/** Calls in flight, for the progress bar. */
export const inFlight = ref(0)
/** Called on a 401 (wired to the router: sign in, then come back). */
let onUnauthenticated: () => void = () => {}
export function handleUnauthenticated(handler: () => void): void {
  onUnauthenticated = handler
}

let refreshing: Promise<void> | null = null

/** Exchanges the refresh token for new tokens; one exchange at a time. */
export function refreshNow(): Promise<void> {
  refreshing ??= (async () => {
    try {
      const refreshToken = session.refreshToken
      if (!refreshToken) return
      const { data, response } = await api.POST('/v1/auth:refresh', {
        body: { refreshToken },
      })
      if (data) setTokens(data.tokens)
      else if (response.status === 400 || response.status === 401) clearSession()
    } finally {
      refreshing = null
    }
  })()
  return refreshing
}

const auth: Middleware = {
  async onRequest({ request, schemaPath }) {
    if (schemaPath.startsWith('/v1/auth:')) return request
    if (session.refreshToken && refreshDelay() === 0) await refreshNow()
    if (session.accessToken && !request.headers.has('authorization')) {
      request.headers.set('authorization', `Bearer ${session.accessToken}`)
    }
    return request
  },
  onResponse({ request, response }) {
    // Only a 401 for the session's current token ends it: a late answer to a call made with
    // an older token (before signing in again) must not sign the user out.
    const sent = request.headers.get('authorization')
    if (response.status === 401 && session.accessToken && sent === `Bearer ${session.accessToken}`) {
      clearSession()
      onUnauthenticated()
    }
    return response
  },
}
api.use(auth)

type Result<T> = { data?: T; error?: unknown; response: Response }

/** Awaits an openapi-fetch call and returns its data or throws ApiError / UnreachableError. */
export async function call<T>(request: Promise<Result<T>>): Promise<T> {
  inFlight.value++
  let result: Result<T>
  try {
    result = await request
  } catch (cause) {
    unreachable.value = true
    throw new UnreachableError(cause)
  } finally {
    inFlight.value--
  }
  const { data, error, response } = result
  if (response.ok && data !== undefined) {
    unreachable.value = false
    return data
  }
  if (response.status === 502 || response.status === 503 || response.status === 504) {
    unreachable.value = true
  } else {
    unreachable.value = false
  }
  throw new ApiError(response.status, isStatus(error) ? error : undefined)
}

function isStatus(body: unknown): body is { code?: number; message?: string } {
  return typeof body === 'object' && body !== null
}

let timer: ReturnType<typeof setTimeout> | undefined
/** Keeps the access token fresh while the app is open. */
export function scheduleRefresh(): void {
  clearTimeout(timer)
  if (!session.refreshToken) return
  timer = setTimeout(async () => {
    try {
      await refreshNow()
    } catch {
      // Unreachable: the next call retries.
    }
    scheduleRefresh()
  }, Math.max(refreshDelay(), 5_000))
}
