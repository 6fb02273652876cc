"""`foretell demo`: a platform with something to look at. For now, the real market data the
`backtesting` package ships (hourly EUR/USD, daily Alphabet), loaded with the same checks and
the same store function as DataFeedService.IngestBars; the demo provider, its model and a
replay of the history build on it."""

from __future__ import annotations

import asyncio
import dataclasses
from array import array
from datetime import UTC, datetime
from typing import Any

from foretell.db import Database, connect
from foretell.services.datafeed import BarColumns, IngestResult, ingest_bars


@dataclasses.dataclass(frozen=True)
class DemoSeries:
    symbol: str
    resolution: str
    # The DataFrame's name in `backtesting.test`.
    frame: str


DEMO_SERIES = (
    # Hourly EUR/USD, April 2017 to February 2018: 5,000 bars.
    DemoSeries("EURUSD", "1h", "EURUSD"),
    # Daily NASDAQ:GOOG, August 2004 to March 2013: 2,148 bars.
    DemoSeries("GOOG", "1d", "GOOG"),
)


class DemoDataMissing(RuntimeError):
    """The `backtesting` package (in the `server` extra) is not installed."""


def frame_bars(frame: Any) -> BarColumns:
    """A pandas OHLCV DataFrame (Open, High, Low, Close, Volume; a DatetimeIndex) as columns.
    An index without a time zone is taken as UTC."""
    import pandas as pd  # type: ignore[import-untyped]

    index = pd.DatetimeIndex(frame.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    seconds = index.as_unit("s").asi8.tolist()
    o, h, low, c, v = (
        array("d", frame[name].astype("float64").tolist())
        for name in ("Open", "High", "Low", "Close", "Volume")
    )
    return BarColumns(array("q", seconds), o, h, low, c, v)


def demo_bars(series: DemoSeries) -> BarColumns:
    try:
        import backtesting.test as shipped  # type: ignore[import-untyped]
    except ImportError as error:
        raise DemoDataMissing(
            f"the demo data comes from the backtesting package, which is missing ({error}): "
            "pip install 'foretell[server]'"
        ) from None
    return frame_bars(getattr(shipped, series.frame))


async def load_demo_bars(db: Database, *, now: datetime | None = None) -> list[IngestResult]:
    """Loads every DEMO_SERIES, overwriting what differs (upsert): running it again changes
    nothing. Returns what each series' ingest did."""
    results = []
    for series in DEMO_SERIES:
        # Importing pandas and parsing the CSV take a second: not on the event loop.
        bars = await asyncio.to_thread(demo_bars, series)
        results.append(
            await ingest_bars(
                db,
                series.symbol,
                series.resolution,
                bars,
                upsert=True,
                now=now or datetime.now(UTC),
            )
        )
    return results


async def run_demo(database_url: str) -> list[IngestResult]:
    db = connect(database_url, pool_size=1)
    try:
        return await load_demo_bars(db)
    finally:
        await db.close()
