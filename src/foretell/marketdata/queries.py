"""Bars in PostgreSQL. Bars travel as columns here too: writes send six arrays that the
database unnests (no Python object per bar), reads aggregate a page into six arrays."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
from array import array
from collections.abc import AsyncIterator, MutableSequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from foretell import calendars
from foretell.db import Database, notify
from foretell.errors import AlreadyExists, FailedPrecondition, ForetellError, NotFound
from foretell.resolutions import STEP_S

# Seconds in a bar of each resolution; open times are multiples of it (UTC, from the epoch).
# Bars per statement when writing: bounds the size of one statement's parameters.
WRITE_CHUNK = 100_000


@dataclasses.dataclass
class BarColumns:
    """Bars as columns: element i of every sequence is one bar. Open times are seconds since
    the epoch (UTC)."""

    open_times: MutableSequence[int]
    opens: MutableSequence[float]
    highs: MutableSequence[float]
    lows: MutableSequence[float]
    closes: MutableSequence[float]
    volumes: MutableSequence[float]

    @classmethod
    def empty(cls) -> BarColumns:
        # array, not list: a million bars take 48 MB instead of about 200.
        return cls(array("q"), array("d"), array("d"), array("d"), array("d"), array("d"))

    def __len__(self) -> int:
        return len(self.open_times)

    def columns(self) -> tuple[MutableSequence[Any], ...]:
        return (self.open_times, self.opens, self.highs, self.lows, self.closes, self.volumes)

    def extend(self, other: BarColumns) -> None:
        for mine, theirs in zip(self.columns(), other.columns(), strict=True):
            mine.extend(theirs)

    def slice(self, start: int, stop: int) -> BarColumns:
        return BarColumns(*(column[start:stop] for column in self.columns()))


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclasses.dataclass(frozen=True)
class IngestResult:
    symbol: str
    resolution: str
    received: int
    inserted: int
    updated: int
    unchanged: int
    first_open_time: datetime
    last_open_time: datetime


class BarRead(ForetellError):
    """A write that would change a bar a run already read: `index` is the first such bar.
    The service reports it as a field violation."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class BarExists(AlreadyExists):
    """A rejected ingest: `index` is the position of the first bar already stored."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
# A symbol's first bars give it the default calendar of its asset class (an admin may set
# another, `set_calendar`); the scheduler is told of every write when it commits.
_ENSURE_CALENDAR = text("""
INSERT INTO symbol_calendars (symbol, calendar, set_at, set_by)
VALUES (:symbol, :calendar, now(), :by)
ON CONFLICT (symbol) DO NOTHING
""")
_STORED_CALENDAR = text("SELECT calendar FROM symbol_calendars WHERE symbol = :symbol")


_INCOMING = """
WITH incoming AS (
  SELECT to_timestamp(t) AS open_time, o, h, l, c, v
  FROM unnest(CAST(:t AS bigint[]), CAST(:o AS float8[]), CAST(:h AS float8[]),
              CAST(:l AS float8[]), CAST(:c AS float8[]), CAST(:v AS float8[]))
       AS u(t, o, h, l, c, v)
), existing AS (
  SELECT count(*) AS n, extract(epoch FROM min(b.open_time))::bigint AS first
  FROM bars b JOIN incoming i ON b.open_time = i.open_time
  WHERE b.symbol = :symbol AND b.resolution = :resolution
    AND b.open_time BETWEEN to_timestamp(:first) AND to_timestamp(:last)
)
"""
_INSERT = """
INSERT INTO bars (symbol, resolution, open_time, close_time, open, high, low, close, volume)
SELECT :symbol, :resolution, open_time, open_time + make_interval(secs => :step), o, h, l, c, v
FROM incoming
"""
# Every sub-statement of one WITH sees the same snapshot: `existing` counts the bars stored
# before this statement, whatever `written` does. Unchanged bars are not rewritten.
# (S608: the statements are put together from constants; every value is a bound parameter.)
_UPSERT = text(
    _INCOMING  # noqa: S608
    + ", written AS ("
    + _INSERT
    + """
  ON CONFLICT (symbol, resolution, open_time) DO UPDATE
  SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
      volume = EXCLUDED.volume
  WHERE (bars.open, bars.high, bars.low, bars.close, bars.volume)
    IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)
  RETURNING 1
)
SELECT (SELECT n FROM existing), (SELECT count(*) FROM written)
"""
)
_FIND_EXISTING = text(_INCOMING + "SELECT n, first FROM existing")  # noqa: S608
# How far runs have read a symbol: a run reads bars closed at or before its as_of. Runs that
# never started a model (missed, data missing, a platform error) read nothing.
# Per model, the newest such run is found walking runs_model_idx (model_id, as_of) backwards:
# a long record costs one index probe, not a scan.
_READ_UNTIL = text("""
SELECT extract(epoch FROM max(last.as_of))::bigint
FROM models m CROSS JOIN LATERAL (
  SELECT r.as_of FROM runs r
  WHERE r.model_id = m.id AND r.outcome NOT IN ('missed', 'data_missing', 'platform_error')
  ORDER BY r.as_of DESC LIMIT 1
) last
WHERE :symbol = ANY(m.symbols)
""")
# Stored bars a run read that the incoming values would change: the first and how many.
_CHANGES_READ = text(
    _INCOMING
    + """
