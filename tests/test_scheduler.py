"""The scheduler: due and missed slots as pure functions of an injected clock, then the cron
cycle and the run job end to end (real PostgreSQL, Redis, sandbox and burst worker)."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from arq.jobs import Job, JobStatus
from sqlalchemy import select, update

from foretell import calendars
from foretell.common.v1 import common_pb2
from foretell.db.models import Forecast, Model, Run, Version
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.marketdata import BarColumns, ingest_bars, set_calendar
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runs import MAX_MISSED, SlotPlan, latest_slot, plan_slots
from foretell.runtime import Resources
from foretell.scheduler import (
    MISSED_DETAIL,
    RUN_TRIES,
    BarsListener,
    run_job_id,
    run_version,
    schedule_runs,
)
from foretell.settings import Settings, SettingsError, load_settings
from foretell.worker import close_worker, create_worker
from tests._registry import model_name, push, run_builds, running_worker, write_model
from tests.conftest import FORETELL, MovableClock, SignedIn, SignUp, foretell_env

if TYPE_CHECKING:
    from grpc import aio

T = TypeVar("T")


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- pure functions -------------------------------------------------------------------------

CRYPTO = calendars.get(calendars.CRYPTO)  # 24/7: every hour is a slot
NYSE = calendars.get("XNYS")
DEADLINE = timedelta(minutes=15)
PUBLISHED = "2024-03-10 09:30:00"


def plan(
    last: str | None,
    now: str,
    landed: str | None = "2099-01-01 00:00:00",
    calendar: calendars.Slots = CRYPTO,
    resolution: str = "1h",
    published: str = PUBLISHED,
    cap: int = MAX_MISSED,
) -> SlotPlan:
    return plan_slots(
        calendar,
        resolution,
        last_as_of=t(last) if last else None,
        now=t(now),
        live_since=t(published),
        landed={"A": t(landed) if landed else None},
        deadline=DEADLINE,
        cap=cap,
    )


@pytest.mark.parametrize(
    ("resolution", "last", "now", "due", "missed"),
    [
        # Published mid-slot: the slot it was published in is not run; the next one is.
        ("1h", None, "2024-03-10 09:45:00", None, []),
        ("1h", None, "2024-03-10 09:59:59", None, []),
        ("1h", None, "2024-03-10 10:00:00", "2024-03-10 10:00:00", []),
        ("1h", None, "2024-03-10 10:00:30", "2024-03-10 10:00:00", []),
        # Nothing due right after a run, until the next slot.
        ("1h", "2024-03-10 10:00:00", "2024-03-10 10:00:30", None, []),
        ("1h", "2024-03-10 10:00:00", "2024-03-10 10:59:59", None, []),
        ("1h", "2024-03-10 10:00:00", "2024-03-10 11:00:00", "2024-03-10 11:00:00", []),
        # Down from 10:30 to 13:05: 11:00 and 12:00 were missed, 13:00 is due.
        (
            "1h",
            "2024-03-10 10:00:00",
            "2024-03-10 13:05:00",
            "2024-03-10 13:00:00",
            ["2024-03-10 11:00:00", "2024-03-10 12:00:00"],
        ),
        # Back at 13:20, past 13:00's data deadline: every slot was missed, none is due.
        (
            "1h",
            "2024-03-10 10:00:00",
            "2024-03-10 13:20:00",
            None,
            ["2024-03-10 11:00:00", "2024-03-10 12:00:00", "2024-03-10 13:00:00"],
        ),
        ("4h", None, "2024-03-10 11:59:59", None, []),
        ("4h", None, "2024-03-10 12:00:00", "2024-03-10 12:00:00", []),
        ("4h", None, "2024-03-10 16:00:00", "2024-03-10 16:00:00", ["2024-03-10 12:00:00"]),
        ("1d", None, "2024-03-11 00:00:00", "2024-03-11 00:00:00", []),
        # A clock behind the last slot (or the publish time) never yields anything.
        ("1h", "2024-03-10 12:00:00", "2024-03-10 11:30:00", None, []),
        ("1h", None, "2024-03-10 08:00:00", None, []),
    ],
)
def test_due_and_missed_slots_with_every_bar_landed(
    resolution: str, last: str | None, now: str, due: str | None, missed: list[str]
) -> None:
    got = plan(last, now, resolution=resolution)
    assert got.due == (t(due) if due else None)
    assert got.missed == [t(m) for m in missed]
    assert got.data_missing == {}


def test_a_slot_waits_for_its_bars_until_the_deadline_then_is_data_missing() -> None:
    # Bars up to 10:00 have landed; the 11:00 bar has not.
    landed = "2024-03-10 10:00:00"
    assert plan("2024-03-10 10:00:00", "2024-03-10 11:05:00", landed) == SlotPlan()
    assert plan("2024-03-10 10:00:00", "2024-03-10 11:14:59", landed) == SlotPlan()
    late = plan("2024-03-10 10:00:00", "2024-03-10 11:15:00", landed)
    assert late.due is None and late.missed == []
    assert late.data_missing == {t("2024-03-10 11:00:00"): ["A"]}
    # The bars land at 11:10: 11:00 is due at once.
    assert plan("2024-03-10 10:00:00", "2024-03-10 11:10:00", "2024-03-10 11:00:00").due == t(
        "2024-03-10 11:00:00"
    )
    # They land at 11:20, after the deadline: the slot is missed, never run late.
    after = plan("2024-03-10 10:00:00", "2024-03-10 11:20:00", "2024-03-10 11:00:00")
    assert after.due is None and after.missed == [t("2024-03-10 11:00:00")]


def test_only_the_symbols_without_data_are_named() -> None:
    got = plan_slots(
        CRYPTO, "1h", last_as_of=t("2024-03-10 10:00:00"), now=t("2024-03-10 11:30:00"),
        live_since=t(PUBLISHED), deadline=DEADLINE,
        landed={"A": t("2024-03-10 11:00:00"), "B": t("2024-03-10 10:00:00"), "C": None},
    )  # fmt: skip
    assert got.data_missing == {t("2024-03-10 11:00:00"): ["B", "C"]}


def test_closed_markets_are_neither_due_nor_missed() -> None:
    # NYSE, last run Friday 2024-03-08 at the close (21:00 UTC); the platform is up all
    # weekend: nothing until Monday's first bar closes (14:00 UTC, after daylight saving).
    friday = "2024-03-08 21:00:00"
    for now in ("2024-03-08 23:00:00", "2024-03-09 12:00:00", "2024-03-11 13:59:59"):
        assert plan(friday, now, calendar=NYSE, published="2024-03-01 00:00:00") == SlotPlan()
    monday = plan(friday, "2024-03-11 14:00:05", calendar=NYSE, published="2024-03-01 00:00:00")
    assert monday == SlotPlan(due=t("2024-03-11 14:00:00"))
    # Down over the weekend until Monday 15:05: only Monday's 14:00 bar was missed.
    down = plan(friday, "2024-03-11 15:05:00", calendar=NYSE, published="2024-03-01 00:00:00")
    assert down.due == t("2024-03-11 15:00:00") and down.missed == [t("2024-03-11 14:00:00")]


def test_a_moving_clock_runs_or_records_every_slot_once() -> None:
    """A minute-by-minute cycle over a day with a four-hour outage and bars landing two
    minutes after each close: every hourly slot is run once or recorded missed once, and
    nothing runs before its bars landed."""
    now = t("2024-03-10 09:30:00")
    last: datetime | None = None
    ran: list[datetime] = []
    missed_all: list[datetime] = []
    down = (t("2024-03-10 14:10:00"), t("2024-03-10 18:20:00"))
    while now < t("2024-03-11 09:30:00"):
        landed = (now - timedelta(minutes=2)).replace(minute=0, second=0)
        if not down[0] <= now < down[1]:
            got = plan_slots(
                CRYPTO, "1h", last_as_of=last, now=now, live_since=t(PUBLISHED),
                landed={"A": landed}, deadline=DEADLINE,
            )  # fmt: skip
            assert got.data_missing == {}
            missed_all += got.missed
            if got.unrun:
                last = got.missed[-1]
            if got.due is not None:
                assert got.due <= landed
                ran.append(got.due)
                last = got.due
        now += timedelta(minutes=1)
    assert missed_all == [t(f"2024-03-10 {h}:00:00") for h in (15, 16, 17, 18)]
    assert ran[:2] == [t("2024-03-10 10:00:00"), t("2024-03-10 11:00:00")]
    # Back at 18:20, past the 18:00 deadline: 19:00 is the first run after the outage.
    assert t("2024-03-10 19:00:00") in ran
    assert sorted(ran + missed_all) == [
        t("2024-03-10 10:00:00") + timedelta(hours=i) for i in range(24)
    ]
    assert len(set(ran)) == len(ran)


def test_unrun_slots_are_capped_to_the_most_recent() -> None:
    got = plan(None, "2024-01-01 00:10:00", published="2020-01-01 00:30:00")
    due = t("2024-01-01 00:00:00")
    assert got.due == due
    assert len(got.missed) == MAX_MISSED
    assert got.missed[-1] == due - timedelta(hours=1)
    assert got.missed[0] == due - timedelta(hours=MAX_MISSED)
    assert got.unrun_total == (due - t("2020-01-01 01:00:00")) // timedelta(hours=1)
    capped = plan(None, "2024-01-01 00:10:00", published="2020-01-01 00:30:00", cap=3)
    assert capped.missed == [due - timedelta(hours=h) for h in (3, 2, 1)]


def test_latest_slot_follows_the_calendar() -> None:
    assert latest_slot(NYSE, "1h", t("2024-03-09 12:00:00")) == t("2024-03-08 21:00:00")
    assert latest_slot(CRYPTO, "4h", t("2024-03-10 07:59:59")) == t("2024-03-10 04:00:00")
    with pytest.raises(ValueError, match="timezone"):
        latest_slot(CRYPTO, "1h", datetime(2024, 1, 1))


def test_scheduler_settings() -> None:
    assert load_settings({}).scheduler == "on"
    off = load_settings({"FORETELL_SCHEDULER": "off", "FORETELL_RUN_WALL_S": "5"})
    assert off.scheduler == "off" and off.run_wall_s == 5
    assert load_settings({}).job_grace_s == 60
    assert load_settings({"FORETELL_JOB_GRACE_S": "3"}).job_grace_s == 3
    with pytest.raises(SettingsError, match="FORETELL_JOB_GRACE_S"):
        load_settings({"FORETELL_JOB_GRACE_S": "0"})


# --- the cron cycle and the run job, end to end ---------------------------------------------

BASE = datetime(2024, 3, 4, tzinfo=UTC)
MOMENTUM = """
from foretell.sdk import Forecast

