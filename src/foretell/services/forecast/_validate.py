"""Input rules for ForecastService reads, every violation reported at once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from foretell.calendars import Slots
from foretell.clock import checked_time
from foretell.errors import FieldViolation, InvalidArgument, Violations
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.paging import PageTokens, reject_token
from foretell.paging import page_size as checked_page_size
from foretell.runs.outcomes import OUTCOMES
from foretell.services.registry import model_name
from foretell.symbols import SYMBOL

KINDS: dict[int, str] = {
    pb.RUN_KIND_UNSPECIFIED: "live",
    pb.RUN_KIND_LIVE: "live",
    pb.RUN_KIND_DRY: "dry",
    pb.RUN_KIND_SIMULATED: "simulated",
}
KIND_ENUM = {"live": pb.RUN_KIND_LIVE, "dry": pb.RUN_KIND_DRY, "simulated": pb.RUN_KIND_SIMULATED}


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: its last row's as_of and id (newest first)."""

    as_of: datetime
    id: str


@dataclass(frozen=True)
class Filters:
    model: str
    version: int | None
    symbol: str
    start: datetime | None
    end: datetime | None
    kind: str
    limit: int
    after: Cursor | None
    # Runs only: keep those that ended this way ("" for every outcome).
    outcome: str = ""


def _kind(v: Violations, value: int) -> str:
    kind = KINDS.get(value)
    if kind is None:
        v.add("kind", "RUN_KIND_LIVE, RUN_KIND_DRY or RUN_KIND_SIMULATED")
    return kind or "live"


def _symbol(v: Violations, symbol: str) -> str:
    if symbol and not SYMBOL.fullmatch(symbol):
        v.add("symbol", "1 to 32 characters: A-Z, 0-9, '.', '_', '-'")
    return symbol


def _range(
    v: Violations, has_start: bool, start: Timestamp, has_end: bool, end: Timestamp
) -> tuple[datetime | None, datetime | None]:
    begin = checked_time(v, "start_time", start) if has_start else None
    until = checked_time(v, "end_time", end) if has_end else None
    if begin is not None and until is not None and until <= begin:
        v.add("end_time", "must be after start_time")
    return begin, until


def _cursor(v: Violations, tokens: PageTokens, call: str, token: str) -> Cursor | None:
    raw = tokens.open(v, call, token)
    if raw is None:
        return None
    try:
        as_of, row_id = raw if isinstance(raw, list) else (None, None)
        when = datetime.fromisoformat(str(as_of))
        if when.tzinfo is not None:
            return Cursor(when, str(row_id))
    except (TypeError, ValueError):
        pass
    reject_token(v)
    return None


def page_token(tokens: PageTokens, call: str, model: str, as_of: datetime, row_id: object) -> str:
    """The token of the page after (as_of, row_id) of `call` (ListForecasts, ListRuns)."""
    return tokens.seal(f"{call}:{model}", [as_of.isoformat(), str(row_id)])


def _common(
    v: Violations,
    tokens: PageTokens,
    call: str,
    request: pb.ListForecastsRequest | pb.ListRunsRequest,
) -> tuple[str, int | None, int, Cursor | None]:
    name = model_name(v, "model", request.model)
    if request.version < 0:
        v.add("version", "a version number, or 0 for every version")
    limit = checked_page_size(v, request.page_size)
    return (
        name,
        request.version or None,
        limit,
        _cursor(v, tokens, f"{call}:{name}", request.page_token),
    )


def list_forecasts(request: pb.ListForecastsRequest, tokens: PageTokens) -> Filters:
    v = Violations()
    name, version, limit, after = _common(v, tokens, "ListForecasts", request)
    if after is not None and not after.id.isdigit():
        reject_token(v)
    start, end = _range(
        v,
        request.HasField("start_time"),
        request.start_time,
        request.HasField("end_time"),
        request.end_time,
    )
    filters = Filters(
        name, version, _symbol(v, request.symbol), start, end, _kind(v, request.kind), limit, after
    )
    v.raise_if_any()
    return filters