SELECT extract(epoch FROM min(i.open_time))::bigint, count(*)
FROM incoming i JOIN bars b ON b.open_time = i.open_time
WHERE b.symbol = :symbol AND b.resolution = :resolution
  AND b.open_time BETWEEN to_timestamp(:first) AND to_timestamp(:last)
  AND b.close_time <= to_timestamp(:read_until)
  AND (b.open, b.high, b.low, b.close, b.volume) IS DISTINCT FROM (i.o, i.h, i.l, i.c, i.v)
"""
)
_INSERT_NEW = text(_INCOMING + _INSERT)


def _params(symbol: str, resolution: str, bars: BarColumns) -> dict[str, Any]:
    t, o, h, low, c, v = bars.columns()
    return {
        "symbol": symbol,
        "resolution": resolution,
        "step": STEP_S[resolution],
        "first": t[0],
        "last": t[-1],
        "t": t,
        "o": o,
        "h": h,
        "l": low,
        "c": c,
        "v": v,
    }


async def write_bars(
    db: Database,
    symbol: str,
    resolution: str,
    bars: BarColumns,
    *,
    upsert: bool,
    calendar: str = "",
    keep_read: bool = False,
) -> IngestResult:
    """Stores validated bars (open times strictly increasing) in one transaction. With
    `upsert`, stored bars take the new values; without, any stored bar refuses the whole
    write with BarExists naming the first one. A symbol's first bars give it `calendar` (a
    checked name), or by default the one of its asset class; a `calendar` other than the
    stored one refuses the write (FailedPrecondition). With `keep_read`, a write that would
    change a bar a recorded run read refuses the whole write (BarRead): such a bar changes
    only by a correction (`corrections.correct_bar`)."""
    assert len(bars), "no bars to write"
    inserted = updated = 0
    chunks = [bars.slice(i, i + WRITE_CHUNK) for i in range(0, len(bars), WRITE_CHUNK)]
    try:
        async with db.session.begin() as session:
            # Ingests of one series take turns: the counts (and a REJECT's check) assume that
            # nobody else writes the same bars between the check and the write.
            await session.execute(_LOCK, {"key": f"foretell:bars:{symbol}:{resolution}"})
            read_until = None
            if upsert and keep_read:
                read_until = await session.scalar(_READ_UNTIL, {"symbol": symbol})
            for chunk in chunks:
                params = _params(symbol, resolution, chunk)
                if read_until is not None:
                    await _keep_read(session, params, bars, int(read_until))
                if upsert:
                    row = (await session.execute(_UPSERT, params)).one()
                    existing, written = int(row[0]), int(row[1])
                    inserted += len(chunk) - existing
                    updated += written - (len(chunk) - existing)
                    continue
                found = (await session.execute(_FIND_EXISTING, params)).one()
                if found[0]:
                    raise _exists(symbol, resolution, bars, int(found[0]), int(found[1]))
                await session.execute(_INSERT_NEW, params)
                inserted += len(chunk)
            chosen = calendar or calendars.default_for(symbol)
            by = "ingest" if calendar else "default"
            params = {"symbol": symbol, "calendar": chosen, "by": by}
            await session.execute(_ENSURE_CALENDAR, params)
            stored = await session.scalar(_STORED_CALENDAR, {"symbol": symbol})
            if calendar and stored != calendar:
                raise FailedPrecondition(
                    f"{symbol} trades on the {stored} calendar, not {calendar}: nothing was "
                    "written; an admin changes a calendar with SetSymbolCalendar"
                )
            # Delivered on commit: the scheduler runs the slots these bars complete.
            last_close = bars.open_times[-1] + STEP_S[resolution]
            await notify.announce_bars(session, symbol, resolution, last_close)
    except IntegrityError:
        # Only possible if someone wrote these bars outside the lock (e.g. with psql).
        raise AlreadyExists(
            f"some of these {symbol} {resolution} bars were stored meanwhile: nothing was "
            "written; try again"
        ) from None
    return IngestResult(
        symbol=symbol,
        resolution=resolution,
        received=len(bars),
        inserted=inserted,
        updated=updated,
        unchanged=len(bars) - inserted - updated,
        first_open_time=utc(bars.open_times[0]),
        last_open_time=utc(bars.open_times[-1]),
    )


async def _keep_read(
    session: AsyncSession, params: dict[str, Any], bars: BarColumns, read_until: int
) -> None:
    row = (await session.execute(_CHANGES_READ, {**params, "read_until": read_until})).one()
    if not row[1]:
        return
    first, count = int(row[0]), int(row[1])
    others = f" (and {count - 1} more bars sent)" if count > 1 else ""
    raise BarRead(
        f"changes the stored bar at {utc(first):%Y-%m-%dT%H:%M:%SZ}{others}, which runs "
        f"already read (a run read bars up to {utc(read_until):%Y-%m-%dT%H:%M:%SZ}): nothing "
        "was written; an admin changes a read bar with CorrectBar, giving the reason",
        bisect.bisect_left(bars.open_times, first),
    )


def _exists(symbol: str, resolution: str, bars: BarColumns, count: int, first: int) -> BarExists:
    index = bisect.bisect_left(bars.open_times, first)
    others = f" and {count - 1} more of the {len(bars)} sent" if count > 1 else ""
    return BarExists(
        f"{symbol} {resolution} already has a bar opening at "
        f"{utc(first):%Y-%m-%dT%H:%M:%SZ}{others}; nothing was written; to overwrite stored "
        "bars, ingest with CONFLICT_POLICY_UPSERT",
        index,
    )


# --- reads ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SeriesStats:
    symbol: str
    resolution: str
    bar_count: int
    first_open_time: datetime
    last_open_time: datetime


_SERIES = text("""
SELECT symbol, resolution, count(*), min(open_time), max(open_time)
FROM bars GROUP BY symbol, resolution
""")


async def list_series(db: Database) -> list[SeriesStats]:
    """Every (symbol, resolution) with bars, by symbol, then finest resolution first."""
    async with db.read.connect() as conn:
        rows = (await conn.execute(_SERIES)).all()
    series = [SeriesStats(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows]
    return sorted(series, key=lambda s: (s.symbol, STEP_S[s.resolution]))


_PAGE = text("""
SELECT array_agg(extract(epoch FROM open_time)::bigint ORDER BY open_time),
       array_agg(open ORDER BY open_time), array_agg(high ORDER BY open_time),
       array_agg(low ORDER BY open_time), array_agg(close ORDER BY open_time),
       array_agg(volume ORDER BY open_time)
