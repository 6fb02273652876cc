"""Ingesting bars from the server side (`foretell demo`, later importers): the checks and the
write IngestBars does, without the stream."""

from __future__ import annotations

from datetime import datetime

from foretell.db import Database
from foretell.errors import FieldViolation, InvalidArgument
from foretell.resolutions import STEP_S
from foretell.services.datafeed import _store, _validate
from foretell.services.datafeed._store import BarColumns, IngestResult


async def ingest_bars(
    db: Database,
    symbol: str,
    resolution: str,
    bars: BarColumns,
    *,
    upsert: bool,
    now: datetime,
) -> IngestResult:
    """Checks every bar as IngestBars does (InvalidArgument listing the problems, fields
    `bars.COLUMN[I]`) and stores them in one transaction with the same store function."""
    v = _validate.Problems()
    _validate.symbol(v, "symbol", symbol)
    if resolution not in STEP_S:
        v.add("resolution", f"one of {', '.join(STEP_S)}")
    v.raise_if_any()
    if not bars:
        raise InvalidArgument([FieldViolation("bars", "no bars")])
    header = _validate.Header(symbol, resolution, upsert)
    _validate.check_bars(v, "bars.", bars, header, after=None, now=int(now.timestamp()))
    v.raise_if_any()
    return await _store.write_bars(db, symbol, resolution, bars, upsert=upsert)
