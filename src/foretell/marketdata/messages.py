"""Bars and ingest results as DataFeed messages: what the DataFeed service and the run-scoped
server in the jail both send."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Any

from foretell import resolutions
from foretell.clock import timestamp as _ts
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.marketdata.corrections import BarValues, Correction
from foretell.marketdata.queries import BarColumns, IngestResult

# Bars per GetBars message: 48 KB of packed columns, well under gRPC's 4 MiB message limit,
# and large enough that per-message costs vanish.
PAGE_BARS = 1000
# Bars per message when the client asks for `packed` columns: 480 KB, still far under the
# limit. Raw columns cost nothing per value to encode or decode, so what is left per message
# (a gRPC frame, a Python object per column) is worth spreading over more bars
# (bench/datafeed.py).
PACKED_PAGE_BARS = 10_000
_BIG_ENDIAN = sys.byteorder == "big"


def bars_pb(bars: BarColumns) -> pb.Bars:
    return pb.Bars(
        open_times_unix=bars.open_times,
        opens=bars.opens,
        highs=bars.highs,
        lows=bars.lows,
        closes=bars.closes,
        volumes=bars.volumes,
    )


def _little_endian(typecode: str, column: Sequence[Any]) -> bytes:
    values = column if isinstance(column, array) and column.typecode == typecode else None
    if values is None or _BIG_ENDIAN:
        values = array(typecode, column)
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tobytes()


def packed_bars_pb(bars: BarColumns) -> pb.PackedBars:
    return pb.PackedBars(
        open_times_unix=_little_endian("q", bars.open_times),
        opens=_little_endian("d", bars.opens),
        highs=_little_endian("d", bars.highs),
        lows=_little_endian("d", bars.lows),
        closes=_little_endian("d", bars.closes),
        volumes=_little_endian("d", bars.volumes),
    )


def page_size(request: pb.GetBarsRequest) -> int:
    return PACKED_PAGE_BARS if request.packed else PAGE_BARS


def bars_response(request: pb.GetBarsRequest, bars: BarColumns, last: bool) -> pb.GetBarsResponse:
    """One GetBars message, in the encoding the request asked for."""
    if request.packed:
        return pb.GetBarsResponse(packed_bars=packed_bars_pb(bars), last=last)
    return pb.GetBarsResponse(bars=bars_pb(bars), last=last)


def ingest_response(result: IngestResult) -> pb.IngestBarsResponse:
    return pb.IngestBarsResponse(
        symbol=result.symbol,
        resolution=resolutions.TO_ENUM[result.resolution],
        received=result.received,
        inserted=result.inserted,
        updated=result.updated,
        unchanged=result.unchanged,
        first_open_time=_ts(result.first_open_time),
        last_open_time=_ts(result.last_open_time),
    )


def _values_pb(values: BarValues) -> pb.BarValues:
    return pb.BarValues(**values.as_dict())


def correction_response(done: Correction) -> pb.CorrectBarResponse:
    return pb.CorrectBarResponse(
        id=done.id,
        symbol=done.symbol,
        resolution=resolutions.TO_ENUM[done.resolution],
        open_time=_ts(done.open_time),
        old_values=_values_pb(done.old),
        new_values=_values_pb(done.new),
        reason=done.reason,
        corrected_by=str(done.corrected_by),
        correct_time=_ts(done.corrected_at),
    )
