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
from foretell.runs._local import LocalResult, run_folder
from foretell.runs._platform import run_limits, run_on_platform
from foretell.runs._schedule import MAX_MISSED, due_slots, latest_closed_boundary, missed_total
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
    "check_forecasts",
    "due_slots",
    "execute_run",
    "latest_closed_boundary",
    "missed_total",
    "run_folder",
    "run_limits",
    "run_local",
    "run_on_platform",
]
