"""A model's performance report: recorded forecasts scored against realized bars on the
model's calendar, measured per version and overall for the model and the naive baselines,
with the conventions stated in the report itself (`Conventions`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text

from foretell import calendars
from foretell.db import Database
from foretell.marketdata import calendar_names
from foretell.performance._measures import Ints, Measures, Periods, Scored, measure

# Forecasts in a fixed order; the symbol comes as its 1-based position in the model's symbols
# (NULL: a symbol the model does not list, never scored).
_FORECASTS = text("""
SELECT v.number, extract(epoch FROM f.as_of)::bigint, extract(epoch FROM f.target_time)::bigint,
       CASE f.direction WHEN 'up' THEN 1 WHEN 'down' THEN -1 ELSE 0 END,
       f.predicted_return, f.probability, array_position(CAST(:symbols AS text[]), f.symbol)
FROM forecasts f
JOIN versions v ON v.id = f.version_id
WHERE f.model_id = :model_id AND f.kind = :kind
ORDER BY f.as_of, f.symbol, f.target_time, v.number
""")
# The closes of the model's symbols over the record, by symbol and close time.
_CLOSES = text("""
SELECT array_position(CAST(:symbols AS text[]), symbol), extract(epoch FROM close_time)::bigint,
       close
FROM bars
WHERE symbol = ANY(:symbols) AND resolution = :resolution
  AND close_time BETWEEN to_timestamp(:first) AND to_timestamp(:last)
ORDER BY 1, 2
""")
_LAST_CLOSE = text("""
SELECT symbol, extract(epoch FROM max(close_time))::bigint FROM bars
WHERE resolution = :resolution AND symbol = ANY(:symbols) GROUP BY symbol
""")
_RUNS = text("""
SELECT v.number, extract(epoch FROM r.as_of)::bigint, r.outcome
FROM runs r JOIN versions v ON v.id = r.version_id
WHERE r.model_id = :model_id AND r.kind = :kind
ORDER BY r.as_of, v.number
""")
_REVISION = text("""
SELECT (SELECT revision FROM model_revisions WHERE model_id = :model_id),
       (SELECT revision FROM data_revisions WHERE name = 'bars')
""")

# The conventions, as the report states them (docs/performance.md has the formulas).
RETURNS = (
    "one period per bar of the model's calendar, every one from the first scored as_of to "
    "the last (a period with no forecast returns 0); a forecast over h bars holds position/h "
    "for h bars, shared equally with the other forecasts of its as_of; its return is booked "
    "in its as_of's period"
)
COSTS = (
    "cost_bps per unit of position traded: each period pays cost x the sum over symbols of "
    "|change of the book's weight| (flat to long 1x, long to short 2x); the book left open at "
    "the end is not charged"
)
ANNUALISATION = (
    "Sharpe = mean / sample stdev (n-1) of the period returns x sqrt(periods_per_year); "
    "Sortino = mean / sqrt(mean(min(R, 0)^2)) x sqrt(periods_per_year); periods_per_year is "
    "the calendar's mean number of bars a year (2010-2019)"
)
REALIZED = (
    "close of the bar closing at the calendar's last slot at or before target_time / close "
    "of the bar closing at the last slot at or before as_of - 1; unscorable when either bar "
    "is missing or no bar closes between them; pending while the target bar has not closed"
)
COVERAGE = (
    "calendar slots from the first to the last recorded run; ratio = slots with an ok run / "
    "(slots - slots whose data never arrived), at most 1; overall counts distinct slots over "
    "every version"
)
ORDER = (
    "forecasts by (as_of, symbol, target_time, version); equity by period; the cumulative "
    "hit rate by (target_time, as_of, symbol, version)"
)


@dataclass(frozen=True)
class Conventions:
    calendar: str
    periods_per_year: float
    returns: str = RETURNS
    costs: str = COSTS
    annualisation: str = ANNUALISATION
    realized: str = REALIZED
    coverage: str = COVERAGE
    order: str = ORDER


@dataclass(frozen=True)
class Coverage:
    due_slots: int
    runs: int
    runs_ok: int
    runs_failed: int
    runs_missed: int
    slots_without_run: int
    ratio: float
    runs_data_missing: int = 0


@dataclass(frozen=True)
class Counts:
    total: int
    scored: int
    pending: int
    unscorable: int


@dataclass(frozen=True)
class Performance:
    version: int  # 0: every version
    coverage: Coverage
    counts: Counts
    model: Measures
    always_up: Measures
    persistence: Measures


@dataclass(frozen=True)
class Report:
    periods_per_year: float
    overall: Performance
    versions: list[Performance]
    conventions: Conventions


async def revision(db: Database, model_id: uuid.UUID) -> tuple[int, int]:
    """What a report depends on, as counters the database bumps on every change (triggers of
    migrations 0007 and 0009): the model's runs and forecasts, the bars and the calendars."""
    async with db.read.connect() as conn:
        row = (await conn.execute(_REVISION, {"model_id": model_id})).one()
    return int(row[0] or 0), int(row[1] or 0)


