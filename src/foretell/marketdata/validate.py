"""Input rules for DataFeedService requests. A bar that breaks one is never stored: the same
rules are CHECK constraints of the bars table (migration 0003)."""

from __future__ import annotations

import bisect
import dataclasses
import math
from array import array
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from foretell import calendars, resolutions
from foretell.clock import checked_time
from foretell.common.v1 import common_pb2
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.errors import Violations
from foretell.marketdata.corrections import BarValues
from foretell.marketdata.queries import BarColumns, BarQuery
from foretell.resolutions import STEP_S
from foretell.symbols import SYMBOL, SYMBOL_RULE
from foretell.text import check_text

MAX_BATCH = 10_000
MAX_INGEST = 1_000_000
# Market data older or newer than this is a mistake (a date in the wrong unit, most likely).
MIN_TIME = int(datetime(1900, 1, 1, tzinfo=UTC).timestamp())
MAX_TIME = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp())
MAX_REASON = 500


def problems() -> Violations:
    """Violations of an ingest's bars: the count of unlisted ones is reported under `bars`."""
    return Violations(count_field="bars")


def iso(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{seconds} s after the epoch"


def symbol(v: Violations, field: str, value: str) -> str:
    if not value:
        v.add(field, "required")
    elif not SYMBOL.fullmatch(value):
        v.add(field, SYMBOL_RULE)
    return value


def resolution(v: Violations, field: str, value: common_pb2.Resolution.ValueType) -> str:
    text = resolutions.BY_ENUM.get(value)
    if text is None:
        v.add(field, f"required: {resolutions.ENUM_RULE}")
        return ""
    return text


def _time(
    v: Violations,
    request: pb.GetBarsRequest,
    field: Literal["start_time", "end_time"],
    default: int,
) -> int:
    if not request.HasField(field):
        return default
    stamp: Timestamp = getattr(request, field)
    if checked_time(v, field, stamp) is None:
        return default
    # A bar opens on whole seconds: a range bound with nanos starts at the next second.
    seconds = stamp.seconds + (1 if stamp.nanos else 0)
    return min(max(seconds, MIN_TIME), MAX_TIME)


def get_bars(request: pb.GetBarsRequest) -> BarQuery:
    v = Violations()
    name = symbol(v, "symbol", request.symbol)
    res = resolution(v, "resolution", request.resolution)
    start = _time(v, request, "start_time", MIN_TIME)
    end = _time(v, request, "end_time", MAX_TIME)
    if request.HasField("start_time") and request.HasField("end_time") and end <= start:
        v.add("end_time", "must be after start_time (the range is [start_time, end_time))")
    if request.limit < 0:
        v.add("limit", "0 (no limit) or more")
    v.raise_if_any()
    return BarQuery(name, res, start, end, request.limit, request.latest)


@dataclasses.dataclass(frozen=True)
class Header:
    symbol: str
    resolution: str
    upsert: bool
    # A calendar for a symbol's first bars; "" for the stored or default one.
    calendar: str = ""

    @property
    def step(self) -> int:
        return STEP_S[self.resolution]


def ingest_header(header: pb.IngestBarsHeader) -> Header:
    v = Violations()
    name = symbol(v, "header.symbol", header.symbol)
    res = resolution(v, "header.resolution", header.resolution)
    if header.on_conflict not in pb.ConflictPolicy.values():
        v.add("header.on_conflict", "CONFLICT_POLICY_UPSERT or CONFLICT_POLICY_REJECT")
    if header.calendar:
        calendar(v, "header.calendar", header.calendar)
    v.raise_if_any()
    upsert = header.on_conflict == pb.CONFLICT_POLICY_UPSERT
    return Header(name, res, upsert, header.calendar)


def calendar(v: Violations, field: str, value: str) -> str:
    if not value:
        v.add(field, f"required: {calendars.NAME_RULE}")
        return value
    try:
        calendars.get(value)
    except calendars.UnknownCalendar:
        v.add(field, f"{value!r} is not {calendars.NAME_RULE}")
    return value


def set_calendar(request: pb.SetSymbolCalendarRequest) -> tuple[str, str]:
    v = Violations()
    name = symbol(v, "symbol", request.symbol)
    chosen = calendar(v, "calendar", request.calendar)
    v.raise_if_any()
    return name, chosen


_COLUMNS = ("opens", "highs", "lows", "closes", "volumes")


def batch(index: int, bars: pb.Bars, header: Header, *, after: int | None, now: int) -> BarColumns:
    """Batch number `index` of an ingest as columns, or InvalidArgument with every problem
    (fields `batches[index].COLUMN[I]`). `after`: the previous batch's last open time."""
    v = problems()
    prefix = f"batches[{index}]"
    n = len(bars.open_times_unix)
    if not 1 <= n <= MAX_BATCH:
        v.add(f"{prefix}.open_times_unix", f"a batch holds 1 to {MAX_BATCH:,} bars, not {n:,}")
    for name in _COLUMNS:
        count = len(getattr(bars, name))
        if count != n:
            v.add(f"{prefix}.{name}", f"{count:,} values for {n:,} open times")
    v.raise_if_any()
    columns = BarColumns(
        array("q", bars.open_times_unix),
        array("d", bars.opens),
        array("d", bars.highs),
        array("d", bars.lows),
        array("d", bars.closes),
        array("d", bars.volumes),
    )
    check_bars(v, f"{prefix}.", columns, header, after=after, now=now)
    v.raise_if_any()
    return columns


def check_bars(
    v: Violations, prefix: str, bars: BarColumns, header: Header, *, after: int | None, now: int
) -> None:
    """The rules every bar obeys. Descriptions name the bar's open time, so that a problem can
    be found in the source data."""
    step = header.step
    previous = MIN_TIME - 1 if after is None else after
    rows = zip(*bars.columns(), strict=True)
    for i, (t, o, h, low, c, vol) in enumerate(rows):
        # One chained test for a good bar (NaN fails every comparison, infinities the bounds);
        # only a bad one is looked at closely.
        if not (
            previous < t < MAX_TIME
            and t >= MIN_TIME
            and t % step == 0
            and t + step <= now
            and -_INF < low <= o <= h < _INF
            and low <= c <= h
            and 0 <= vol < _INF
        ):
            _describe(v, f"{prefix}{{}}[{i}]", (t, o, h, low, c, vol), previous, header, now)
        previous = t


_INF = math.inf


def _describe(
    v: Violations,
    field: str,
    bar: tuple[int, float, float, float, float, float],
    previous: int,
    header: Header,
    now: int,
) -> None:
    """Every problem of one bad bar; `field` is a format string taking the column's name."""
    t, o, h, low, c, vol = bar
    step, res, at = header.step, header.resolution, iso(t)
    if previous >= MIN_TIME and t <= previous:  # (MIN_TIME - 1 stands for "no bar before")
        v.add(
            field.format("open_times_unix"),
            f"{at} is not after the bar before it ({iso(previous)}): open times must strictly "
            "increase",
        )
    if not MIN_TIME <= t < MAX_TIME:
        v.add(field.format("open_times_unix"), f"{at} is not between 1900 and 2200")
    elif t % step:
        v.add(
            field.format("open_times_unix"),
            f"{at} is not on the {res} grid (a multiple of {step} s since the epoch, UTC)",
        )
    elif t + step > now:
        v.add(
            field.format("open_times_unix"),
            f"the {res} bar at {at} closes at {iso(t + step)}, after now: only closed bars are "
            "data",
        )
    values = (o, h, low, c, vol)
    if not all(map(math.isfinite, values)):
        for name, value in zip(_COLUMNS, values, strict=True):
            if not math.isfinite(value):
                v.add(field.format(name), f"{value} at {at}: must be a finite number")
        return
    if h < max(o, c):
        v.add(field.format("highs"), f"high {h} at {at} is below max(open, close) {max(o, c)}")
    if low > min(o, c):
        v.add(field.format("lows"), f"low {low} at {at} is above min(open, close) {min(o, c)}")
    if vol < 0:
        v.add(field.format("volumes"), f"volume {vol} at {at} is negative")


def off_calendar(
    bars: BarColumns, ends: list[int], header: Header, slots: calendars.Slots
) -> Violations:
    """A violation per bar (fields `batches[B].open_times_unix[I]`) whose close is not a slot
    of the symbol's calendar: a bar of a closed market. `ends`: where each batch ends."""
    v = problems()
    closes = np.asarray(bars.open_times, dtype=np.int64) + header.step
    off = np.flatnonzero(~np.isin(closes, slots.all_slots(header.resolution)))
    for i in off.tolist():
        batch = bisect.bisect_right(ends, i)
        index = i - (ends[batch - 1] if batch else 0)
        t = int(bars.open_times[i])
        v.add(
            f"batches[{batch}].open_times_unix[{index}]",
            f"the {header.resolution} bar at {iso(t)} (closing {iso(t + header.step)}) is not "
            f"a bar of {header.symbol}'s {slots.name} calendar: its market is closed then",
        )
    return v


@dataclasses.dataclass(frozen=True)
class CorrectBar:
    symbol: str
    resolution: str
    open_time: int
    values: BarValues
    reason: str


def correct_bar(request: pb.CorrectBarRequest) -> CorrectBar:
    v = Violations()
    name = symbol(v, "symbol", request.symbol)
    res = resolution(v, "resolution", request.resolution)
    at = 0
    if not request.HasField("open_time"):
        v.add("open_time", "required")
    elif checked_time(v, "open_time", request.open_time) is not None:
        at = request.open_time.seconds
        if not MIN_TIME <= at < MAX_TIME:
            v.add("open_time", f"{iso(at)} is not between 1900 and 2200")
        elif request.open_time.nanos or (res and at % STEP_S[res]):
            v.add("open_time", f"{iso(at)} is not on the {res or 'resolution'}'s grid")
    reason = check_text(v, "reason", request.reason, MAX_REASON)
    values = BarValues(request.open, request.high, request.low, request.close, request.volume)
    o, h, low, c, vol = (values.open, values.high, values.low, values.close, values.volume)
    if not all(map(math.isfinite, (o, h, low, c, vol))):
        v.add("request", "open, high, low, close and volume must be finite numbers")
    else:
        if h < max(o, c):
            v.add("high", f"high {h} is below max(open, close) {max(o, c)}")
        if low > min(o, c):
            v.add("low", f"low {low} is above min(open, close) {min(o, c)}")
        if vol < 0:
            v.add("volume", f"volume {vol} is negative")
    v.raise_if_any()
    return CorrectBar(name, res, at, values, reason)
