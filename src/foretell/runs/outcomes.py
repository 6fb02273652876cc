"""How a run ended, as stored (`runs.outcome`) and as the API names it (`RunOutcome`)."""

from __future__ import annotations

from foretell.forecast.v1 import forecast_service_pb2 as pb

OUTCOME_ENUM: dict[str, pb.RunOutcome.ValueType] = {
    "ok": pb.RUN_OUTCOME_OK,
    "model_error": pb.RUN_OUTCOME_MODEL_ERROR,
    "timeout": pb.RUN_OUTCOME_TIMEOUT,
    "out_of_memory": pb.RUN_OUTCOME_OUT_OF_MEMORY,
    "killed_by_policy": pb.RUN_OUTCOME_KILLED_BY_POLICY,
    "invalid_output": pb.RUN_OUTCOME_INVALID_OUTPUT,
    "missed": pb.RUN_OUTCOME_MISSED,
    "data_missing": pb.RUN_OUTCOME_DATA_MISSING,
    "platform_error": pb.RUN_OUTCOME_PLATFORM_ERROR,
}
OUTCOMES: dict[int, str] = {value: text for text, value in OUTCOME_ENUM.items()}