# Runs the platform failed to carry out: the platform's fault, never the model's. Their slots
# are not due for the model (unless another run covers them) and they count in nothing.
_PLATFORM_ERROR = "platform_error"


def _coverage(
    calendar: calendars.Slots, resolution: str, slots: Ints, outcomes: list[str]
) -> Coverage:
    if not len(slots):
        return Coverage(0, 0, 0, 0, 0, 0, 0.0)
    platform = np.array([o == _PLATFORM_ERROR for o in outcomes], dtype=bool)
    kept_slots = slots[~platform]
    kept = [o for o in outcomes if o != _PLATFORM_ERROR]
    due = calendar.slots(resolution, int(slots.min()) - 1, int(slots.max()))
    due = np.setdiff1d(due, np.setdiff1d(slots[platform], kept_slots))
    out = np.array(kept, dtype=object)
    ok_slots = np.intersect1d(kept_slots[out == "ok"], due)
    data_missing = np.setdiff1d(np.intersect1d(kept_slots[out == "data_missing"], due), ok_slots)
    counted = len(due) - len(data_missing)
    ok = kept.count("ok")
    missed = kept.count("missed")
    absent = kept.count("data_missing")
    return Coverage(
        due_slots=len(due),
        runs=len(kept),
        runs_ok=ok,
        runs_failed=len(kept) - ok - missed - absent,
        runs_missed=missed,
        slots_without_run=len(np.setdiff1d(due, kept_slots)),
        ratio=len(ok_slots) / counted if counted else 0.0,
        runs_data_missing=absent,
    )


@dataclass(frozen=True)
class _Rows:
    """All forecasts of the model as columns, in the fixed order, scored on the calendar."""

    version: Ints
    as_of: Ints  # the calendar slot the realized return starts from
    target: Ints  # the calendar slot it ends at
    horizon: Ints  # calendar bars between them
    symbol: Ints  # 0-based; -1 for a symbol the model does not list
    position: Ints
    predicted: np.ndarray
    probability: np.ndarray
    realized: np.ndarray  # NaN: not scored
    last_move: np.ndarray  # the persistence baseline's move; NaN where a bar is missing
    pending: np.ndarray


def _performance(
    number: int,
    rows: _Rows,
    mask: np.ndarray,
    coverage: Coverage,
    calendar: calendars.Slots,
    resolution: str,
    n_symbols: int,
    cost: float,
    per_year: float,
) -> Performance:
    scored = mask & ~np.isnan(rows.realized)
    pending = mask & ~scored & rows.pending
    counts = Counts(
        total=int(mask.sum()),
        scored=int(scored.sum()),
        pending=int(pending.sum()),
        unscorable=int((mask & ~scored & ~pending).sum()),
    )
    as_of = rows.as_of[scored]
    periods = Periods(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), n_symbols)
    if len(as_of):
        starts = calendar.slots(resolution, int(as_of.min()) - 1, int(as_of.max()))
        every = calendar.all_slots(resolution)
        ends = every[np.searchsorted(every, starts, side="right")]
        periods = Periods(starts, ends, n_symbols)
    realized, last_move = rows.realized[scored], rows.last_move[scored]
    nan = np.full(len(as_of), np.nan)

    def scored_by(position: np.ndarray, predicted: np.ndarray, probability: np.ndarray) -> Measures:
        forecasts = Scored(
            as_of, rows.target[scored], rows.horizon[scored], rows.symbol[scored], position,
            predicted, probability, realized,
        )  # fmt: skip
        return measure(forecasts, cost=cost, periods_per_year=per_year, periods=periods)

    persistence_position = np.nan_to_num(np.sign(last_move)).astype(np.int64)
    return Performance(
        version=number,
        coverage=coverage,
        counts=counts,
        model=scored_by(rows.position[scored], rows.predicted[scored], rows.probability[scored]),
        always_up=scored_by(np.ones(len(as_of), dtype=np.int64), nan, nan),
        persistence=scored_by(persistence_position, last_move, nan),
    )


async def compute_report(
    db: Database,
    model_id: uuid.UUID,
    resolution: str,
    symbols: list[str],
    kind: str,
    cost_bps: float,
) -> Report:
    """Computes the report from scratch (see `PerformanceCache` for the cached path)."""
    params = {"model_id": model_id, "kind": kind, "resolution": resolution, "symbols": symbols}
    async with db.read.connect() as conn:
        raw = (await conn.execute(_FORECASTS, params)).all()
        closes = await conn.execute(_LAST_CLOSE, params)
        last_close: dict[str, int] = {row[0]: row[1] for row in closes.all()}
        runs = (await conn.execute(_RUNS, {"model_id": model_id, "kind": kind})).all()
    names = await calendar_names(db, symbols) if symbols else {}
    calendar = calendars.joint(names.values()) if names else calendars.get(calendars.CRYPTO)
    bars: Sequence[Sequence[Any]] = []
    if raw:
        # From the persistence baseline's start (h bars before the first as_of) to the last
        # target: a generous bound by time, the calendar decides the bars.
        first = min(r[1] for r in raw)
        span = max(r[2] - r[1] for r in raw)
        window = {"first": first - 2 * span - 7 * 86400, "last": max(r[2] for r in raw)}
        async with db.read.connect() as conn:
            bars = (await conn.execute(_CLOSES, {**params, **window})).all()
    # A forecast is pending while its target bar has not closed: after the symbol's last
    # stored bar (index 0: a symbol the model does not list, never scored).
    newest = [-1] + [last_close.get(s, -1) for s in symbols]
    # Milliseconds of numpy for a long record, but off the event loop all the same, so the
    # service's other calls are not held up meanwhile.
    return await asyncio.to_thread(
        _report, raw, bars, newest, runs, calendar, resolution, len(symbols), cost_bps
    )


