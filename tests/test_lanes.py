"""Lanes: builds, live runs, dry runs and replays in separate queues with their own workers;
per-provider caps on builds and dry runs, refused cleanly; a flood of builds and dry runs from
one provider does not delay another's live slot (real PostgreSQL, Redis, sandbox, workers)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from foretell.common.v1 import common_pb2
from foretell.db.models import Model, Run, Version
from foretell.errors import ResourceExhausted
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runs import enqueue_replay
from foretell.runtime import Resources
from foretell.runtime.lanes import (
    Lane,
    ProviderCap,
    build_cap,
    concurrency,
    dry_run_cap,
    queue_name,
)
from foretell.scheduler import run_job_id
from foretell.settings import Settings, SettingsError, load_settings
from foretell.worker import close_worker, create_worker
from tests._registry import model_name, push, running_worker, write_model
from tests.conftest import FORETELL, MovableClock, SignUp, foretell_env
from tests.test_scheduler import BASE, poll, published_model, set_time

if TYPE_CHECKING:
    from grpc import aio


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> pb_grpc.RegistryServiceAsyncStub:
    return pb_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def forecasts_api(channel: aio.Channel) -> fc_grpc.ForecastServiceAsyncStub:
    return fc_grpc.ForecastServiceStub(channel)


def _retry_delay_s(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError("no RetryInfo in the error's details")


async def _create(
    registry: pb_grpc.RegistryServiceAsyncStub, metadata: tuple[tuple[str, str]]
) -> str:
    created = await registry.CreateModel(
        pb.CreateModelRequest(
            model=pb.Model(
                name=model_name(),
                title="Lanes test",
                symbols=["EURUSD"],
                resolution=common_pb2.RESOLUTION_1H,
                horizon=1,
            )
        ),
        metadata=metadata,
    )
    return created.model.name


def test_each_lane_has_its_queue_jobs_and_concurrency(settings: Settings) -> None:
    lanes = dataclasses.replace(
        settings, build_concurrency=3, live_concurrency=5, dry_run_concurrency=1
    )
    seen = {}
    for lane in Lane:
        worker = create_worker(lanes, lane=lane, burst=True)
        seen[lane] = (worker.queue_name, set(worker.functions), worker.max_jobs)
    assert seen == {
        Lane.BUILD: (f"{settings.queue_name}:build", {"build_version"}, 3),
        # The live lane keeps the queue name jobs were queued under before the lanes.
        Lane.LIVE: (settings.queue_name, {"run_version"}, 5),
        Lane.DRY: (f"{settings.queue_name}:dry", {"dry_run"}, 1),
        Lane.REPLAY: (f"{settings.queue_name}:replay", {"replay_run"}, settings.replay_concurrency),
    }


def test_lane_settings_come_from_the_environment() -> None:
    loaded = load_settings(
        {
            "FORETELL_BUILD_CONCURRENCY": "1",
            "FORETELL_LIVE_CONCURRENCY": "8",
            "FORETELL_DRY_RUN_CONCURRENCY": "3",
            "FORETELL_REPLAY_CONCURRENCY": "4",
            "FORETELL_PROVIDER_BUILDS": "5",
            "FORETELL_PROVIDER_DRY_RUNS": "6",
        }
    )
    assert [concurrency(loaded, lane) for lane in Lane] == [1, 8, 3, 4]
    assert (build_cap(loaded).cap, dry_run_cap(loaded).cap) == (5, 6)
    with pytest.raises(SettingsError, match="FORETELL_PROVIDER_BUILDS"):
        load_settings({"FORETELL_PROVIDER_BUILDS": "0"})


async def test_one_worker_process_can_serve_every_lane_and_stops_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = foretell_env(settings, FORETELL_SCHEDULER="off")
    with log.open("ab") as out:
        worker = await asyncio.create_subprocess_exec(
            FORETELL, "worker", env=env, stdout=out, stderr=out
        )
    try:

        async def all_started() -> bool | None:
            text = log.read_text()
            started = {lane for lane in Lane if f"lane={lane.value}" in text}
            return True if started == set(Lane) else None

        await poll("a worker for each lane", all_started, 60)
        worker.terminate()
        assert await asyncio.wait_for(worker.wait(), 30) == 0, log.read_text()
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


async def test_a_cap_holds_per_provider_and_frees_on_release_or_expiry(
    settings: Settings, resources: Resources
) -> None:
    cap = ProviderCap(Lane.DRY, cap=2, hold_s=60, retry_after_s=7)
    one, other = uuid.uuid4(), uuid.uuid4()
    first = await cap.take(resources.redis, settings, one)
    await cap.take(resources.redis, settings, one)
    with pytest.raises(ResourceExhausted) as refused:
        await cap.take(resources.redis, settings, one)
    assert refused.value.retry_after_s == 7
    # Another provider is not affected.
    await cap.take(resources.redis, settings, other)
    await first.release(resources.redis)
    assert await cap.held(resources.redis, settings, one) == 1
    await cap.take(resources.redis, settings, one)
    # A hold whose job never released it expires.
    short = ProviderCap(Lane.BUILD, cap=1, hold_s=0, retry_after_s=1)
    await short.take(resources.redis, settings, one)
    await short.take(resources.redis, settings, one)


async def test_concurrent_takes_never_pass_the_cap(
    settings: Settings, resources: Resources
) -> None:
    cap = ProviderCap(Lane.BUILD, cap=3, hold_s=60, retry_after_s=1)
    provider = uuid.uuid4()
    outcomes = await asyncio.gather(
        *(cap.take(resources.redis, settings, provider) for _ in range(20)),
        return_exceptions=True,
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 3
    assert all(isinstance(o, ResourceExhausted) for o in outcomes if isinstance(o, BaseException))


async def test_builds_past_the_cap_are_refused_whole_with_a_retry_hint(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    tmp_path: Path,
) -> None:
    me = await sign_up()
    names = [await _create(registry, me.metadata) for _ in range(settings.provider_builds + 1)]
    for i, name in enumerate(names[:-1]):
        folder = write_model(tmp_path / f"m{i}", extra={"n.py": f"N = {i}\n"})
        await push(registry, me.metadata, name, folder)
    with pytest.raises(grpc.RpcError) as refused:
        await push(registry, me.metadata, names[-1], write_model(tmp_path / "last"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "builds queued or running" in str(refused.value.details())
    assert _retry_delay_s(refused.value) > 0
    # Refused whole: no version was recorded.
    listed = await registry.ListVersions(
        pb.ListVersionsRequest(model=names[-1]), metadata=me.metadata
    )
    assert list(listed.versions) == []
    # An identical upload queues no build: it is answered with the existing version.
    again = await push(registry, me.metadata, names[0], tmp_path / "m0")
    assert (again.created, again.version.number) == (False, 1)
    # Another provider still builds.
    other = await sign_up()
    await push(registry, other.metadata, await _create(registry, other.metadata), tmp_path / "m0")
    # Once the builds are done, the provider's slots are free again.
    worker = create_worker(settings, lane=Lane.BUILD, burst=True)
    try:
        await worker.async_run()
    finally:
        await close_worker(worker)
    assert await build_cap(settings).held(resources.redis, settings, me.user.id) == 0
    await push(registry, me.metadata, names[-1], write_model(tmp_path / "last"))


async def test_dry_runs_past_the_cap_are_refused_with_a_retry_hint(
    forecasts_api: fc_grpc.ForecastServiceAsyncStub,
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    me, model, _version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=27.5)
    )
    cap = dry_run_cap(settings)
    holds = [
        await cap.take(resources.redis, settings, model.owner_id)
        for _ in range(settings.provider_dry_runs)
    ]
    request = fc_pb.DryRunRequest(model=model.name, version=1)
    with pytest.raises(grpc.RpcError) as refused:
        await forecasts_api.DryRun(request, metadata=me.metadata)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "dry runs queued or running" in str(refused.value.details())
    assert _retry_delay_s(refused.value) > 0
    # Nothing was queued for the refused request.
    assert await resources.redis.zcard(queue_name(settings, Lane.DRY)) == 0
    for hold in holds:
        await hold.release(resources.redis)


SLOW_IMPORT = """
import time
time.sleep({seconds})

