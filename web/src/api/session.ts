// The signed-in session: tokens from Login/Refresh, kept in localStorage so a reload keeps the
// user signed in. The access token is refreshed a minute before it expires; the refresh token
// rotates on every use (the server revokes the family if a spent one comes back).
import { reactive } from 'vue'
import type { AuthTokens, User } from './types'

const KEY = 'foretell.session'
const REFRESH_MARGIN_MS = 60_000

export interface SessionState {
  user: User | null
  accessToken: string | null
  accessExpires: number
  refreshToken: string | null
}

export const session = reactive<SessionState>(load())

function load(): SessionState {
  try {
    const raw = localStorage.getItem(KEY)
    if (raw) return JSON.parse(raw) as SessionState
  } catch {
    // A corrupt entry is the same as none.
  }
  return { user: null, accessToken: null, accessExpires: 0, refreshToken: null }
}

function save(): void {
  if (session.refreshToken) localStorage.setItem(KEY, JSON.stringify(session))
  else localStorage.removeItem(KEY)
}

export function setTokens(tokens: AuthTokens | undefined, user?: User): void {
  session.accessToken = tokens?.accessToken ?? null
  session.refreshToken = tokens?.refreshToken ?? null
  session.accessExpires = tokens?.accessTokenExpireTime
    ? Date.parse(tokens.accessTokenExpireTime)
    : 0
  if (user) session.user = user
  save()
}

export function clearSession(): void {
  session.user = null
  session.accessToken = null
  session.refreshToken = null
  session.accessExpires = 0
  save()
}

export function signedIn(): boolean {
  return session.refreshToken !== null
}

/** Milliseconds until the access token should be refreshed (0: now). */
export function refreshDelay(now = Date.now()): number {
  return Math.max(0, session.accessExpires - REFRESH_MARGIN_MS - now)
}

/** Whether the signed-in user publishes models (the console is theirs only). */
export function isProvider(): boolean {
  return session.user?.role === 'ROLE_PROVIDER'
}
