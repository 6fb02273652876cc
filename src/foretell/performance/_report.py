"""A model's performance report: recorded forecasts joined with realized bars in one query,
measured per version and overall for the model and the naive baselines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import text

from foretell.db import Database
from foretell.performance._measures import Measures, Scored, measure
from foretell.resolutions import STEP_S

YEAR_S = 365 * 86400

# Every column is a number (NULL: missing), so the rows become one numpy array; the symbol
# comes as its 1-based position in the model's symbols.
# The realized return of a forecast is close(bar closing at target) / close(bar closing at
# as_of) - 1; the persistence baseline's last move is close(bar closing at as_of) /
# close(bar closing one horizon before as_of) - 1. Bars are keyed by open time, which is
# close time minus one step: the joins use the primary key.
_FORECASTS = text("""
SELECT v.number, extract(epoch FROM f.as_of)::bigint, extract(epoch FROM f.target_time)::bigint,
       CASE f.direction WHEN 'up' THEN 1 WHEN 'down' THEN -1 ELSE 0 END,
       f.predicted_return, f.probability, b0.close, b1.close, bp.close,
       array_position(CAST(:symbols AS text[]), f.symbol)
FROM forecasts f
JOIN versions v ON v.id = f.version_id
LEFT JOIN bars b0 ON b0.symbol = f.symbol AND b0.resolution = :resolution
     AND b0.open_time = f.as_of - CAST(:step AS interval)
LEFT JOIN bars b1 ON b1.symbol = f.symbol AND b1.resolution = :resolution
     AND b1.open_time = f.target_time - CAST(:step AS interval)
LEFT JOIN bars bp ON bp.symbol = f.symbol AND bp.resolution = :resolution
     AND bp.open_time = f.as_of - (f.target_time - f.as_of) - CAST(:step AS interval)
WHERE f.model_id = :model_id AND f.kind = :kind
ORDER BY f.as_of, f.symbol, f.target_time
""")
_LAST_CLOSE = text("""
SELECT symbol, extract(epoch FROM max(close_time))::bigint FROM bars
WHERE resolution = :resolution AND symbol = ANY(:symbols) GROUP BY symbol
""")
_RUNS = text("""
SELECT v.number, extract(epoch FROM r.as_of)::bigint, r.outcome
FROM runs r JOIN versions v ON v.id = r.version_id
WHERE r.model_id = :model_id AND r.kind = :kind
""")
_REVISION = text("""
SELECT (SELECT revision FROM model_revisions WHERE model_id = :model_id),
       (SELECT revision FROM data_revisions WHERE name = 'bars')
""")


@dataclass(frozen=True)
class Coverage:
    due_slots: int
    runs: int
    runs_ok: int
    runs_failed: int
    runs_missed: int
    slots_without_run: int
    ratio: float


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


async def revision(db: Database, model_id: uuid.UUID) -> tuple[int, int]:
    """What a report depends on, as counters the database bumps on every change (triggers of
    migration 0007): the model's runs and forecasts, and the bars."""
    async with db.read.connect() as conn:
        row = (await conn.execute(_REVISION, {"model_id": model_id})).one()
    return int(row[0] or 0), int(row[1] or 0)