def _lookup(bars: np.ndarray, symbol: Ints, times: Ints) -> np.ndarray:
    """The close of `symbol`'s bar closing exactly at each time; NaN where there is none.
    `bars`: rows (symbol index, close time, close), sorted."""
    out = np.full(len(times), np.nan)
    if not len(bars) or not len(times):
        return out
    key = bars[:, 0].astype(np.int64) * (1 << 40) + bars[:, 1].astype(np.int64)
    wanted = symbol * (1 << 40) + times
    i = np.minimum(np.searchsorted(key, wanted), len(key) - 1)
    found = key[i] == wanted
    out[found] = bars[i[found], 2]
    return out


def _score(
    raw: Sequence[Sequence[Any]],
    bars: Sequence[Sequence[Any]],
    newest: list[int],
    calendar: calendars.Slots,
    resolution: str,
) -> _Rows:
    n = len(raw)
    # float64 holds the epoch seconds exactly; None becomes NaN. Plain tuples: numpy reads
    # them twenty times faster than result rows.
    table = np.array([tuple(r) for r in raw], dtype=np.float64).reshape(n, 7)
    closes = np.array([tuple(b) for b in bars], dtype=np.float64).reshape(len(bars), 3)
    symbol1 = np.nan_to_num(table[:, 6]).astype(np.int64)  # 1-based, 0: not listed
    recorded_as_of = table[:, 1].astype(np.int64)
    recorded_target = table[:, 2].astype(np.int64)
    every = calendar.all_slots(resolution)
    # The calendar's last slots at or before as_of and target (themselves when on it).
    i0 = np.searchsorted(every, recorded_as_of, side="right") - 1
    i1 = np.searchsorted(every, recorded_target, side="right") - 1
    valid = (i0 >= 0) & (i1 > i0) & (symbol1 > 0)
    i0c, i1c = np.clip(i0, 0, len(every) - 1), np.clip(i1, 0, len(every) - 1)
    start, end = every[i0c], every[i1c]
    horizon = np.maximum(i1c - i0c, 1)
    before = every[np.clip(i0c - horizon, 0, len(every) - 1)]
    c0 = _lookup(closes, symbol1, start)
    c1 = _lookup(closes, symbol1, end)
    cp = _lookup(closes, symbol1, before)
    cp[i0c - horizon < 0] = np.nan
    realized = np.where(valid, c1 / c0 - 1.0, np.nan)
    return _Rows(
        version=table[:, 0].astype(np.int64),
        as_of=start,
        target=end,
        horizon=horizon,
        symbol=symbol1 - 1,
        position=table[:, 3].astype(np.int64),
        predicted=table[:, 4],
        probability=table[:, 5],
        realized=realized,
        last_move=c0 / cp - 1.0,
        pending=table[:, 2] > np.array(newest, dtype=np.float64)[symbol1],
    )


def _report(
    raw: Sequence[Sequence[Any]],
    bars: Sequence[Sequence[Any]],
    newest: list[int],
    runs: Sequence[Sequence[Any]],
    calendar: calendars.Slots,
    resolution: str,
    n_symbols: int,
    cost_bps: float,
) -> Report:
    rows = _score(raw, bars, newest, calendar, resolution)
    cost = cost_bps / 10_000
    per_year = calendar.periods_per_year(resolution)
    run_versions = np.array([r[0] for r in runs], dtype=np.int64)
    run_slots = np.array([r[1] for r in runs], dtype=np.int64)
    run_outcomes = [r[2] for r in runs]
    numbers = sorted(set(run_versions.tolist()) | set(rows.version.tolist()))
    args = (calendar, resolution, n_symbols, cost, per_year)
    versions = []
    for number in numbers:
        in_version = run_versions == number
        coverage = _coverage(
            calendar,
            resolution,
            run_slots[in_version],
            [o for o, keep in zip(run_outcomes, in_version, strict=True) if keep],
        )
        versions.append(_performance(number, rows, rows.version == number, coverage, *args))
    everything = np.ones(len(rows.version), dtype=bool)
    overall_coverage = _coverage(calendar, resolution, run_slots, run_outcomes)
    overall = _performance(0, rows, everything, overall_coverage, *args)
    return Report(per_year, overall, versions, Conventions(calendar.name, per_year))
