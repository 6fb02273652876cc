"""The run-scoped gRPC server: for one run, on that run's Unix socket only, the market data the
model is entitled to and the place to hand in its forecasts.

No authentication interceptor: the socket is the capability. Only the jail of this run can reach
it (its directory is handed to the jail's user and bind-mounted into that jail alone), and only
the methods below are served: no other service, no health, no reflection."""

from __future__ import annotations

import bisect
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from grpc import aio
from sqlalchemy import text

from foretell import resolutions
from foretell.clock import timestamp as _ts
from foretell.datafeed.v1 import datafeed_service_pb2 as feed_pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as feed_grpc
from foretell.db import Database
from foretell.errors import (
    ForetellError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
)
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.marketdata import queries
from foretell.marketdata import validate as feed_validate
from foretell.marketdata.messages import bars_response, page_size
from foretell.marketdata.queries import BarColumns, BarQuery, utc
from foretell.runs._scope import MAX_MESSAGE_BYTES, RunScope
from foretell.runs._validate import AcceptedForecast, check_forecasts
from foretell.runtime import error_status

if TYPE_CHECKING:
    Context = aio.ServicerContext[Any, Any]

T = TypeVar("T")


async def _abort(error: ForetellError, context: Context) -> None:
    status = error_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _answer(call: Callable[[], Awaitable[T]], context: Context) -> T:
    try:
        return await call()
    except ForetellError as error:
        await _abort(error, context)
        raise  # unreachable: abort raises


_SERIES = text("""
SELECT symbol, count(*), min(open_time), max(open_time) FROM bars
WHERE symbol = ANY(:symbols) AND resolution = :resolution AND open_time < to_timestamp(:as_of)
GROUP BY symbol ORDER BY symbol
""")


@dataclass(frozen=True)
class SeriesInfo:
    symbol: str
    count: int
    first: datetime
    last: datetime


class BarSource(Protocol):
    """Where a run's bars come from: the platform's database (`DatabaseBars`, the default) or,
    for `foretell run --local`, bars held in memory (`MemoryBars`). The run server applies the
    scope's rules (symbols, resolution, as_of) before asking."""

    async def series(self, scope: RunScope) -> list[SeriesInfo]:
        """For each of the scope's symbols with bars of its resolution opened before as_of:
        how many, the first and the last open time; ordered by symbol."""
        ...

    def read(self, query: BarQuery, page_size: int) -> AsyncIterator[tuple[BarColumns, bool]]:
        """As `foretell.marketdata.queries.read_bars`."""
        ...


class DatabaseBars:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def series(self, scope: RunScope) -> list[SeriesInfo]:
        params = {
            "symbols": list(scope.symbols),
            "resolution": scope.resolution,
            "as_of": scope.as_of_s,
        }
        async with self._db.read.connect() as conn:
            rows = (await conn.execute(_SERIES, params)).all()
        return [SeriesInfo(row[0], int(row[1]), row[2], row[3]) for row in rows]

    def read(self, query: BarQuery, page_size: int) -> AsyncIterator[tuple[BarColumns, bool]]:
        return queries.read_bars(self._db, query, page_size)


class MemoryBars:
    """Bars of one resolution in memory, per symbol, open times ascending."""

    def __init__(self, resolution: str, bars: dict[str, BarColumns]) -> None:
        self._resolution = resolution
        self._bars = bars

    def _cut(self, symbol: str, start: int, end: int) -> BarColumns:
        bars = self._bars.get(symbol, BarColumns.empty())
        times = bars.open_times
        return bars.slice(bisect.bisect_left(times, start), bisect.bisect_left(times, end))

    async def series(self, scope: RunScope) -> list[SeriesInfo]:
        found = []
        if scope.resolution == self._resolution:
            for symbol in sorted(scope.symbols):
                bars = self._cut(symbol, 0, scope.as_of_s)
                if len(bars):
                    found.append(SeriesInfo(symbol, len(bars), utc(bars.open_times[0]),
                                            utc(bars.open_times[-1])))  # fmt: skip
        return found

    async def read(self, query: BarQuery, page_size: int) -> AsyncIterator[tuple[BarColumns, bool]]:
        if query.resolution != self._resolution or not len(self._bars.get(query.symbol, ())):
            raise NotFound(f"no {query.resolution} bars for symbol {query.symbol!r}")
        bars = self._cut(query.symbol, query.start, query.end)
        if query.limit:
            bars = bars.slice(len(bars) - query.limit, len(bars)) if query.latest and len(
                bars) > query.limit else bars.slice(0, query.limit)  # fmt: skip
        for start in range(0, max(len(bars), 1), page_size):
            yield bars.slice(start, start + page_size), start + page_size >= len(bars)