def predict(ctx):
    return []
"""


@pytest.mark.timeout(120)
async def test_a_flood_of_builds_and_dry_runs_does_not_delay_a_live_slot(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    """One provider floods the build lane (slow builds, more than the lane runs at once) and
    the dry lane; another provider's live slot is queued meanwhile. Its run is recorded as soon
    as it ran, on the recorded times: queued-to-recorded is the run's own duration plus the
    lane's overhead, while the flood was still building."""
    _me, _model, version = await published_model(
        registry, sign_up, settings, resources, clock, tmp_path, BASE + timedelta(hours=27.5)
    )
    slot = BASE + timedelta(hours=30)
    # Real time while the flooder signs in and pushes (its tokens are checked against it).
    clock.offset = timedelta()
    # The flood: more slow builds than the build lane runs at once (past the per-provider cap,
    # which bounds the flood an API client could make: its holds are dropped after each push),
    # dry runs and a simulated replay.
    flooder = await sign_up()
    slow = write_model(tmp_path / "slow", source=SLOW_IMPORT.format(seconds=4))
    names = []
    for i in range(2 * settings.build_concurrency + 1):
        (slow / "n.py").write_text(f"N = {i}\n")
        names.append(await _create(registry, flooder.metadata))
        await push(registry, flooder.metadata, names[-1], slow)
        await resources.redis.delete(build_cap(settings).key(settings, flooder.user.id))
    async with resources.db.session() as session:
        flood = list(
            await session.scalars(
                select(Version.id)
                .join(Model, Model.id == Version.model_id)
                .where(Model.name.in_(names))
            )
        )
    set_time(clock, slot + timedelta(minutes=1))
    for hours in range(1, 7):
        await resources.redis.enqueue_job(
            "dry_run", str(version.id), (slot - timedelta(hours=hours)).isoformat(),
            _queue_name=queue_name(settings, Lane.DRY),
        )  # fmt: skip
    await enqueue_replay(resources, version.id, [slot - timedelta(hours=h) for h in range(1, 5)])
    async with (
        running_worker(settings, Lane.BUILD, clock),
        running_worker(settings, Lane.DRY, clock),
        running_worker(settings, Lane.REPLAY, clock),
    ):
        # The build lane is busy: its first builds are importing (sleeping) in their jails.
        async def lane_full() -> bool | None:
            async with resources.db.session() as session:
                rows = await session.scalars(
                    select(Version.build_state).where(Version.id.in_(flood))
                )
                return (
                    sum(state == "building" for state in rows) >= settings.build_concurrency or None
                )

        await poll("the build lane to fill", lane_full, 30)
        queued_at = clock()
        await resources.redis.enqueue_job(
            "run_version", str(version.id), slot.isoformat(),
            _job_id=run_job_id(version.id, slot), _queue_name=queue_name(settings, Lane.LIVE),
        )  # fmt: skip
        live = create_worker(settings, lane=Lane.LIVE, burst=True, clock=clock)
        try:
            await live.async_run()
        finally:
            await close_worker(live)
        async with resources.db.session() as session:
            run = await session.scalar(
                select(Run).where(Run.version_id == version.id, Run.kind == "live")
            )
            states = list(
                await session.scalars(select(Version.build_state).where(Version.id.in_(flood)))
            )
    assert run is not None and run.outcome == "ok", run and run.detail
    waited = (run.created_at - queued_at).total_seconds()
    # The run's own time plus the lane's overhead (queue pick-up, recording): never a build's.
    assert waited < run.duration_s + 2.0, (waited, run.duration_s)
    # The flood was still going when the live run was recorded.
    assert any(state in ("queued", "building") for state in states), states


