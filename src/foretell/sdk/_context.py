"""What `predict(ctx)` gets and returns. Runs inside the jail: only the standard library,
grpcio, protobuf and the generated foretell protos are guaranteed; numpy and pandas are used
when the model's image installs them."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from foretell.datafeed.v1 import datafeed_service_pb2 as feed_pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as feed_grpc
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.resolutions import STEP_S, TO_ENUM

_DIRECTIONS: dict[object, fc_pb.Direction.ValueType] = {
    1: fc_pb.DIRECTION_UP,
    -1: fc_pb.DIRECTION_DOWN,
    0: fc_pb.DIRECTION_FLAT,
    "up": fc_pb.DIRECTION_UP,
    "down": fc_pb.DIRECTION_DOWN,
    "flat": fc_pb.DIRECTION_FLAT,
}
# Seconds a single data call may take: the run's wall clock bounds the whole run anyway.
_CALL_TIMEOUT_S = 30.0


class DataError(Exception):
    """The platform refused a data request (another symbol, bars after as_of, ...)."""


@dataclass(frozen=True)
class Forecast:
    """One forecast: `direction` is +1/-1/0 or "up"/"down"/"flat"; `probability` is the
    probability that the direction is right, in [0, 1]."""

    symbol: str
    target_time: datetime
    direction: int | str
    predicted_return: float | None = None
    probability: float | None = None


@dataclass(frozen=True)
class Bars:
    """Bars as columns, oldest first: numpy arrays when numpy is installed (`time` as
    datetime64[s] open times, UTC), else lists (`time` as datetimes)."""

    time: Any
    open: Any
    high: Any
    low: Any
    close: Any
    volume: Any

    def __len__(self) -> int:
        return len(self.close)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


class Context:
    """The run as the model sees it."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        as_of: datetime,
        symbols: Sequence[str],
        resolution: str,
        horizon: int,
        lookback: int,
    ) -> None:
        self._feed = feed_grpc.DataFeedServiceStub(channel)
        self.as_of = as_of
        self.symbols = tuple(symbols)
        self.resolution = resolution
        self.horizon = horizon
        self.lookback = lookback
        self.target_time = as_of + timedelta(seconds=horizon * STEP_S[resolution])

    def log(self, message: object) -> None:
        """A line in the run's log (stderr, captured by the platform with a size cap)."""
        print(message, file=sys.stderr, flush=True)

    def _pieces(self, symbol: str, lookback: int | None, end: datetime | None) -> _Pieces:
        """Each column's raw little-endian pages, as the server sent them (`packed`)."""
        request = feed_pb.GetBarsRequest(
            symbol=symbol,
            resolution=TO_ENUM[self.resolution],
            limit=self.lookback if lookback is None else lookback,
            latest=True,
            packed=True,
        )
        if end is not None:
            request.end_time.CopyFrom(_timestamp(end))
        pieces: _Pieces = ([], [], [], [], [], [])
        try:
            for message in self._feed.GetBars(request, timeout=_CALL_TIMEOUT_S):
                p = message.packed_bars
                for column, raw in zip(
                    pieces,
                    (p.open_times_unix, p.opens, p.highs, p.lows, p.closes, p.volumes),
                    strict=True,
                ):
                    column.append(raw)
        except grpc.RpcError as error:
            raise DataError(f"{error.code().name}: {error.details()}") from None
        return pieces

    def bars(
        self, symbol: str, lookback: int | None = None, *, end: datetime | None = None
    ) -> Bars:
        """The last `lookback` bars of `symbol` (default: the manifest's lookback) closed by
        as_of (or opening before `end`, which may not be after as_of)."""
        pieces = self._pieces(symbol, lookback, end)
        np = _numpy()
        if np is None:
            times, o, h, low, c, v = _python_columns(pieces)
            stamps = [datetime.fromtimestamp(t, UTC) for t in times]
            return Bars(stamps, o, h, low, c, v)
        times, o, h, low, c, v = _numpy_columns(np, pieces)
        return Bars(times.view("datetime64[s]"), o, h, low, c, v)

    def frame(self, symbol: str, lookback: int | None = None) -> Any:
        """The bars as a pandas DataFrame indexed by open time (UTC); needs pandas."""
        import numpy
        import pandas  # type: ignore[import-untyped,unused-ignore]

        times, o, h, low, c, v = _numpy_columns(numpy, self._pieces(symbol, lookback, None))
        index = pandas.to_datetime(times, unit="s", utc=True).rename("time")
        return pandas.DataFrame(
            {"open": o, "high": h, "low": low, "close": c, "volume": v}, index=index
        )


# Per column (open times, opens, highs, lows, closes, volumes), its pages of raw bytes.
_Pieces = tuple[list[bytes], list[bytes], list[bytes], list[bytes], list[bytes], list[bytes]]
_TYPECODES = ("q", "d", "d", "d", "d", "d")


def _numpy_columns(np: Any, pieces: _Pieces) -> list[Any]:
    """One native, writable numpy array per column: each page is viewed in place
    (frombuffer) and copied once, into the concatenation."""
    columns = []
    for typecode, pages in zip(_TYPECODES, pieces, strict=True):
        wire = np.dtype("<i8" if typecode == "q" else "<f8")
        parts = [np.frombuffer(page, wire) for page in pages] or [np.empty(0, wire)]
        columns.append(np.concatenate(parts).astype(wire.newbyteorder("="), copy=False))
    return columns


def _python_columns(pieces: _Pieces) -> list[list[Any]]:
    """Without numpy: one list per column (the standard library's array decodes the bytes)."""
    columns = []
    for typecode, pages in zip(_TYPECODES, pieces, strict=True):
        values = array(typecode)
        values.frombytes(b"".join(pages))
        if sys.byteorder == "big":
            values.byteswap()
        columns.append(values.tolist())
    return columns


def _field(item: object, name: str, default: object = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def to_message(index: int, item: object) -> fc_pb.Forecast:
    """A Forecast (or a dict with the same keys) as the protobuf message. Raises TypeError or
    ValueError naming `forecasts[index]` for what cannot be converted at all; the platform
    checks the values."""
    where = f"forecasts[{index}]"
    if not isinstance(item, (Forecast, Mapping)):
        raise TypeError(f"{where}: a foretell.sdk.Forecast or a dict, not {type(item).__name__}")
    symbol = _field(item, "symbol")
    if not isinstance(symbol, str):
        raise TypeError(f"{where}.symbol: a string")
    target = _field(item, "target_time")
    if not isinstance(target, datetime) or target.tzinfo is None:
        raise TypeError(f"{where}.target_time: a timezone-aware datetime (use ctx.target_time)")
    direction = _field(item, "direction")
    key = direction.lower() if isinstance(direction, str) else direction
    if isinstance(key, bool) or key not in _DIRECTIONS:
        raise ValueError(f"{where}.direction: 1, -1, 0, 'up', 'down' or 'flat', not {direction!r}")
    message = fc_pb.Forecast(
        symbol=symbol, target_time=_timestamp(target), direction=_DIRECTIONS[key]
    )
    for name in ("predicted_return", "probability"):
        value = _field(item, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy scalars
            except (TypeError, ValueError):
                raise TypeError(f"{where}.{name}: a number") from None
        setattr(message, name, float(value))
    return message


__all__ = ["Bars", "Context", "DataError", "Forecast", "to_message"]