class RunDataFeed(feed_grpc.DataFeedServiceServicer):
    """DataFeedService as the model sees it: its symbols, its resolution, bars closed by as_of.
    Counts and last times of ListSymbols are as of as_of too: even they must not reveal later
    bars."""

    def __init__(self, bars: BarSource, scope: RunScope) -> None:
        self._bars = bars
        self._scope = scope

    async def ListSymbols(
        self, request: feed_pb.ListSymbolsRequest, context: Context
    ) -> feed_pb.ListSymbolsResponse:
        rows = await self._bars.series(self._scope)
        resolution = resolutions.TO_ENUM[self._scope.resolution]
        return feed_pb.ListSymbolsResponse(
            symbols=[
                feed_pb.SymbolInfo(
                    symbol=row.symbol,
                    series=[
                        feed_pb.Series(
                            resolution=resolution,
                            bar_count=row.count,
                            first_open_time=_ts(row.first),
                            last_open_time=_ts(row.last),
                        )
                    ],
                )
                for row in rows
            ]
        )

    def _query(self, request: feed_pb.GetBarsRequest) -> BarQuery:
        query = feed_validate.get_bars(request)
        scope = self._scope
        if query.symbol not in scope.symbols:
            raise PermissionDenied(
                f"{query.symbol} is not one of this model's symbols ({', '.join(scope.symbols)})"
            )
        if query.resolution != scope.resolution:
            raise PermissionDenied(f"this model reads {scope.resolution} bars only")
        # The range bounds are open times; with as_of on the grid, a bar closed at or before
        # as_of is exactly one that opened before it.
        as_of = scope.as_of_s
        if request.HasField("end_time") and query.end > as_of:
            raise OutOfRange(
                f"end_time is after as_of ({feed_validate.iso(as_of)}): no bars from the future"
            )
        if request.HasField("start_time") and query.start >= as_of:
            raise OutOfRange(
                f"start_time is not before as_of ({feed_validate.iso(as_of)}): no bars from "
                "the future"
            )
        return BarQuery(query.symbol, query.resolution, query.start, min(query.end, as_of),
                        query.limit, query.latest)  # fmt: skip

    async def GetBars(
        self, request: feed_pb.GetBarsRequest, context: Context
    ) -> AsyncIterator[feed_pb.GetBarsResponse]:
        try:
            query = self._query(request)
            async for bars, last in self._bars.read(query, page_size(request)):
                yield bars_response(request, bars, last)
        except ForetellError as error:
            await _abort(error, context)

    async def IngestBars(
        self, request_iterator: AsyncIterator[feed_pb.IngestBarsRequest], context: Context
    ) -> feed_pb.IngestBarsResponse:
        await _abort(PermissionDenied("a model cannot add market data"), context)
        raise AssertionError("unreachable")

    async def SetSymbolCalendar(
        self, request: feed_pb.SetSymbolCalendarRequest, context: Context
    ) -> feed_pb.SetSymbolCalendarResponse:
        await _abort(PermissionDenied("a model cannot change market data"), context)
        raise AssertionError("unreachable")

    async def CorrectBar(
        self, request: feed_pb.CorrectBarRequest, context: Context
    ) -> feed_pb.CorrectBarResponse:
        await _abort(PermissionDenied("a model cannot change market data"), context)
        raise AssertionError("unreachable")