async def test_a_worker_closed_while_a_job_is_cancelled_outside_its_handling_still_shuts_down(
    settings: Settings,
) -> None:
    """arq's own close re-raises a job task cancelled before the job's error handling (as when it
    is still reading the job from Redis) and then skips the shutdown, leaving the webhook
    dispatcher and the bars listener running after their worker. close_worker runs it."""
    settings = dataclasses.replace(settings, queue_name=f"close-{uuid.uuid4()}")
    worker = create_worker(
        settings, lane=Lane.LIVE, role="cron", scheduler=False, handle_signals=False
    )
    started, shut = asyncio.Event(), asyncio.Event()
    startup, shutdown = worker.on_startup, worker.on_shutdown
    assert startup is not None and shutdown is not None

    async def record_startup(ctx: dict[str, object]) -> None:
        await startup(ctx)
        started.set()

    async def record_shutdown(ctx: dict[str, object]) -> None:
        await shutdown(ctx)
        shut.set()

    worker.on_startup, worker.on_shutdown = record_startup, record_shutdown
    running = asyncio.create_task(worker.async_run())
    await asyncio.wait_for(started.wait(), 60)
    # A job task that has not reached its own handling: cancelling it raises CancelledError.
    worker.tasks["stuck"] = asyncio.create_task(asyncio.Event().wait())
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await close_worker(worker)
    assert shut.is_set()
