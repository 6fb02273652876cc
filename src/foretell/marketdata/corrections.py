"""Corrections: an admin's change of one stored bar, the only way a bar a run already read
changes. Each is recorded (who, when, which bar, the values before and after, why) in the
append-only `bar_corrections` table; the write to `bars` moves the data revision, so every
performance report that used the bar is recomputed (migration 0009's trigger)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

from sqlalchemy import text

from foretell.db import Database
from foretell.errors import NotFound
from foretell.marketdata.queries import utc

_PRICES = ("open", "high", "low", "close", "volume")
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_OLD = text("""
SELECT open, high, low, close, volume FROM bars
WHERE symbol = :symbol AND resolution = :resolution AND open_time = :open_time
FOR UPDATE
""")
_UPDATE = text("""
UPDATE bars SET open = :open, high = :high, low = :low, close = :close, volume = :volume
WHERE symbol = :symbol AND resolution = :resolution AND open_time = :open_time
""")
_RECORD = text("""
INSERT INTO bar_corrections (symbol, resolution, open_time, old_open, old_high, old_low,
  old_close, old_volume, new_open, new_high, new_low, new_close, new_volume, reason,
  corrected_by, corrected_at)
VALUES (:symbol, :resolution, :open_time, :old_open, :old_high, :old_low, :old_close,
  :old_volume, :open, :high, :low, :close, :volume, :reason, :by, :now)
RETURNING id
""")


@dataclasses.dataclass(frozen=True)
class BarValues:
    open: float
    high: float
    low: float
    close: float
    volume: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {prefix + name: getattr(self, name) for name in _PRICES}


@dataclasses.dataclass(frozen=True)
class Correction:
    id: int
    symbol: str
    resolution: str
    open_time: datetime
    old: BarValues
    new: BarValues
    reason: str
    corrected_by: uuid.UUID
    corrected_at: datetime


async def correct_bar(
    db: Database,
    symbol: str,
    resolution: str,
    open_time: int,
    new: BarValues,
    *,
    reason: str,
    by: uuid.UUID,
    now: datetime,
) -> Correction:
    """Changes one stored bar to `new` (checked values) and records the correction, in one
    transaction. A bar that is not stored is NotFound."""
    at = utc(open_time)
    key = {"symbol": symbol, "resolution": resolution, "open_time": at}
    async with db.session.begin() as session:
        # Taken in turn with ingests of the same series (queries.write_bars takes the same).
        await session.execute(_LOCK, {"key": f"foretell:bars:{symbol}:{resolution}"})
        row = (await session.execute(_OLD, key)).first()
        if row is None:
            raise NotFound(f"{symbol} {resolution} has no bar opening at {at:%Y-%m-%dT%H:%M:%SZ}")
        old = BarValues(*map(float, row))
        await session.execute(_UPDATE, {**key, **new.as_dict()})
        params = {**key, **old.as_dict("old_"), **new.as_dict(), "reason": reason}
        # A correction completes no slot (the bar was stored): the scheduler is not told.
        correction_id = await session.scalar(_RECORD, {**params, "by": by, "now": now})
    assert correction_id is not None
    return Correction(int(correction_id), symbol, resolution, at, old, new, reason, by, now)
