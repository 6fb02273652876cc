"""Trading calendars: when each symbol's market is open, and so which bars exist.

The one home of market time. The scheduler asks it which slots of a live model are due (and
which closed-market slots are neither due nor missed), the runs ask it for the target time of
a horizon, performance asks it for the calendar periods of a record and the periods in a year.

Calendars come from `exchange_calendars` (holidays, early closes and daylight saving of the
exchanges, maintained upstream) plus two schedules it does not name as we need them:

- `FX`: the 24/5 currency market, from Sunday 17:00 to Friday 17:00 New York time (the
  convention of the interbank market; it follows New York's daylight saving). No holidays.
- `CRYPTO`: 24/7, always open (exchange_calendars' "24/7").

Every other name is an exchange_calendars code, e.g. `XNYS` (New York Stock Exchange),
`XLON`, `XETR`.

Bars stay on the platform's UTC grid (a 1h bar opens on the hour, 4h at 00, 04, 08, … UTC,
1d at midnight UTC; open times are keyed so in storage and the DataFeed). A calendar decides
which grid bars exist:

- 1h and 4h: the grid bars that overlap a session [open, close). A bar partly in a session
  (New York opens at 09:30) is a bar; its slot is its grid close.
- 1d: one bar per session, the UTC day of the session's date (open at its midnight UTC), so
  its slot is the midnight UTC after the session's date.

A *slot* is the close of such a bar (seconds since the epoch, UTC). The target time of a
forecast over `h` bars made at slot `as_of` is the close of the h-th bar after `as_of` on the
calendar: it skips nights, weekends and holidays.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import exchange_calendars as xcals  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]
from exchange_calendars.exchange_calendar import HolidayCalendar  # type: ignore[import-untyped]

from foretell.resolutions import STEP_S

Ints = npt.NDArray[np.int64]

FX = "FX"
CRYPTO = "CRYPTO"
EQUITY_DEFAULT = "XNYS"
_XCALS_CRYPTO = "24/7"
# The range every calendar is built over: it covers the real bars the platform ships (GOOG
# from 2004) with room, and ends far enough ahead for any live slot. Fixed, so that two
# processes agree on every calendar.
FIRST_DAY = "2000-01-01"
LAST_DAY = "2045-12-31"
# Periods per year are the mean number of slots in these whole calendar years.
YEARS_FOR_AVERAGE = (2010, 2019)
_DAY = 86400
# Names a calendar may have: upper-case letters, digits and '/', e.g. XNYS, FX, CRYPTO.
NAME = re.compile(r"[A-Z0-9/]{2,16}")
NAME_RULE = "a calendar: FX, CRYPTO or an exchange code such as XNYS (see `calendars.names()`)"

# Currency codes that make a symbol an FX pair by default (metals trade FX hours), and crypto
# assets. Migration 0009 gives symbols stored before it the same defaults with these patterns.
CURRENCIES = (
    "USD|EUR|JPY|GBP|CHF|AUD|NZD|CAD|SEK|NOK|DKK|PLN|HUF|CZK|TRY|ZAR|MXN|SGD|HKD|CNH|CNY|INR|"
    "KRW|BRL|RUB|ILS|THB|XAU|XAG|XPT|XPD"
)
CRYPTO_ASSETS = "BTC|ETH|SOL|XRP|ADA|DOGE|LTC|DOT|BNB|AVAX|LINK|XBT"
FX_PATTERN = f"^({CURRENCIES})[_.-]?({CURRENCIES})([^A-Z]|$)"
CRYPTO_PATTERN = f"^({CRYPTO_ASSETS})[_.-]?[A-Z]"


class UnknownCalendar(ValueError):
    """A name that is not a calendar."""


class _FXCalendar(xcals.ExchangeCalendar):  # type: ignore[misc]
    """The 24/5 currency market: each session opens at 17:00 New York the day before its date
    and closes at 17:00 New York on its date, Monday to Friday."""

    name = FX
    tz = ZoneInfo("America/New_York")
    open_times = ((None, dt.time(17)),)
    close_times = ((None, dt.time(17)),)
    weekmask = "1111100"

    @property
    def open_offset(self) -> int:
        return -1

    @property
    def regular_holidays(self) -> HolidayCalendar:
        return HolidayCalendar([])


def names() -> list[str]:
    """Every calendar name accepted, sorted."""
    exchanges = {n for n in xcals.get_calendar_names(include_aliases=False) if NAME.fullmatch(n)}
    return sorted(exchanges | {FX, CRYPTO})


def default_for(symbol: str) -> str:
    """The calendar a symbol gets when its first bars arrive, by the shape of its name: a
    crypto asset quoted in something (BTCUSD, ETH-USD, SOLUSDT) is CRYPTO, a pair of currency
    codes (EURUSD, EUR_USD, EURUSD-X) is FX, anything else an equity on the New York Stock
    Exchange. An admin may set another."""
    if re.match(CRYPTO_PATTERN, symbol):
        return CRYPTO
    if re.match(FX_PATTERN, symbol):
        return FX
    return EQUITY_DEFAULT


@functools.cache
def get(name: str) -> MarketCalendar:
    """The calendar called `name` (built once per process), or UnknownCalendar."""
    with warnings.catch_warnings():
        # exchange_calendars 4.13 reads `Series.values` of zoned times, which pandas 3.1
        # deprecates; the values it gets are still the UTC instants it wants.
        warnings.filterwarnings("ignore", "Series.values returning an ndarray", Warning)
        return _build(name)


def warm(names_: Iterable[str]) -> None:
    """Builds the named calendars and their slots at every resolution now (unknown names
    are skipped), so that later questions answer at once."""
    for name in names_:
        try:
            calendar = get(name)
        except UnknownCalendar:
            continue
        for resolution in STEP_S:
            calendar.all_slots(resolution)


def _build(name: str) -> MarketCalendar:
    if name == FX:
        cal = _FXCalendar(start=FIRST_DAY, end=LAST_DAY)
    else:
        code = _XCALS_CRYPTO if name == CRYPTO else name
        if not NAME.fullmatch(name) and name != _XCALS_CRYPTO:
            raise UnknownCalendar(f"{name!r} is not {NAME_RULE}")
        try:
            cal = xcals.get_calendar(code, start=FIRST_DAY, end=LAST_DAY)
        except xcals.errors.InvalidCalendarName:
            raise UnknownCalendar(f"{name!r} is not {NAME_RULE}") from None
    return MarketCalendar(name, cal)


def _epoch(values: pd.Series[pd.Timestamp]) -> Ints:
    # Naive UTC first: numpy reads that directly (a zoned column goes through objects).
    naive = values.dt.tz_convert(None).to_numpy()
    return np.asarray(naive.astype("datetime64[s]").astype(np.int64), dtype=np.int64)


@dataclass(frozen=True)
class _Sessions:
    dates: Ints  # the session's date, as midnight UTC, seconds since the epoch
    opens: Ints
    closes: Ints


def _year_bounds() -> tuple[int, int, int]:
    first, last = YEARS_FOR_AVERAGE
    start = int(dt.datetime(first, 1, 1, tzinfo=dt.UTC).timestamp())
    end = int(dt.datetime(last + 1, 1, 1, tzinfo=dt.UTC).timestamp())
    return start, end, last - first + 1


class Slots:
    """The questions asked of a calendar, answered from its slots at each resolution (all
    times are seconds since the epoch, UTC)."""

    name: str

    def all_slots(self, resolution: str) -> Ints:
        """Every slot of the calendar's range at `resolution`, increasing."""
        raise NotImplementedError

    def slots(self, resolution: str, after: int, until: int) -> Ints:
        """Slots in (after, until]."""
        every = self.all_slots(resolution)
        lo = np.searchsorted(every, after, side="right")
        hi = np.searchsorted(every, until, side="right")
        return every[lo:hi]

    def is_slot(self, resolution: str, t: int) -> bool:
        every = self.all_slots(resolution)
        i = int(np.searchsorted(every, t))
        return i < len(every) and int(every[i]) == t

    def latest_slot(self, resolution: str, now: int) -> int | None:
        """The latest slot at or before `now` (its bar has closed), or None."""
        every = self.all_slots(resolution)
        i = int(np.searchsorted(every, now, side="right"))
        return int(every[i - 1]) if i else None

    def shift(self, resolution: str, t: int, bars: int) -> int | None:
        """The slot `bars` bars after (negative: before) the latest slot at or before `t`,
        or None outside the calendar's range."""
        every = self.all_slots(resolution)
        i = int(np.searchsorted(every, t, side="right")) - 1 + bars
        if not 0 <= i < len(every):
            return None
        return int(every[i])

    def target_time(self, resolution: str, as_of: int, horizon: int) -> int:
        """The close of the `horizon`-th bar after the slot `as_of` (horizon >= 1): the
        target time of a forecast over `horizon` bars."""
        if horizon < 1:
            raise ValueError("a horizon is at least one bar")
        found = self.shift(resolution, as_of, horizon)
        if found is None:
            raise ValueError(f"{as_of} plus {horizon} bars is past the {self.name} calendar")
        return found

    def bars_between(self, resolution: str, start: int, end: int) -> int:
        """How many slots lie in (start, end]: the horizon, in bars, from start to end."""
        every = self.all_slots(resolution)
        right = np.searchsorted(every, end, side="right")
        return int(right - np.searchsorted(every, start, side="right"))

    def periods_per_year(self, resolution: str) -> float:
        """The mean number of slots a year at `resolution` over the whole years
        YEARS_FOR_AVERAGE: what Sharpe and Sortino are annualised with."""
        start, end, years = _year_bounds()
        return len(self.slots(resolution, start, end)) / years