FROM (
  SELECT open_time, open, high, low, close, volume FROM bars
  WHERE symbol = :symbol AND resolution = :resolution
    AND open_time >= to_timestamp(:start) AND open_time < to_timestamp(:end)
  ORDER BY open_time LIMIT :n
) page
""")
# Where the latest `n` bars of a range begin.
_NTH_LATEST = text("""
SELECT extract(epoch FROM open_time)::bigint FROM bars
WHERE symbol = :symbol AND resolution = :resolution
  AND open_time >= to_timestamp(:start) AND open_time < to_timestamp(:end)
ORDER BY open_time DESC OFFSET :skip LIMIT 1
""")
_ANY = text(
    "SELECT EXISTS (SELECT 1 FROM bars WHERE symbol = :symbol AND resolution = :resolution)"
)


@dataclasses.dataclass(frozen=True)
class BarQuery:
    symbol: str
    resolution: str
    # [start, end) in seconds since the epoch.
    start: int
    end: int
    # 0: no limit.
    limit: int = 0
    latest: bool = False


async def _page(db: Database, query: BarQuery, start: int, n: int) -> BarColumns:
    params = {
        "symbol": query.symbol,
        "resolution": query.resolution,
        "start": start,
        "end": query.end,
        "n": n,
    }
    async with db.read.connect() as conn:
        row = (await conn.execute(_PAGE, params)).one()
    if row[0] is None:
        return BarColumns([], [], [], [], [], [])
    return BarColumns(*row)


async def _latest_start(db: Database, query: BarQuery) -> int:
    params = {
        "symbol": query.symbol,
        "resolution": query.resolution,
        "start": query.start,
        "end": query.end,
        "skip": query.limit - 1,
    }
    async with db.read.connect() as conn:
        found = await conn.scalar(_NTH_LATEST, params)
    return query.start if found is None else int(found)


async def read_bars(
    db: Database, query: BarQuery, page_size: int
) -> AsyncIterator[tuple[BarColumns, bool]]:
    """The bars of `query` oldest first, `page_size` at a time, each page with whether it is
    the last. The range yields at least one (maybe empty) page. A series with no bars at all
    is NotFound. Each page is its own statement: no connection or transaction stays open
    while the caller waits on a slow reader."""
    start = await _latest_start(db, query) if query.latest and query.limit else query.start
    remaining = query.limit or None
    first_page = True
    while True:
        n = page_size if remaining is None else min(page_size, remaining)
        # One bar more than the page: whether another page follows, and where it starts.
        bars = await _page(db, query, start, n + 1)
        more = len(bars) > n
        if more:
            start = bars.open_times[n]
            bars = bars.slice(0, n)
        elif first_page and not bars and not await _has_series(db, query):
            raise NotFound(f"no {query.resolution} bars for symbol {query.symbol!r}")
        first_page = False
        if remaining is not None:
            remaining -= len(bars)
            more = more and remaining > 0
        yield bars, not more
        if not more:
            return


async def _has_series(db: Database, query: BarQuery) -> bool:
    async with db.read.connect() as conn:
        found = await conn.scalar(_ANY, {"symbol": query.symbol, "resolution": query.resolution})
    return bool(found)


# --- calendars --------------------------------------------------------------------------------

_CALENDARS = text("SELECT symbol, calendar FROM symbol_calendars WHERE symbol = ANY(:symbols)")
_SET_CALENDAR = text("""
INSERT INTO symbol_calendars (symbol, calendar, set_at, set_by)
VALUES (:symbol, :calendar, :now, :by)
ON CONFLICT (symbol) DO UPDATE
SET calendar = EXCLUDED.calendar, set_at = EXCLUDED.set_at, set_by = EXCLUDED.set_by
WHERE symbol_calendars.calendar IS DISTINCT FROM EXCLUDED.calendar
""")


async def all_calendar_names(db: Database) -> dict[str, str]:
    """Every stored symbol's calendar."""
    async with db.read.connect() as conn:
        rows = (await conn.execute(text("SELECT symbol, calendar FROM symbol_calendars"))).all()
    return {row[0]: row[1] for row in rows}


