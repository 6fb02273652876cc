"""Runs of model versions: the run-scoped gRPC server a jailed model talks to, and
`execute_run`, which runs one version at one as_of and records the run and its forecasts
exactly once."""

from foretell.runs._execute import (
    LOG_CAP,
    LocalRun,
    NotRunnable,
    RunKind,
    RunRecord,
    execute_run,
    run_local,
)
from foretell.runs._jobs import (
    dry_run,
    enqueue_replay,
    replay_job_id,
    replay_run,
    request_dry_run,
)
from foretell.runs._local import LocalResult, run_folder
from foretell.runs._platform import (
    close_warm_templates,
    prewarm_templates,
    run_job_timeout_s,
    run_limits,
    run_on_platform,
    warm_templates,
)
from foretell.runs._schedule import MAX_MISSED, SlotPlan, latest_slot, plan_slots
from foretell.runs._scope import MAX_FORECASTS, MAX_MESSAGE_BYTES, RunScope
from foretell.runs._server import BarSource, DatabaseBars, MemoryBars, RunServer
from foretell.runs._validate import AcceptedForecast, check_forecasts

__all__ = [
    "LOG_CAP",
    "MAX_FORECASTS",
    "MAX_MESSAGE_BYTES",
    "MAX_MISSED",
    "AcceptedForecast",
    "BarSource",
    "DatabaseBars",
    "LocalResult",
    "LocalRun",
    "MemoryBars",
    "NotRunnable",
    "RunKind",
    "RunRecord",
    "RunScope",
    "RunServer",
    "SlotPlan",
    "check_forecasts",
    "close_warm_templates",
    "dry_run",
    "enqueue_replay",
    "execute_run",
    "latest_slot",
    "plan_slots",
    "prewarm_templates",
    "replay_job_id",
    "replay_run",
    "request_dry_run",
    "run_folder",
    "run_job_timeout_s",
    "run_limits",
    "run_local",
    "run_on_platform",
    "warm_templates",
]