class MarketCalendar(Slots):
    """One calendar's sessions and the slots they make."""

    def __init__(self, name: str, calendar: xcals.ExchangeCalendar) -> None:
        self.name = name
        schedule = calendar.schedule
        dates = schedule.index.to_numpy(dtype="datetime64[s]").astype(np.int64)
        self._sessions = _Sessions(dates, _epoch(schedule["open"]), _epoch(schedule["close"]))
        self._slots: dict[str, Ints] = {}

    def __repr__(self) -> str:
        return f"MarketCalendar({self.name!r})"

    def all_slots(self, resolution: str) -> Ints:
        found = self._slots.get(resolution)
        if found is None:
            found = self._build(resolution)
            self._slots[resolution] = found
        return found

    def _build(self, resolution: str) -> Ints:
        try:
            step = STEP_S[resolution]
        except KeyError:
            raise ValueError(f"unknown resolution {resolution!r}") from None
        s = self._sessions
        if step == _DAY:
            return s.dates + _DAY
        # Grid bars overlapping [open, close): closes from the first grid point after the open
        # to the first grid point at or after the close.
        first = (s.opens // step + 1) * step
        last = -(-s.closes // step) * step
        counts = (last - first) // step + 1
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(counts) - counts, counts
        )
        slots = np.repeat(first, counts) + offsets * step
        # Sessions follow each other, so the slots are in order; sessions that meet (FX,
        # 24/7) share the grid bar across their boundary: one slot.
        distinct: Ints = slots[np.r_[True, np.diff(slots) > 0]]
        return distinct


class JointCalendar(Slots):
    """The slots on which every one of several calendars has a bar: a model whose symbols
    trade on different calendars runs when all its markets have a bar closing."""

    def __init__(self, names_: Iterable[str]) -> None:
        self.names = tuple(sorted(set(names_)))
        if not self.names:
            raise ValueError("no calendars")
        self.name = "+".join(self.names)

    def __repr__(self) -> str:
        return f"JointCalendar({self.names!r})"

    def all_slots(self, resolution: str) -> Ints:
        return _joint_all(self.names, resolution)


def joint(names_: Iterable[str]) -> Slots:
    """One calendar for several (the single calendar itself when they are all the same)."""
    unique = sorted(set(names_))
    if len(unique) == 1:
        return get(unique[0])
    return JointCalendar(unique)


@functools.cache
def _joint_all(names_: tuple[str, ...], resolution: str) -> Ints:
    found = get(names_[0]).all_slots(resolution)
    for name in names_[1:]:
        found = np.intersect1d(found, get(name).all_slots(resolution), assume_unique=True)
    return found