async def calendar_names(db: Database, symbols: list[str]) -> dict[str, str]:
    """Each symbol's calendar name: the one stored, or its default while it has no bars."""
    async with db.read.connect() as conn:
        rows = (await conn.execute(_CALENDARS, {"symbols": symbols})).all()
    stored: dict[str, str] = {row[0]: row[1] for row in rows}
    return {s: stored.get(s) or calendars.default_for(s) for s in symbols}


async def model_calendar(db: Database, symbols: list[str]) -> calendars.Slots:
    """The calendar of a model forecasting `symbols`: the slots all their calendars share."""
    names = await calendar_names(db, symbols)
    return calendars.joint(names.values())


async def set_calendar(db: Database, symbol: str, name: str, *, by: str, now: datetime) -> bool:
    """An admin's choice of a symbol's calendar; whether it changed. The name must be a
    calendar (`calendars.UnknownCalendar` otherwise). A change invalidates every performance
    report (the data revision moves, migration 0009)."""
    calendars.get(name)
    params = {"symbol": symbol, "calendar": name, "now": now, "by": by}
    async with db.session.begin() as session:
        result = await session.execute(_SET_CALENDAR, params)
    return bool(getattr(result, "rowcount", 0))


_CALENDARS_IN_USE = text("SELECT DISTINCT calendar FROM symbol_calendars")


async def warm_calendars(db: Database) -> list[str]:
    """Builds every calendar in use and the defaults (seconds each, once per process), so
    that no run or scheduler cycle waits for one. Returns their names."""
    async with db.read.connect() as conn:
        used = set((await conn.scalars(_CALENDARS_IN_USE)).all())
    names = sorted(used | {calendars.FX, calendars.CRYPTO, calendars.EQUITY_DEFAULT})
    await asyncio.to_thread(calendars.warm, names)
    return names
