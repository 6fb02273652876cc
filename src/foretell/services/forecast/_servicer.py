from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from foretell.auth.principal import Principal, current_principal
from foretell.billing.entitlement import forecast_access, require_entitled
from foretell.clock import timestamp as _ts
from foretell.db.models import Forecast, Model, Run
from foretell.errors import FailedPrecondition, ForetellError, NotFound, PermissionDenied
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from foretell.marketdata import model_calendar
from foretell.performance import PerformanceCache
from foretell.runs import latest_slot, request_dry_run
from foretell.runs.outcomes import OUTCOME_ENUM
from foretell.runtime.resources import Resources
from foretell.services.forecast import _queries, _validate
from foretell.services.forecast._feed import ACCESS_CHANGED, LOST, RESYNC, ForecastFeed
from foretell.services.forecast._ledger import ledger_page
from foretell.services.forecast._performance import performance_pb

if TYPE_CHECKING:
    # Generic only in the type stubs.
    Context = aio.ServicerContext[Any, Any]

_DIRECTIONS = {"up": pb.DIRECTION_UP, "down": pb.DIRECTION_DOWN, "flat": pb.DIRECTION_FLAT}


class FeedLost(ForetellError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


def _by_run(rows: Sequence[tuple[Forecast, int]]) -> list[list[tuple[Forecast, int]]]:
    """Rows in id order, one message per run, as the notices send them."""
    batches: dict[uuid.UUID, list[tuple[Forecast, int]]] = {}
    for row in rows:
        batches.setdefault(row[0].run_id, []).append(row)
    return list(batches.values())


def forecast_pb(model: str, forecast: Forecast, version: int) -> pb.ForecastRecord:
    return pb.ForecastRecord(
        model=model,
        symbol=forecast.symbol,
        as_of=_ts(forecast.as_of),
        target_time=_ts(forecast.target_time),
        direction=_DIRECTIONS[forecast.direction],
        predicted_return=forecast.predicted_return,
        probability=forecast.probability,
        version=version,
        run_id=str(forecast.run_id),
        recorded_time=_ts(forecast.recorded_at),
        kind=_validate.KIND_ENUM[forecast.kind],
    )


def run_pb(model: str, run: Run, version: int, count: int, *, log: bool) -> pb.Run:
    duration = Duration()
    duration.FromNanoseconds(round(run.duration_s * 1e9))
    return pb.Run(
        id=str(run.id),
        model=model,
        version=version,
        as_of=_ts(run.as_of),
        kind=_validate.KIND_ENUM[run.kind],
        outcome=OUTCOME_ENUM[run.outcome],
        detail=run.detail,
        duration=duration,
        duration_seconds=run.duration_s,
        forecast_count=count,
        create_time=_ts(run.created_at),
        log=run.log if log else "",
    )


class ForecastServicer(pb_grpc.ForecastServiceServicer):
    """The public reads. SubmitForecasts is refused here (and by the policy table, NOBODY): it is
    served only on a run's socket (foretell.runs)."""

    def __init__(self, resources: Resources) -> None:
        self._res = resources
        self._feed = ForecastFeed(str(resources.settings.database_url))
        self._performance = PerformanceCache()

    async def SubmitForecasts(
        self, request: pb.SubmitForecastsRequest, context: Context
    ) -> pb.SubmitForecastsResponse:
        # Unreachable behind the interceptor (policy NOBODY); refused here too, in depth.
        raise PermissionDenied("forecasts are submitted only by a model during its run")

    async def ListForecasts(
        self, request: pb.ListForecastsRequest, context: Context
    ) -> pb.ListForecastsResponse:
        filters = _validate.list_forecasts(request, self._res.page_tokens)
        principal = current_principal()
        view = await _queries.readable_model(self._res.db, principal, filters.model)
        access = await forecast_access(
            self._res.db, principal, view.model, self._res.clock(), self._res.settings
        )
        rows = await _queries.list_forecasts(self._res.db, view, filters, access.recorded_before)
        limit = filters.limit
        token = ""
        if len(rows) > limit:
            last = rows[limit - 1][0]
            token = _validate.page_token(
                self._res.page_tokens, "ListForecasts", filters.model, last.as_of, last.id
            )
        response = pb.ListForecastsResponse(
            forecasts=[forecast_pb(view.model.name, f, number) for f, number in rows[:limit]],
            next_page_token=token,
        )
        if access.recorded_before is not None:
            response.delayed_sample = True
            response.sample_recorded_before.FromDatetime(access.recorded_before)
        return response

    async def StreamForecasts(
        self, request: pb.StreamForecastsRequest, context: Context
    ) -> AsyncIterator[pb.StreamForecastsResponse]:
        name, symbol, kind = _validate.stream_forecasts(request)
        principal = current_principal()
        view = await _queries.readable_model(self._res.db, principal, name)
        await self._entitled(principal, view.model)
        recheck_s = max(self._res.settings.entitlement_recheck_s, 0.1)
        async with self._feed.subscribe(view.model.id) as notices:
            # Every forecast after this one reaches the stream, by notice or, after the feed
            # lost its connection, by reading what was recorded meanwhile (RESYNC).
            sent = await _queries.latest_forecast_id(self._res.db, view.model.id)
            # Headers out once listening: the client knows every later run reaches it.
            await context.send_initial_metadata(())
            while True:
                idle = False
                try:
                    notice = await asyncio.wait_for(notices.get(), recheck_s)
                except TimeoutError:
                    notice, idle = ACCESS_CHANGED, True
                if notice is LOST:
                    raise FeedLost("the forecast feed was interrupted: open the stream again")
                # A run of another kind is none of this stream's business: no check, no query.
                if not isinstance(notice, str) and notice.kind != kind:
                    continue
                # Before anything is sent, and whenever access may have changed (a
                # subscription lapsed, the model went private) or time passed: still allowed?
                await self._still_readable(principal, name)
                if idle:
                    # A heartbeat: a gateway ends a stream idle for minutes (Envoy's stream
                    # idle timeout), and the client learns the stream is still alive.
                    yield pb.StreamForecastsResponse()
                if notice == RESYNC:
                    rows = await _queries.forecasts_after(
                        self._res.db, view.model.id, kind, symbol, sent
                    )
                elif isinstance(notice, str):
                    continue
                else:
                    rows = await _queries.run_forecasts(self._res.db, notice.run_id, symbol)
                # Never twice: a run read at RESYNC may be announced after it too.
                rows = [(f, number) for f, number in rows if f.id > sent]
                for batch in _by_run(rows):
                    sent = max(sent, max(f.id for f, _ in batch))
                    yield pb.StreamForecastsResponse(
                        forecasts=[forecast_pb(name, f, number) for f, number in batch]
                    )

    async def _entitled(self, principal: Principal, model: Model) -> None:
        await require_entitled(
            self._res.db, principal, model, self._res.clock(), self._res.settings
        )

    async def _still_readable(self, principal: Principal, name: str) -> None:
        try:
            view = await _queries.readable_model(self._res.db, principal, name)
        except NotFound:
            raise PermissionDenied(f"model {name!r} is no longer readable to you") from None
        await self._entitled(principal, view.model)

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        filters = _validate.list_runs(request, self._res.page_tokens)
        view = await _queries.runs_model(self._res.db, current_principal(), filters.model)
        rows = await _queries.list_runs(self._res.db, view, filters)
        limit = filters.limit
        token = ""
        if len(rows) > limit:
            last = rows[limit - 1][0]
            token = _validate.page_token(
                self._res.page_tokens, "ListRuns", filters.model, last.as_of, last.id
            )
        return pb.ListRunsResponse(
            runs=[run_pb(view.model.name, r, n, c, log=False) for r, n, c in rows[:limit]],
            next_page_token=token,
        )

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        name, run_id = _validate.get_run(request)
        view = await _queries.runs_model(self._res.db, current_principal(), name)
        run, number, count = await _queries.get_run(self._res.db, view, run_id)
        return pb.GetRunResponse(run=run_pb(name, run, number, count, log=True))

    async def DryRun(self, request: pb.DryRunRequest, context: Context) -> pb.DryRunResponse:
        """Runs the version on the dry-run lane's workers (this process never starts a
        sandbox) and answers with the recorded run. Each provider has at most
        FORETELL_PROVIDER_DRY_RUNS dry runs queued or running: RESOURCE_EXHAUSTED past it."""
        name, number, as_of = _validate.dry_run(request)
        view = await _queries.runs_model(self._res.db, current_principal(), name)
        model = view.model
        version = await _queries.dry_run_version(self._res.db, view, number)
        now = self._res.clock()
        calendar = await model_calendar(self._res.db, list(model.symbols))
        if as_of is None:
            as_of = latest_slot(calendar, model.resolution, now)
            if as_of is None:
                raise FailedPrecondition(f"the {calendar.name} calendar has no slot before now")
        _validate.check_as_of(as_of, model.resolution, now, calendar)
        # The model's owner is the provider whose cap the dry run counts against.
        run_id, recorded = await request_dry_run(self._res, model.owner_id, version.id, as_of)
        run, run_number, count = await _queries.get_run(self._res.db, view, run_id)
        rows = await _queries.run_forecasts(self._res.db, run_id, "")
        return pb.DryRunResponse(
            run=run_pb(name, run, run_number, count, log=True),
            forecasts=[forecast_pb(name, f, n) for f, n in rows],
            recorded=recorded,
        )

    async def GetPerformance(
        self, request: pb.GetPerformanceRequest, context: Context
    ) -> pb.GetPerformanceResponse:
        name, kind, cost_bps = _validate.get_performance(request)
        view = await _queries.readable_model(self._res.db, current_principal(), name)
        model = view.model
        report = await self._performance.report(
            self._res.db, model.id, model.resolution, list(model.symbols), kind, cost_bps
        )
        return performance_pb(model.name, _validate.KIND_ENUM[kind], cost_bps, report)

    async def GetLedger(
        self, request: pb.GetLedgerRequest, context: Context
    ) -> pb.GetLedgerResponse:
        name, limit, after = _validate.get_ledger(request, self._res.page_tokens)
        principal = current_principal()
        view = await _queries.readable_model(self._res.db, principal, name)
        # The payloads hold the forecasts: served as far as ListForecasts would serve them.
        try:
            access = await forecast_access(
                self._res.db, principal, view.model, self._res.clock(), self._res.settings
            )
            recorded_before = access.recorded_before
        except PermissionDenied:
            recorded_before = datetime.min.replace(tzinfo=UTC)
        return await ledger_page(
            self._res.db,
            self._res.page_tokens,
            view.model.id,
            view.model.name,
            limit,
            after,
            recorded_before,
        )


def add_to_server(server: aio.Server, resources: Resources) -> None:
    pb_grpc.add_ForecastServiceServicer_to_server(ForecastServicer(resources), server)