def list_runs(request: pb.ListRunsRequest, tokens: PageTokens) -> Filters:
    v = Violations()
    name, version, limit, after = _common(v, tokens, "ListRuns", request)
    if after is not None and not _is_uuid(after.id):
        reject_token(v)
    start, end = _range(
        v,
        request.HasField("start_time"),
        request.start_time,
        request.HasField("end_time"),
        request.end_time,
    )
    outcome = ""
    if request.outcome:
        outcome = OUTCOMES.get(request.outcome, "")
        if not outcome:
            v.add("outcome", "one of the RunOutcome values, or unset for every outcome")
    kind = _kind(v, request.kind)
    filters = Filters(name, version, "", start, end, kind, limit, after, outcome)
    v.raise_if_any()
    return filters


def stream_forecasts(request: pb.StreamForecastsRequest) -> tuple[str, str, str]:
    """(model name, symbol or "", kind)."""
    v = Violations()
    name = model_name(v, "model", request.model)
    symbol = _symbol(v, request.symbol)
    kind = _kind(v, request.kind)
    v.raise_if_any()
    return name, symbol, kind


def get_run(request: pb.GetRunRequest) -> tuple[str, uuid.UUID]:
    v = Violations()
    name = model_name(v, "model", request.model)
    run_id = None
    if not request.run_id:
        v.add("run_id", "required")
    elif not _is_uuid(request.run_id):
        v.add("run_id", "not a run id")
    else:
        run_id = uuid.UUID(request.run_id)
    v.raise_if_any()
    assert run_id is not None
    return name, run_id


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def dry_run(request: pb.DryRunRequest) -> tuple[str, int | None, datetime | None]:
    """(model name, version number or None for live/latest built, as_of or None for the latest
    closed boundary). Whether as_of is on the model's grid and not in the future is checked
    once the model is known (`check_as_of`)."""
    v = Violations()
    name = model_name(v, "model", request.model)
    if request.version < 0:
        v.add("version", "a version number, or 0 for the live (or latest built) version")
    as_of = checked_time(v, "as_of", request.as_of) if request.HasField("as_of") else None
    v.raise_if_any()
    return name, request.version or None, as_of


def check_as_of(as_of: datetime, resolution: str, now: datetime, calendar: Slots) -> None:
    """A dry run's as_of is a slot of the model's calendar (the close of one of its bars)."""
    if as_of > now:
        raise InvalidArgument([FieldViolation("as_of", "must not be in the future")])
    if as_of.microsecond or not calendar.is_slot(resolution, int(as_of.timestamp())):
        raise InvalidArgument(
            [
                FieldViolation(
                    "as_of",
                    f"must be a slot of the model's calendar ({calendar.name}): the close of "
                    f"one of its {resolution} bars",
                )
            ]
        )


MAX_COST_BPS = 1000.0


def get_performance(request: pb.GetPerformanceRequest) -> tuple[str, str, float]:
    """(model name, kind: live or simulated, cost per trade in basis points)."""
    v = Violations()
    name = model_name(v, "model", request.model)
    kind = _kind(v, request.kind)
    if kind == "dry":
        v.add("kind", "RUN_KIND_LIVE or RUN_KIND_SIMULATED: dry runs have no performance")
    cost = request.cost_bps
    if not 0 <= cost <= MAX_COST_BPS:  # NaN fails too
        v.add("cost_bps", f"basis points from 0 to {MAX_COST_BPS:g}")
    v.raise_if_any()
    return name, kind, cost


def ledger_token(tokens: PageTokens, model: str, sequence: int) -> str:
    """The next page of `model`'s ledger starts after entry `sequence`."""
    # The model is bound to the token: another model's token is refused, not followed.
    return tokens.seal(f"GetLedger:{model}", sequence)


def get_ledger(request: pb.GetLedgerRequest, tokens: PageTokens) -> tuple[str, int, int]:
    """(model name, page size, last sequence before the page)."""
    v = Violations()
    name = model_name(v, "model", request.model)
    limit = checked_page_size(v, request.page_size)
    after = 0
    raw = tokens.open(v, f"GetLedger:{name}", request.page_token)
    if raw is not None:
        if type(raw) is int and raw >= 0:
            after = raw
        else:
            reject_token(v)
    v.raise_if_any()
    return name, limit, after
