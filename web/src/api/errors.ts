// Errors of the REST API as the app shows them: the google.rpc.Status body Envoy's transcoder
// returns, with field violations keyed by the field they name.
import type { Status } from './types'

const BAD_REQUEST = 'type.googleapis.com/google.rpc.BadRequest'

export class ApiError extends Error {
  readonly status: number
  readonly code: number
  /** Field (as the server names it, e.g. "display_name") → what is wrong with it. */
  readonly fields: Readonly<Record<string, string>>

  constructor(status: number, body: Partial<Status> | undefined) {
    super(body?.message || `request failed (HTTP ${status})`)
    this.name = 'ApiError'
    this.status = status
    this.code = body?.code ?? 0
    this.fields = fieldViolations(body)
  }
}

/** The platform could not be reached (network down, Envoy or the services unavailable). */
export class UnreachableError extends Error {
  constructor(cause?: unknown) {
    super('The platform cannot be reached.')
    this.name = 'UnreachableError'
    this.cause = cause
  }
}

export function fieldViolations(body: Partial<Status> | undefined): Record<string, string> {
  const fields: Record<string, string> = {}
  for (const detail of body?.details ?? []) {
    if (detail['@type'] !== BAD_REQUEST) continue
    const violations = (detail as { fieldViolations?: { field?: string; description?: string }[] })
      .fieldViolations
    for (const violation of violations ?? []) {
      const field = violation.field ?? ''
      fields[field] = fields[field] ? `${fields[field]}; ${violation.description ?? ''}` : (violation.description ?? '')
    }
  }
  return fields
}

export function messageOf(error: unknown): string {
  if (error instanceof ApiError || error instanceof UnreachableError) return error.message
  return 'Something went wrong.'
}
