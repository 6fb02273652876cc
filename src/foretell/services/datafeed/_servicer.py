from __future__ import annotations

import bisect
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from grpc import aio

from foretell import resolutions
from foretell.clock import timestamp as _ts
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as pb_grpc
from foretell.errors import AlreadyExists, FieldViolation, InvalidArgument
from foretell.marketdata import queries, validate
from foretell.marketdata.messages import bars_response, ingest_response, page_size
from foretell.marketdata.queries import BarColumns
from foretell.runtime.resources import Resources

if TYPE_CHECKING:
    # Generic only in the type stubs.
    Context = aio.ServicerContext[Any, Any]


class DataFeedServicer(pb_grpc.DataFeedServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self._res = resources

    async def ListSymbols(
        self, request: pb.ListSymbolsRequest, context: Context
    ) -> pb.ListSymbolsResponse:
        symbols: dict[str, pb.SymbolInfo] = {}
        for s in await queries.list_series(self._res.db):
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
        query = validate.get_bars(request)
        async for bars, last in queries.read_bars(self._res.db, query, page_size(request)):
            yield bars_response(request, bars, last)

    async def IngestBars(
        self, request_iterator: AsyncIterator[pb.IngestBarsRequest], context: Context
    ) -> pb.IngestBarsResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument(
                [FieldViolation("header", "the first message must be the header")]
            )
        header = validate.ingest_header(first.header)
        received, ends = await _receive(request_iterator, header, self._res.clock())
        try:
            result = await queries.write_bars(
                self._res.db, header.symbol, header.resolution, received, upsert=header.upsert
            )
        except queries.BarExists as error:
            batch = bisect.bisect_right(ends, error.index)
            index = error.index - (ends[batch - 1] if batch else 0)
            raise AlreadyExists(
                error.message, field=f"batches[{batch}].open_times_unix[{index}]"
            ) from None
        return ingest_response(result)


async def _receive(
    request_iterator: AsyncIterator[pb.IngestBarsRequest],
    header: validate.Header,
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
        batch = validate.batch(index, message.bars, header, after=after, now=now_s)
        if len(received) + len(batch) > validate.MAX_INGEST:
            raise InvalidArgument(
                [
                    FieldViolation(
                        f"batches[{index}]",
                        f"at most {validate.MAX_INGEST:,} bars per ingest: split the data",
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