def predict(ctx):
    out = []
    for symbol in ctx.symbols:
        bars = ctx.bars(symbol, lookback=5)
        up = bars.close[-1] >= bars.close[0]
        out.append(Forecast(symbol, ctx.target_time, "up" if up else "down", probability=0.6))
    return out
"""


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> pb_grpc.RegistryServiceAsyncStub:
    return pb_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def forecasts_api(channel: aio.Channel) -> fc_grpc.ForecastServiceAsyncStub:
    return fc_grpc.ForecastServiceStub(channel)


@pytest.fixture(autouse=True)
async def _no_other_model_live(resources: Resources) -> None:
    """A scheduler cycle sees every live version in the database, and these tests count what
    one cycle does: models that other test files left live would be counted too."""
    async with resources.db.session.begin() as session:
        await session.execute(
            update(Model)
            .where(Model.live_version.is_not(None))
            .values(live_version=None, live_since=None)
        )


def set_time(clock: MovableClock, when: datetime) -> None:
    clock.offset = when - datetime.now(UTC)


async def add_bars(resources: Resources, symbol: str) -> None:
    n = 48
    closes = [100.0 + i for i in range(n)]
    bars = BarColumns(
        [int((BASE + timedelta(hours=i)).timestamp()) for i in range(n)],
        closes,
        [c + 1 for c in closes],
        [c - 1 for c in closes],
        closes,
        [10.0] * n,
    )
    await ingest_bars(resources.db, symbol, "1h", bars, upsert=True, now=datetime.now(UTC))


async def published_model(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
    published_at: datetime,
    source: str = MOMENTUM,
) -> tuple[SignedIn, Model, Version]:
    """A built model (`source`, its model.py) with its own symbol and 48 hourly bars from BASE,
    published (live) at `published_at` on the movable clock."""
    symbol = f"S{uuid.uuid4().hex[:8].upper()}"
    await add_bars(resources, symbol)
    # Every hour a slot, as the tests below count them.
    await set_calendar(resources.db, symbol, calendars.CRYPTO, by="test", now=datetime.now(UTC))
    me = await sign_up()
    created = await registry.CreateModel(
        pb.CreateModelRequest(
            model=pb.Model(
                name=model_name(),
                title="Scheduler test",
                symbols=[symbol],
                resolution=common_pb2.RESOLUTION_1H,
                horizon=1,
            )
        ),
        metadata=me.metadata,
    )
    folder = write_model(tmp_path / "m", source=textwrap.dedent(source), symbols=(symbol,))
    await push(registry, me.metadata, created.model.name, folder)
    await run_builds(settings)
    set_time(clock, published_at)
    await registry.PublishVersion(
        pb.PublishVersionRequest(model=created.model.name, number=1), metadata=me.metadata
    )
    async with resources.db.session() as session:
        model = await session.scalar(select(Model).where(Model.name == created.model.name))
        assert model is not None and model.live_version == 1
        version = await session.scalar(select(Version).where(Version.model_id == model.id))
        assert version is not None and version.build_state == "ready"
    return me, model, version


async def run_worker(settings: Settings, clock: MovableClock) -> None:
    worker = create_worker(settings, burst=True, clock=clock)
    try:
        await worker.async_run()
    finally:
        await close_worker(worker)


async def recorded(resources: Resources, model: Model) -> tuple[list[Run], list[Forecast]]:
    async with resources.db.session() as session:
        runs = list(
            await session.scalars(select(Run).where(Run.model_id == model.id).order_by(Run.as_of))
        )
        forecasts = list(
            await session.scalars(select(Forecast).where(Forecast.model_id == model.id))
        )
    return runs, forecasts


async def take_offline(
    registry: pb_grpc.RegistryServiceAsyncStub, me: SignedIn, model: Model
) -> None:
    await registry.TakeOffline(pb.TakeOfflineRequest(name=model.name), metadata=me.metadata)


async def test_a_due_slot_runs_once_and_missed_slots_are_recorded_missed(
    registry: pb_grpc.RegistryServiceAsyncStub,
    forecasts_api: fc_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    # Published at 27:30; the platform "comes back" at 30:10: 28:00 and 29:00 were missed.
    me, model, version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=27.5)
    )
    due = BASE + timedelta(hours=30)
    set_time(clock, due + timedelta(minutes=10))
    ctx: dict[str, Any] = {"resources": resources}
    first = await schedule_runs(ctx)
    assert first == {"enqueued": 1, "missed": 2, "data_missing": 0}
    # A second cycle in the same slot queues nothing and records nothing more.
    assert await schedule_runs(ctx) == {"enqueued": 0, "missed": 0, "data_missing": 0}
    # The same job id is refused by arq while the first is queued.
    duplicate = await resources.redis.enqueue_job(
        "run_version",
        str(version.id),
        due.isoformat(),
        _job_id=run_job_id(version.id, due),
        _queue_name=settings.queue_name,
    )
    assert duplicate is None
    await run_worker(settings, clock)

    runs, forecasts = await recorded(resources, model)
    assert [(r.as_of, r.kind, r.outcome) for r in runs] == [
        (BASE + timedelta(hours=28), "live", "missed"),
        (BASE + timedelta(hours=29), "live", "missed"),
        (due, "live", "ok"),
    ], [r.log for r in runs]
    assert runs[0].detail == MISSED_DETAIL and runs[0].duration_s == 0
    assert [(f.as_of, f.target_time, f.direction) for f in forecasts] == [
        (due, due + timedelta(hours=1), "up")
    ]
    assert forecasts[0].run_id == runs[2].id

    # The owner reads the missed slots over gRPC like any other run.
    listed = await forecasts_api.ListRuns(
        fc_pb.ListRunsRequest(model=model.name), metadata=me.metadata
    )
    assert [(r.as_of.ToDatetime(tzinfo=UTC), r.outcome) for r in listed.runs] == [
        (due, fc_pb.RUN_OUTCOME_OK),
        (BASE + timedelta(hours=29), fc_pb.RUN_OUTCOME_MISSED),
        (BASE + timedelta(hours=28), fc_pb.RUN_OUTCOME_MISSED),
    ]
    assert listed.runs[1].detail == MISSED_DETAIL and listed.runs[1].forecast_count == 0
    got = await forecasts_api.GetRun(
        fc_pb.GetRunRequest(model=model.name, run_id=listed.runs[2].id), metadata=me.metadata
    )
    assert got.run.outcome == fc_pb.RUN_OUTCOME_MISSED

    # Delivered again (at-least-once): nothing new is recorded.
    assert await run_version(ctx, str(version.id), due.isoformat()) == "ok"
    # A missed slot is never run late.
    missed_slot = BASE + timedelta(hours=29)
    assert await run_version(ctx, str(version.id), missed_slot.isoformat()) == "missed"
    # Right after the run nothing is due; at the next boundary the next slot is.
    assert await schedule_runs(ctx) == {"enqueued": 0, "missed": 0, "data_missing": 0}
    set_time(clock, due + timedelta(minutes=50))
    await schedule_runs(ctx)
    await run_worker(settings, clock)
    runs_after, forecasts_after = await recorded(resources, model)
    assert [r.id for r in runs_after] == [r.id for r in runs]
    assert len(forecasts_after) == 1
    set_time(clock, due + timedelta(hours=1, minutes=1))
    await schedule_runs(ctx)
    await run_worker(settings, clock)
    runs_after, forecasts_after = await recorded(resources, model)
    assert [(r.as_of, r.outcome) for r in runs_after[3:]] == [(due + timedelta(hours=1), "ok")]
    assert len(forecasts_after) == 2
    await take_offline(registry, me, model)


async def test_a_model_taken_offline_after_enqueue_records_nothing(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    me, model, version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=20.5)
    )
    ctx: dict[str, Any] = {"resources": resources}
    # A slot that has not come yet never runs, even delivered directly.
    future = BASE + timedelta(hours=22)
    assert await run_version(ctx, str(version.id), future.isoformat()) == "not_due"

    set_time(clock, BASE + timedelta(hours=21, minutes=5))
    assert await schedule_runs(ctx) == {"enqueued": 1, "missed": 0, "data_missing": 0}
    await take_offline(registry, me, model)
    await run_worker(settings, clock)
    assert await recorded(resources, model) == ([], [])
    # And the scheduler does not pick it up any more.
    set_time(clock, BASE + timedelta(hours=23, minutes=5))
    await schedule_runs(ctx)
    await run_worker(settings, clock)
    assert await recorded(resources, model) == ([], [])


async def test_a_republished_model_is_not_charged_with_missed_slots_for_its_time_offline(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    me, model, _version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=20.5)
    )
    ctx: dict[str, Any] = {"resources": resources}
    hour = timedelta(hours=1)

    async def cycle(at: datetime) -> dict[str, int]:
        set_time(clock, at)
        counts = await schedule_runs(ctx)
        await run_worker(settings, clock)
        return counts

    async def publish(at: datetime) -> None:
        set_time(clock, at)
        await registry.PublishVersion(
            pb.PublishVersionRequest(model=model.name, number=1), metadata=me.metadata
        )

    async def live_since() -> datetime | None:
        """To the second: the movable clock runs on from where it was set."""
        async with resources.db.session() as session:
            since = await session.scalar(select(Model.live_since).where(Model.id == model.id))
        return None if since is None else since.replace(microsecond=0)

    assert await live_since() == BASE + timedelta(hours=20.5)
    assert await cycle(BASE + 21 * hour + timedelta(minutes=5)) == {
        "enqueued": 1,
        "missed": 0,
        "data_missing": 0,
    }
    # Offline from 21:30: the scheduler runs nothing and records nothing for it.
    set_time(clock, BASE + 21.5 * hour)
    await take_offline(registry, me, model)
    assert await live_since() is None
    for at in (BASE + 22 * hour, BASE + 24 * hour + timedelta(minutes=5)):
        assert await cycle(at) == {"enqueued": 0, "missed": 0, "data_missing": 0}
    # Back at 25:20: the slots from 22:00 to 25:00 were offline, not missed; 26:00 runs.
    await publish(BASE + 25 * hour + timedelta(minutes=20))
    assert await live_since() == BASE + 25 * hour + timedelta(minutes=20)
    assert await cycle(BASE + 25 * hour + timedelta(minutes=30)) == {
        "enqueued": 0,
        "missed": 0,
        "data_missing": 0,
    }
    assert await cycle(BASE + 26 * hour + timedelta(minutes=5)) == {
        "enqueued": 1,
        "missed": 0,
        "data_missing": 0,
    }
    # Publishing the live version again changes nothing: a platform outage while live (27:00)
    # is still a missed slot.
    await publish(BASE + 26 * hour + timedelta(minutes=30))
    assert await live_since() == BASE + 25 * hour + timedelta(minutes=20)
    assert await cycle(BASE + 28 * hour + timedelta(minutes=10)) == {
        "enqueued": 1,
        "missed": 1,
        "data_missing": 0,
    }

    runs, forecasts = await recorded(resources, model)
    assert [(r.as_of - BASE, r.outcome) for r in runs] == [
        (21 * hour, "ok"),
        (26 * hour, "ok"),
        (27 * hour, "missed"),
        (28 * hour, "ok"),
    ], [r.log for r in runs]
    assert len(forecasts) == 3
    await take_offline(registry, me, model)


# --- market time: closed markets, data that never comes, bars that wake the scheduler -------

ZERO = {"enqueued": 0, "missed": 0, "data_missing": 0}


async def one_bar(resources: Resources, symbol: str, opens: datetime) -> None:
    bar = BarColumns([int(opens.timestamp())], [150.0], [151.0], [149.0], [150.5], [10.0])
    await ingest_bars(resources.db, symbol, "1h", bar, upsert=False, now=datetime.now(UTC))


async def test_no_run_fires_on_a_closed_market(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    me, model, _version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=21.5)
    )
    # The symbol trades on the NYSE: Monday 2024-03-04 closed at 21:00 UTC (16:00 EST).
    await set_calendar(resources.db, model.symbols[0], "XNYS", by="test", now=datetime.now(UTC))
    ctx: dict[str, Any] = {"resources": resources}
    # All night, and on Tuesday until the first bar closes at 15:00 UTC: nothing due, nothing
    # missed, though every clock hour's bar is stored.
    for hours in (22, 24 + 3, 24 + 14.9):
        set_time(clock, BASE + timedelta(hours=hours))
        assert await schedule_runs(ctx) == ZERO
    set_time(clock, BASE + timedelta(hours=24 + 15, minutes=5))
    assert await schedule_runs(ctx) == {**ZERO, "enqueued": 1}
    await run_worker(settings, clock)
    runs, forecasts = await recorded(resources, model)
    assert [(r.as_of, r.outcome) for r in runs] == [(BASE + timedelta(hours=39), "ok")], [
        r.log for r in runs
    ]
    # Horizon 1 from Tuesday 15:00: the next NYSE bar closes at 16:00.
    assert [f.target_time for f in forecasts] == [BASE + timedelta(hours=40)]
    await take_offline(registry, me, model)


async def test_a_slot_whose_bars_never_come_is_data_missing_and_never_run(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    # 48 bars from BASE: the last closes at 48:00; published at 48:30, so 49:00 is the first
    # slot, and its bar is not stored.
    me, model, version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=48.5)
    )
    slot = BASE + timedelta(hours=49)
    deadline = timedelta(seconds=settings.data_deadline_s)
    ctx: dict[str, Any] = {"resources": resources}
    set_time(clock, slot + deadline - timedelta(seconds=5))
    assert await schedule_runs(ctx) == ZERO  # still waiting for the bar
    set_time(clock, slot + deadline)
    assert await schedule_runs(ctx) == {**ZERO, "data_missing": 1}
    runs, _ = await recorded(resources, model)
    assert [(r.as_of, r.outcome) for r in runs] == [(slot, "data_missing")]
    assert model.symbols[0] in runs[0].detail and "not counted against" in runs[0].detail
    # The bar arrives late: the slot is not run, and delivered directly it stays as recorded.
    await one_bar(resources, model.symbols[0], slot - timedelta(hours=1))
    set_time(clock, slot + deadline + timedelta(minutes=5))
    assert await schedule_runs(ctx) == ZERO
    assert await run_version(ctx, str(version.id), slot.isoformat()) == "data_missing"
    await run_worker(settings, clock)
    assert [(r.as_of, r.outcome) for r in (await recorded(resources, model))[0]] == [
        (slot, "data_missing")
    ]
    await take_offline(registry, me, model)


async def test_bars_landing_start_their_slot_within_a_second(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    me, model, version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=48.5)
    )
    slot = BASE + timedelta(hours=49)
    set_time(clock, slot + timedelta(seconds=20))
    ctx: dict[str, Any] = {"resources": resources}
    assert await schedule_runs(ctx) == ZERO
    cycles: asyncio.Queue[dict[str, int]] = asyncio.Queue()
    listener = BarsListener(ctx, on_cycle=cycles.put_nowait)
    await listener.start()
    try:
        started = time.monotonic()
        await one_bar(resources, model.symbols[0], slot - timedelta(hours=1))
        while (counts := await asyncio.wait_for(cycles.get(), 10))["enqueued"] == 0:
            pass  # a cycle woken by another ingest
        elapsed = time.monotonic() - started
    finally:
        await listener.close()
    assert counts == {**ZERO, "enqueued": 1}
    assert elapsed < 1.0, elapsed
    job = Job(run_job_id(version.id, slot), resources.redis, _queue_name=settings.queue_name)
    assert await job.status() == JobStatus.queued
    await run_worker(settings, clock)
    runs, forecasts = await recorded(resources, model)
    assert [(r.as_of, r.outcome) for r in runs] == [(slot, "ok")], [r.log for r in runs]
    assert len(forecasts) == 1
    await take_offline(registry, me, model)


# --- a worker killed mid-run ----------------------------------------------------------------

SLOW = MOMENTUM.replace(
    "def predict(ctx):\n", "def predict(ctx):\n    import time\n    time.sleep(4)\n"
)


@dataclass(frozen=True)
class Proc:
    """A process by pid and start time (a pid alone may be reused)."""

    pid: int
    started: str

    def alive(self) -> bool:
        stat = _stat(self.pid)
        return stat is not None and stat[19] == self.started and stat[0] != "Z"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [0] state, [1] ppid, [19] start time."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(root: int) -> list[Proc]:
    by_parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            by_parent.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            if (stat := _stat(child)) is not None:
                found.append(Proc(child, stat[19]))
                todo.append(child)
    return found


async def poll(what: str, check: Callable[[], Awaitable[T | None]], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := await check()) is not None:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")


async def start_worker(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            FORETELL, "worker", "--lane", "live", env=env, stdout=out, stderr=out
        )


@pytest.mark.timeout(150)
async def test_a_worker_killed_mid_run_takes_its_jail_along_and_the_run_is_recorded_once(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    me, model, version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=27.5), SLOW
    )
    slot = BASE + timedelta(hours=30)
    # A queue of its own, and short limits: arq delivers a job whose worker died again once
    # the longest job timeout of every job and cron (here the run's: 8 s wall clock + 1 s
    # grace) plus 10 s is over.
    queue = f"{settings.queue_name}:kill"
    env = foretell_env(
        settings,
        FORETELL_QUEUE_NAME=queue,
        FORETELL_SCHEDULER="off",
        FORETELL_RUN_WALL_S="8",
        FORETELL_JOB_GRACE_S="1",
        FORETELL_BUILD_TIMEOUT_S="1",
        FORETELL_CRON_TIMEOUT_S="1",
    )
    job = await resources.redis.enqueue_job(
        "run_version", str(version.id), slot.isoformat(),
        _job_id=run_job_id(version.id, slot), _queue_name=queue,
    )  # fmt: skip
    assert job is not None
    log = tmp_path / "worker.log"
    worker = await start_worker(env, log)
    try:

        async def jail_running() -> list[Proc] | None:
            tree = descendants(worker.pid)
            names = [_comm(p.pid) for p in tree]
            # nsjail and, under it, the jail's Python (exec'd once the jail is set up, its
            # parent-death signal included): the model is running.
            running = "nsjail" in names and any(n.startswith("python") for n in names)
            return tree if running else None

        # The worker starts (building its trading calendars), then the jail.
        jail = await poll("the run's jail to start", jail_running, 60)
        worker.kill()
        await worker.wait()

        async def jail_gone() -> bool | None:
            return True if not any(p.alive() for p in jail) else None

        # SIGKILL reaches the jail at once; tearing down its address space can take a moment
        # on a loaded machine.
        await poll("the jail to die with its worker", jail_gone, 10)
        assert await recorded(resources, model) == ([], [])

        worker = await start_worker(env, log)

        async def run_recorded() -> list[Run] | None:
            runs, _ = await recorded(resources, model)
            return runs or None

        await poll("the run to be delivered again and recorded", run_recorded, 60)
        worker.terminate()
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    runs, forecasts = await recorded(resources, model)
    assert [(r.as_of, r.outcome) for r in runs] == [(slot, "ok")], log.read_text()
    assert [(f.as_of, f.symbol) for f in forecasts] == [(slot, model.symbols[0])]
    await take_offline(registry, me, model)


@pytest.mark.usefixtures("own_event_loop")
def test_the_worker_runs_the_scheduler_unless_burst_or_off(settings: Settings) -> None:
    import dataclasses

    def cron_names(**kwargs: Any) -> list[str]:
        worker = create_worker(kwargs.pop("s", settings), **kwargs)
        return [job.name for job in worker.cron_jobs]

    assert cron_names() == [
        "cron:scheduler_cycle",
        "cron:bill_subscriptions",
        "cron:checkpoint_ledgers",
        "cron:send_notices",
        "cron:observe_business",
    ]
    assert cron_names(burst=True) == []
    # Billing, ledger checkpoints, notices and the business figures do not depend on the run
    # scheduler.
    off = dataclasses.replace(settings, scheduler="off")
    assert cron_names(s=off) == [
        "cron:bill_subscriptions",
        "cron:checkpoint_ledgers",
        "cron:send_notices",
        "cron:observe_business",
    ]
    worker = create_worker(settings)
    run_job = worker.functions["run_version"]
    assert run_job.timeout_s == settings.run_wall_s + settings.job_grace_s
    short = create_worker(dataclasses.replace(settings, run_wall_s=5, job_grace_s=2))
    assert short.functions["run_version"].timeout_s == 7


@pytest.mark.parametrize("mode", ["on", "cron"])
async def test_the_scheduler_listens_for_bars_unless_it_is_cron_only(
    settings: Settings, mode: str
) -> None:
    """FORETELL_SCHEDULER=cron (a database behind a transaction-pooling proxy, where LISTEN
    does not work): the minute cron runs the slots, and no connection LISTENs for bars."""
    import dataclasses

    chosen = load_settings({**foretell_env(settings), "FORETELL_SCHEDULER": mode})
    assert chosen.scheduler == mode
    chosen = dataclasses.replace(chosen, queue_name=f"sched-{uuid.uuid4()}")
    worker = create_worker(chosen, role="cron", handle_signals=False)
    assert "cron:scheduler_cycle" in [job.name for job in worker.cron_jobs]
    started = asyncio.Event()
    startup = worker.on_startup
    assert startup is not None

    async def record_startup(ctx: dict[str, Any]) -> None:
        await startup(ctx)
        started.set()

    worker.on_startup = record_startup
    running = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(started.wait(), 60)
        assert ("bars_listener" in worker.ctx) is (mode == "on")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await close_worker(worker)


@pytest.mark.parametrize("job_try", [1, 3])
async def test_a_live_run_whose_database_is_out_is_tried_again_later(
    resources: Resources, job_try: int
) -> None:
    """The store goes away while a live run is due: the job is deferred and tried again (with
    a longer wait each time) rather than failing, which would leave its slot queued in the
    scheduler's eyes and never recorded."""
    import dataclasses
    import socket

    from arq import Retry

    from foretell.db import connect

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = connect(f"postgresql://foretell@127.0.0.1:{closed}/foretell", pool_size=1)
    try:
        ctx = {"resources": dataclasses.replace(resources, db=down), "job_try": job_try}
        with pytest.raises(Retry) as retried:
            await run_version(ctx, str(uuid.uuid4()), BASE.isoformat())
    finally:
        await down.close()
    assert retried.value.defer_score == 1000 * 2 ** (job_try - 1)
    worker = create_worker(resources.settings)
    assert worker.functions["run_version"].max_tries == RUN_TRIES