class RunForecasts(fc_grpc.ForecastServiceServicer):
    """SubmitForecasts: checks and keeps the run's forecasts in memory. The platform records
    them after the run, in one transaction with the run, stamped with its own clock."""

    def __init__(self, scope: RunScope) -> None:
        self._scope = scope
        self.accepted: list[AcceptedForecast] = []
        # Why each refused call was refused, for the run's outcome (invalid_output).
        self.rejections: list[str] = []

    async def SubmitForecasts(
        self, request: fc_pb.SubmitForecastsRequest, context: Context
    ) -> fc_pb.SubmitForecastsResponse:
        try:
            already = {f.symbol for f in self.accepted}
            new = check_forecasts(self._scope, list(request.forecasts), already)
        except InvalidArgument as error:
            self.rejections.append(error.message)
            await _abort(error, context)
        self.accepted.extend(new)
        return fc_pb.SubmitForecastsResponse(accepted=len(new), total=len(self.accepted))

    # The reads belong to the public servers: a model in its jail reads no records.
    async def ListForecasts(
        self, request: fc_pb.ListForecastsRequest, context: Context
    ) -> fc_pb.ListForecastsResponse:
        await _abort(_NO_READS, context)
        raise AssertionError("unreachable")

    async def StreamForecasts(
        self, request: fc_pb.StreamForecastsRequest, context: Context
    ) -> AsyncIterator[fc_pb.StreamForecastsResponse]:
        await _abort(_NO_READS, context)
        yield fc_pb.StreamForecastsResponse()  # unreachable: makes this a generator

    async def ListRuns(
        self, request: fc_pb.ListRunsRequest, context: Context
    ) -> fc_pb.ListRunsResponse:
        await _abort(_NO_READS, context)
        raise AssertionError("unreachable")

    async def GetRun(self, request: fc_pb.GetRunRequest, context: Context) -> fc_pb.GetRunResponse:
        await _abort(_NO_READS, context)
        raise AssertionError("unreachable")

    async def DryRun(self, request: fc_pb.DryRunRequest, context: Context) -> fc_pb.DryRunResponse:
        await _abort(_NO_READS, context)
        raise AssertionError("unreachable")

    async def GetPerformance(
        self, request: fc_pb.GetPerformanceRequest, context: Context
    ) -> fc_pb.GetPerformanceResponse:
        await _abort(_NO_READS, context)
        raise AssertionError("unreachable")

    async def GetLedger(
        self, request: fc_pb.GetLedgerRequest, context: Context
    ) -> fc_pb.GetLedgerResponse:
        await _abort(_NO_READS, context)
        raise AssertionError("unreachable")


_NO_READS = PermissionDenied("a model cannot read recorded forecasts or start runs")


class RunServer:
    """The server of one run. `start` before the sandbox, `stop` after it."""

    def __init__(self, bars: BarSource, scope: RunScope, socket_path: Path) -> None:
        self.scope = scope
        self.socket_path = socket_path
        self.feed = RunDataFeed(bars, scope)
        self.forecasts = RunForecasts(scope)
        self._server = aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # One run's model is the only client: a few streams suffice.
                ("grpc.max_concurrent_streams", 8),
            ]
        )
        feed_grpc.add_DataFeedServiceServicer_to_server(self.feed, self._server)
        fc_grpc.add_ForecastServiceServicer_to_server(self.forecasts, self._server)

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        # Returns 1 (not a port) for a Unix socket; it fails by raising.
        self._server.add_insecure_port(f"unix://{self.socket_path}")
        await self._server.start()
        # The socket's mode follows the umask; the sandbox hands it (and its 0700 directory) to
        # the jail's user, so only that user and root can connect.
        os.chmod(self.socket_path, 0o600)

    async def stop(self) -> None:
        await self._server.stop(None)
        self.socket_path.unlink(missing_ok=True)
