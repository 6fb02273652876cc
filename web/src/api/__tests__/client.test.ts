import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { api, call, handleUnauthenticated, unreachable } from '../client'
import { ApiError, UnreachableError, fieldViolations } from '../errors'
import { session, setTokens } from '../session'

function reply(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } })
}

describe('the API client', () => {
  const fetchMock = vi.fn<typeof fetch>()
  beforeEach(() => {
    vi.stubGlobal('fetch', fetchMock)
    fetchMock.mockReset()
    localStorage.clear()
    setTokens(undefined)
  })
  afterEach(() => vi.unstubAllGlobals())

  it('turns a google.rpc.Status with field violations into ApiError.fields', async () => {
    fetchMock.mockResolvedValue(
      reply(400, {
        code: 3,
        message: 'invalid request',
        details: [
          { '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'INVALID_ARGUMENT' },
          {
            '@type': 'type.googleapis.com/google.rpc.BadRequest',
            fieldViolations: [
              { field: 'email', description: 'not a valid email address' },
              { field: 'password', description: 'at least 10 characters' },
            ],
          },
        ],
      }),
    )
    const error = await call(api.POST('/v1/users', { body: { email: 'x', password: 'y', displayName: 'z', role: 'ROLE_SUBSCRIBER' } })).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ApiError)
    expect((error as ApiError).status).toBe(400)
    expect((error as ApiError).fields).toEqual({ email: 'not a valid email address', password: 'at least 10 characters' })
  })

  it('sends the access token and, on a 401, ends the session and asks to sign in', async () => {
    setTokens({ accessToken: 'a', refreshToken: 'r', accessTokenExpireTime: new Date(Date.now() + 600_000).toISOString() })
    const asked = vi.fn()
    handleUnauthenticated(asked)
    fetchMock.mockResolvedValue(reply(401, { code: 16, message: 'expired' }))
    await expect(call(api.GET('/v1/users/me'))).rejects.toBeInstanceOf(ApiError)
    const request = fetchMock.mock.calls[0]?.[0] as Request
    expect(request.headers.get('authorization')).toBe('Bearer a')
    expect(asked).toHaveBeenCalledOnce()
    expect(session.refreshToken).toBeNull()
  })

  it('refreshes an access token about to expire before the call', async () => {
    setTokens({ accessToken: 'old', refreshToken: 'r1', accessTokenExpireTime: new Date(Date.now() + 10_000).toISOString() })
    fetchMock
      .mockResolvedValueOnce(
        reply(200, { tokens: { accessToken: 'new', refreshToken: 'r2', accessTokenExpireTime: new Date(Date.now() + 900_000).toISOString() } }),
      )
      .mockResolvedValueOnce(reply(200, { user: { email: 'a@b.c' } }))
    const me = await call(api.GET('/v1/users/me'))
    expect(me.user?.email).toBe('a@b.c')
    expect((fetchMock.mock.calls[0]?.[0] as Request).url).toMatch(/\/v1\/auth:refresh$/)
    expect((fetchMock.mock.calls[1]?.[0] as Request).headers.get('authorization')).toBe('Bearer new')
    expect(session.refreshToken).toBe('r2')
  })

  it('reports an unreachable platform', async () => {
    fetchMock.mockRejectedValue(new TypeError('Failed to fetch'))
    await expect(call(api.GET('/v1/auth/jwks'))).rejects.toBeInstanceOf(UnreachableError)
    expect(unreachable.value).toBe(true)
    fetchMock.mockResolvedValue(reply(200, { keys: [] }))
    await call(api.GET('/v1/auth/jwks'))
    expect(unreachable.value).toBe(false)
  })

  it('ignores details that are not field violations', () => {
    expect(fieldViolations({ details: [{ '@type': 'type.googleapis.com/google.rpc.RetryInfo' }] })).toEqual({})
  })
})
