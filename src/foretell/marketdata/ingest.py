"""Ingesting bars from the server side (`foretell demo`, later importers): the checks and the
write IngestBars does, without the stream."""

from __future__ import annotations

from datetime import datetime

from foretell.db import Database
from foretell.errors import FieldViolation, InvalidArgument
from foretell.marketdata import queries, validate
from foretell.marketdata.queries import BarColumns, IngestResult
from foretell.resolutions import STEP_S


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
    v = validate.Problems()
    validate.symbol(v, "symbol", symbol)
    if resolution not in STEP_S:
        v.add("resolution", f"one of {', '.join(STEP_S)}")
    v.raise_if_any()
    if not bars:
        raise InvalidArgument([FieldViolation("bars", "no bars")])
    header = validate.Header(symbol, resolution, upsert)
    validate.check_bars(v, "bars.", bars, header, after=None, now=int(now.timestamp()))
    v.raise_if_any()
    return await queries.write_bars(db, symbol, resolution, bars, upsert=upsert)