async def test_a_slot_whose_job_failed_for_good_is_queued_again_and_recorded(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    """The scheduler remembers the last slot it queued, so as not to queue it twice. A job
    that failed for good (its tries spent during a long outage) recorded no run: the slot must
    not stay 'queued' forever, a silent hole in the record."""
    from arq.constants import default_queue_name, result_key_prefix
    from arq.jobs import serialize_result

    me, model, version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=40.5)
    )
    due = BASE + timedelta(hours=41)
    set_time(clock, due + timedelta(minutes=2))
    ctx: dict[str, Any] = {"resources": resources}
    assert await schedule_runs(ctx) == {"enqueued": 1, "missed": 0, "data_missing": 0}
    assert await schedule_runs(ctx) == {"enqueued": 0, "missed": 0, "data_missing": 0}
    # What arq leaves of a job that raised on its last try: no job, a failed result.
    job_id = run_job_id(version.id, due)
    await resources.redis.zrem(settings.queue_name, job_id)
    await resources.redis.delete(f"arq:job:{job_id}")
    failed = serialize_result(
        "run_version", (str(version.id), due.isoformat()), {}, 6, 0, False,
        RuntimeError("the database was out"), 0, 0, "run_version", default_queue_name, job_id,
    )  # fmt: skip
    assert failed is not None
    await resources.redis.set(result_key_prefix + job_id, failed)

    assert await schedule_runs(ctx) == {"enqueued": 1, "missed": 0, "data_missing": 0}
    await run_worker(settings, clock)
    runs, _forecasts = await recorded(resources, model)
    assert [(r.as_of, r.outcome) for r in runs] == [(due, "ok")]
    await take_offline(registry, me, model)