def _coverage(slots: np.ndarray, outcomes: list[str], step: int) -> Coverage:
    if not len(slots):
        return Coverage(0, 0, 0, 0, 0, 0, 0.0)
    due = int((slots.max() - slots.min()) // step) + 1
    ok = outcomes.count("ok")
    missed = outcomes.count("missed")
    distinct = len(np.unique(slots))
    return Coverage(
        due_slots=due,
        runs=len(outcomes),
        runs_ok=ok,
        runs_failed=len(outcomes) - ok - missed,
        runs_missed=missed,
        slots_without_run=due - distinct,
        ratio=ok / due,
    )


@dataclass(frozen=True)
class _Rows:
    """All forecasts of the model as columns (sorted by as_of)."""

    version: np.ndarray
    as_of: np.ndarray
    target: np.ndarray
    position: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray
    close0: np.ndarray
    close1: np.ndarray
    close_prev: np.ndarray
    pending: np.ndarray


def _performance(
    number: int,
    rows: _Rows,
    mask: np.ndarray,
    coverage: Coverage,
    step: int,
    cost: float,
    per_year: float,
) -> Performance:
    scored = mask & ~np.isnan(rows.close0) & ~np.isnan(rows.close1)
    pending = mask & ~scored & rows.pending
    counts = Counts(
        total=int(mask.sum()),
        scored=int(scored.sum()),
        pending=int(pending.sum()),
        unscorable=int((mask & ~scored & ~pending).sum()),
    )
    as_of, target = rows.as_of[scored], rows.target[scored]
    horizon = np.maximum((target - as_of) // step, 1)
    c0 = rows.close0[scored]
    realized = rows.close1[scored] / c0 - 1.0
    last_move = c0 / rows.close_prev[scored] - 1.0  # NaN where the earlier bar is missing
    nan = np.full(len(as_of), np.nan)

    def scored_by(position: np.ndarray, predicted: np.ndarray, probability: np.ndarray) -> Measures:
        forecasts = Scored(as_of, target, horizon, position, predicted, probability, realized)
        return measure(forecasts, cost=cost, periods_per_year=per_year)

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
    step = STEP_S[resolution]
    params = {
        "model_id": model_id,
        "kind": kind,
        "resolution": resolution,
        "symbols": symbols,
        "step": timedelta(seconds=step),
    }
    async with db.read.connect() as conn:
        raw = (await conn.execute(_FORECASTS, params)).all()
        closes = await conn.execute(_LAST_CLOSE, params)
        last_close: dict[str, int] = {row[0]: row[1] for row in closes.all()}
        runs = (await conn.execute(_RUNS, {"model_id": model_id, "kind": kind})).all()
    # A forecast is pending while its target bar has not closed: after the symbol's last
    # stored bar (index 0: a symbol the model does not list, never scored).
    newest = [-1] + [last_close.get(s, -1) for s in symbols]
    # Milliseconds of numpy for a long record, but off the event loop all the same, so the
    # service's other calls are not held up meanwhile.
    return await asyncio.to_thread(_report, raw, newest, runs, step, cost_bps)


def _report(
    raw: Sequence[Sequence[Any]],
    newest: list[int],
    runs: Sequence[Sequence[Any]],
    step: int,
    cost_bps: float,
) -> Report:
    n = len(raw)
    # float64 holds the epoch seconds exactly; None becomes NaN. Plain tuples: numpy reads
    # them twenty times faster than result rows.
    table = np.array([tuple(r) for r in raw], dtype=np.float64).reshape(n, 10)
    symbol = np.nan_to_num(table[:, 9]).astype(np.int64)
    rows = _Rows(
        version=table[:, 0].astype(np.int64),
        as_of=table[:, 1].astype(np.int64),
        target=table[:, 2].astype(np.int64),
        position=table[:, 3].astype(np.int64),
        predicted=table[:, 4],
        probability=table[:, 5],
        close0=table[:, 6],
        close1=table[:, 7],
        close_prev=table[:, 8],
        pending=table[:, 2] > np.array(newest, dtype=np.float64)[symbol],
    )
    cost = cost_bps / 10_000
    per_year = YEAR_S / step
    run_versions = np.array([r[0] for r in runs], dtype=np.int64)
    run_slots = np.array([r[1] for r in runs], dtype=np.int64)
    run_outcomes = [r[2] for r in runs]
    numbers = sorted(set(run_versions.tolist()) | set(rows.version.tolist()))
    versions = []
    for number in numbers:
        in_version = run_versions == number
        coverage = _coverage(
            run_slots[in_version],
            [o for o, keep in zip(run_outcomes, in_version, strict=True) if keep],
            step,
        )
        versions.append(
            _performance(number, rows, rows.version == number, coverage, step, cost, per_year)
        )
    overall = _performance(
        0, rows, np.ones(n, dtype=bool), _coverage(run_slots, run_outcomes, step), step, cost,
        per_year,
    )  # fmt: skip
    return Report(per_year, overall, versions)
