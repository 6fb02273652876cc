from __future__ import annotations

import bisect
import sys
from array import array
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from grpc import aio

from foretell import resolutions
from foretell.clock import timestamp as _ts
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as pb_grpc
from foretell.errors import AlreadyExists, FieldViolation, InvalidArgument
from foretell.runtime.resources import Resources
from foretell.services.datafeed import _store, _validate
from foretell.services.datafeed._store import BarColumns, IngestResult

if TYPE_CHECKING:
    # Generic only in the type stubs.
    Context = aio.ServicerContext[Any, Any]

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


class DataFeedServicer(pb_grpc.DataFeedServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self._res = resources

    async def ListSymbols(
        self, request: pb.ListSymbolsRequest, context: Context
    ) -> pb.ListSymbolsResponse:
        symbols: dict[str, pb.SymbolInfo] = {}
        for s in await _store.list_series(self._res.db):
            info = symbols.setdefault(s.symbol, pb.SymbolInfo(symbol=s.symbol))
            info.series.append(
                pb.Series(
                    resolution=resolutions.TO_ENUM[s.resolution],
                    bar_count=s.bar_count,
                    first_open_time=_ts(s.first_open_time),
                    last_open_time=_ts(s.last_open_time),
                )
            )
        return pb.ListSymbolsResponse(symbols=list(symbols.values()))

    async def GetBars(
        self, request: pb.GetBarsRequest, context: Context
    ) -> AsyncIterator[pb.GetBarsResponse]:
        query = _validate.get_bars(request)
        async for bars, last in _store.read_bars(self._res.db, query, page_size(request)):
            yield bars_response(request, bars, last)

    async def IngestBars(
        self, request_iterator: AsyncIterator[pb.IngestBarsRequest], context: Context
    ) -> pb.IngestBarsResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument(
                [FieldViolation("header", "the first message must be the header")]
            )
        header = _validate.ingest_header(first.header)
        received, ends = await _receive(request_iterator, header, self._res.clock())
        try:
            result = await _store.write_bars(
                self._res.db, header.symbol, header.resolution, received, upsert=header.upsert
            )
        except _store.BarExists as error:
            batch = bisect.bisect_right(ends, error.index)
            index = error.index - (ends[batch - 1] if batch else 0)
            raise AlreadyExists(
                error.message, field=f"batches[{batch}].open_times_unix[{index}]"
            ) from None
        return ingest_response(result)


async def _receive(
    request_iterator: AsyncIterator[pb.IngestBarsRequest],
    header: _validate.Header,
    now: datetime,
) -> tuple[BarColumns, list[int]]:
    """Every batch, checked as it arrives; and where each batch ends in the whole."""
    received = BarColumns.empty()
    ends: list[int] = []
    now_s = int(now.timestamp())
    async for message in request_iterator:
        index = len(ends)
        if not message.HasField("bars"):
            raise InvalidArgument(
                [FieldViolation(f"batches[{index}]", "only the first message may be a header")]
            )
        after = received.open_times[-1] if received else None
        batch = _validate.batch(index, message.bars, header, after=after, now=now_s)
        if len(received) + len(batch) > _validate.MAX_INGEST:
            raise InvalidArgument(
                [
                    FieldViolation(
                        f"batches[{index}]",
                        f"at most {_validate.MAX_INGEST:,} bars per ingest: split the data",
                    )
                ]
            )
        received.extend(batch)
        ends.append(len(received))
    if not received:
        raise InvalidArgument([FieldViolation("batches", "no bars: send them after the header")])
    return received, ends


def add_to_server(server: aio.Server, resources: Resources) -> None:
    pb_grpc.add_DataFeedServiceServicer_to_server(DataFeedServicer(resources), server)