async def test_a_live_worker_starts_templates_for_the_live_layers_before_its_first_job(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    """After a start or restart, the first slot's runs fork from templates already up: the
    worker fills its bound with templates of the live versions' layers before its first job."""
    from prometheus_client import REGISTRY

    from foretell.runs import close_warm_templates, warm_templates
    from foretell.runtime.lanes import Lane

    me, model, _version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=44.5)
    )
    await close_warm_templates()  # as in a new worker process

    def count(kind: str) -> float:
        return REGISTRY.get_sample_value("foretell_warm_starts_total", {"result": kind}) or 0.0

    async with running_worker(settings, Lane.LIVE, clock) as worker:

        async def all_up() -> bool | None:
            pool = warm_templates(settings)
            full = pool is not None and len(pool.templates) == settings.warm_templates
            return True if full and worker.ctx.get("resources") else None

        await poll("the worker's templates", all_up, 60)
        pool = warm_templates(settings)
        assert pool is not None
        assert all(t.alive and not t.busy for t in pool.templates)
        before = {kind: count(kind) for kind in ("warm", "started", "cold")}
        set_time(clock, BASE + timedelta(hours=45, minutes=1))
        assert (await schedule_runs({"resources": resources}))["enqueued"] >= 1

        async def ran() -> list[Run] | None:
            runs, _forecasts = await recorded(resources, model)
            return runs or None

        runs = await poll("the slot's run", ran, 60)
    assert [(r.as_of, r.outcome) for r in runs] == [(BASE + timedelta(hours=45), "ok")]
    assert count("warm") > before["warm"]
    assert (count("started"), count("cold")) == (before["started"], before["cold"])
    await take_offline(registry, me, model)
