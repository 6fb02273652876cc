from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from grpc import aio

from foretell import calendars, resolutions
from foretell.auth.policy import Role
from foretell.auth.principal import Principal, current_principal
from foretell.clock import timestamp as _ts
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as pb_grpc
from foretell.errors import AlreadyExists, FieldViolation, InvalidArgument, PermissionDenied
from foretell.marketdata import corrections, feeders, queries, validate
from foretell.marketdata.messages import (
    bars_response,
    correction_response,
    ingest_response,
    page_size,
)
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
        stored = await queries.all_calendar_names(self._res.db)
        for s in await queries.list_series(self._res.db):
            name = stored.get(s.symbol) or calendars.default_for(s.symbol)
            info = symbols.setdefault(s.symbol, pb.SymbolInfo(symbol=s.symbol, calendar=name))
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
        principal = current_principal()
        calendar: calendars.Slots | None = None
        if principal.role == Role.FEEDER:
            calendar = await self._feeder_calendar(principal, header)
        received, ends = await _receive(request_iterator, header, self._res.clock())
        if calendar is not None:
            # Admins import vendors' history as it is; a feeder pushes bars as they close,
            # and a bar of a closed market is a mistake in its script.
            validate.off_calendar(received, ends, header, calendar).raise_if_any()
        try:
            result = await queries.write_bars(
                self._res.db,
                header.symbol,
                header.resolution,
                received,
                upsert=header.upsert,
                calendar=header.calendar,
                keep_read=True,
            )
        except (queries.BarExists, queries.BarRead) as error:
            batch = bisect.bisect_right(ends, error.index)
            index = error.index - (ends[batch - 1] if batch else 0)
            field = f"batches[{batch}].open_times_unix[{index}]"
            if isinstance(error, queries.BarRead):
                raise InvalidArgument([FieldViolation(field, error.message)]) from None
            raise AlreadyExists(error.message, field=field) from None
        return ingest_response(result)

    async def _feeder_calendar(
        self, principal: Principal, header: validate.Header
    ) -> calendars.Slots:
        """The calendar a feeder's bars must be on, after checking that it may push them.
        Checked before any bar is read: a feeder learns nothing of a symbol not granted."""
        if not await feeders.may_push(self._res.db, principal.user_id, header.symbol):
            raise PermissionDenied(f"this data feeder was not granted {header.symbol}")
        name = (await queries.calendar_names(self._res.db, [header.symbol]))[header.symbol]
        if header.calendar and header.calendar != name:
            raise PermissionDenied(
                f"{header.symbol} trades on the {name} calendar; a data feeder does not choose "
                "calendars: an admin sets it with SetSymbolCalendar"
            )
        # Built once per process (seconds); not on the event loop.
        return await asyncio.to_thread(calendars.get, name)

    async def CorrectBar(
        self, request: pb.CorrectBarRequest, context: Context
    ) -> pb.CorrectBarResponse:
        asked = validate.correct_bar(request)
        done = await corrections.correct_bar(
            self._res.db,
            asked.symbol,
            asked.resolution,
            asked.open_time,
            asked.values,
            reason=asked.reason,
            by=current_principal().user_id,
            now=self._res.clock(),
        )
        return correction_response(done)

    async def SetSymbolCalendar(
        self, request: pb.SetSymbolCalendarRequest, context: Context
    ) -> pb.SetSymbolCalendarResponse:
        symbol, name = validate.set_calendar(request)
        changed = await queries.set_calendar(
            self._res.db, symbol, name, by=str(current_principal().user_id), now=self._res.clock()
        )
        return pb.SetSymbolCalendarResponse(symbol=symbol, calendar=name, changed=changed)


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
