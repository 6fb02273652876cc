"""Performance measured by the platform: recorded forecasts against realized bars, for the
model and the naive baselines (`compute_report`), cached per process (`PerformanceCache`)."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Hashable

from foretell.db import Database
from foretell.performance._measures import (
    Curve,
    Measures,
    Periods,
    Scored,
    measure,
    spearman,
    wilson,
)
from foretell.performance._report import (
    Conventions,
    Counts,
    Coverage,
    Performance,
    Report,
    compute_report,
    revision,
)

__all__ = [
    "Conventions",
    "Counts",
    "Coverage",
    "Curve",
    "Measures",
    "Performance",
    "PerformanceCache",
    "Periods",
    "Report",
    "Scored",
    "compute_report",
    "measure",
    "revision",
    "spearman",
    "wilson",
]


class PerformanceCache:
    """Reports by (model, kind, cost), each kept with the revision counters it was computed
    at and served only while they are unchanged. The counters are read before computing: a
    change that lands during the computation leaves an older revision with the entry, so the
    next call recomputes (never a stale answer, at worst one computation too many)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, tuple[tuple[int, int], Report]] = OrderedDict()

    async def report(
        self,
        db: Database,
        model_id: uuid.UUID,
        resolution: str,
        symbols: list[str],
        kind: str,
        cost_bps: float,
    ) -> Report:
        key = (model_id, kind, cost_bps)
        current = await revision(db, model_id)
        cached = self._entries.get(key)
        if cached is not None and cached[0] == current:
            self._entries.move_to_end(key)
            return cached[1]
        report = await compute_report(db, model_id, resolution, symbols, kind, cost_bps)
        self._entries[key] = (current, report)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return report
