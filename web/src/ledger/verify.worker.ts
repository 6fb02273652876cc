// Off the main thread: a 6,000-entry ledger is tens of thousands of JSON parses, encodings and
// digests, which would stall scrolling and the charts if run beside them.
import { type LedgerJson, verifyLedger } from './verify'
import type { ForecastRecord } from '../api/types'

export interface VerifyRequest {
  model: string
  ledger: LedgerJson
  forecasts: ForecastRecord[] | null
  remembered: Record<string, string>
}

self.onmessage = async (event: MessageEvent<VerifyRequest>) => {
  const { model, ledger, forecasts, remembered } = event.data
  try {
    self.postMessage({ verdict: await verifyLedger(model, ledger, forecasts, remembered) })
  } catch (error) {
    self.postMessage({ error: error instanceof Error ? error.message : String(error) })
  }
}
