// One model's data as the pages need it: the model, its plan, its performance (live, or the
// simulated record when there is no live one; never both mixed) and the caller's subscription.
import { api, call } from '../api/client'
import { ApiError } from '../api/errors'
import type { Model, PerformanceResponse, Plan, RunKind, Subscription, Version } from '../api/types'
import { scored } from '../measures'

export async function fetchPlan(model: string): Promise<Plan | null> {
  try {
    return (await call(api.GET('/v1/models/{model}/plan', { params: { path: { model } } }))).plan ?? null
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null
    throw error
  }
}

export async function fetchPerformance(model: string, kind: RunKind): Promise<PerformanceResponse> {
  return call(api.GET('/v1/models/{model}/performance', { params: { path: { model }, query: { kind } } }))
}

/** The live record when it has scored forecasts, else the simulated one (labelled as such). */
export async function fetchRecord(model: string): Promise<PerformanceResponse> {
  const live = await fetchPerformance(model, 'RUN_KIND_LIVE')
  if (scored(live.overall) > 0) return live
  const simulated = await fetchPerformance(model, 'RUN_KIND_SIMULATED')
  return scored(simulated.overall) > 0 ? simulated : live
}

export async function fetchModels(): Promise<Model[]> {
  const models: Model[] = []
  let pageToken = ''
  do {
    const page = await call(api.GET('/v1/models', { params: { query: { pageSize: 100, pageToken } } }))
    models.push(...(page.models ?? []))
    pageToken = page.nextPageToken ?? ''
  } while (pageToken)
  return models
}

export async function fetchVersion(model: string, number: number): Promise<Version> {
  const data = await call(api.GET('/v1/models/{model}/versions/{number}', { params: { path: { model, number } } }))
  return data.version ?? {}
}

export async function fetchSubscription(model: string): Promise<Subscription | null> {
  const page = await call(api.GET('/v1/subscriptions', { params: { query: { model, pageSize: 10 } } }))
  return page.subscriptions?.[0] ?? null
}

export const READING_STATES = new Set(['SUBSCRIPTION_STATE_TRIALING', 'SUBSCRIPTION_STATE_ACTIVE', 'SUBSCRIPTION_STATE_PAST_DUE'])
export const LIVE_STATES = new Set([...READING_STATES, 'SUBSCRIPTION_STATE_INCOMPLETE'])
