"""Runs end to end: real models pushed and built, run in the real sandbox against the
run-scoped DataFeed and SubmitForecasts, recorded in PostgreSQL."""

from __future__ import annotations

import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from sqlalchemy import select

from foretell import calendars
from foretell.bundle import Manifest
from foretell.bundle import scaffold as _scaffold
from foretell.common.v1 import common_pb2
from foretell.db.models import Forecast, LedgerEntry, Model, Run, Version
from foretell.errors import InvalidArgument
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.marketdata import BarColumns, ingest_bars
from foretell.performance._report import _coverage
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runs import RunRecord, RunScope, check_forecasts, execute_run
from foretell.runtime import Resources
from foretell.sandbox import SandboxLimits, sdk_dir
from foretell.sandbox import _run as sandbox_run
from foretell.settings import Settings
from tests._registry import model_name, push, run_builds, write_model
from tests.conftest import MovableClock, SignUp

if TYPE_CHECKING:
    from grpc import aio

# 48 hourly bars from BASE; runs look at the 30 that closed by AS_OF.
BASE = datetime(2024, 3, 4, tzinfo=UTC)
AS_OF = BASE + timedelta(hours=30)
TARGET = AS_OF + timedelta(hours=1)
LIMITS = SandboxLimits(wall_seconds=10, cpu_seconds=10, memory_mib=512)


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> pb_grpc.RegistryServiceAsyncStub:
    return pb_grpc.RegistryServiceStub(channel)


def symbols() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8].upper()
    return f"A{tag}", f"B{tag}"


async def add_bars(resources: Resources, symbol: str, rising: bool) -> None:
    n = 48
    closes = [100.0 + (i if rising else -i) for i in range(n)]
    bars = BarColumns(
        [int((BASE + timedelta(hours=i)).timestamp()) for i in range(n)],
        closes,
        [c + 1 for c in closes],
        [c - 1 for c in closes],
        closes,
        [10.0] * n,
    )
    # Bars every hour, day and night: a market that never closes.
    await ingest_bars(
        resources.db, symbol, "1h", bars, upsert=True, now=datetime.now(UTC), calendar="CRYPTO"
    )


async def built(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    folder: Path,
    names: tuple[str, ...],
) -> tuple[Model, Version]:
    me = await sign_up()
    created = await registry.CreateModel(
        pb.CreateModelRequest(
            model=pb.Model(
                name=model_name(),
                title="Run test",
                symbols=list(names),
                resolution=common_pb2.RESOLUTION_1H,
                horizon=1,
            )
        ),
        metadata=me.metadata,
    )
    await push(registry, me.metadata, created.model.name, folder)
    await run_builds(settings)
    async with resources.db.session() as session:
        model = await session.scalar(select(Model).where(Model.name == created.model.name))
        assert model is not None
        version = await session.scalar(select(Version).where(Version.model_id == model.id))
        assert version is not None and version.build_state == "ready", version
        return model, version


async def model_from_source(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    tmp_path: Path,
    source: str,
) -> tuple[Model, Version]:
    names = symbols()
    await add_bars(resources, names[0], rising=True)
    await add_bars(resources, names[1], rising=False)
    folder = write_model(tmp_path / "m", source=textwrap.dedent(source), symbols=names)
    return await built(registry, sign_up, settings, resources, folder, names)


async def run(
    resources: Resources, settings: Settings, model: Model, version: Version, clock: MovableClock
) -> RunRecord:
    return await execute_run(
        resources.db,
        resources.store,
        model,
        version,
        AS_OF,
        run_root=settings.data_dir / "runs",
        sdk=sdk_dir(settings.data_dir),
        limits=LIMITS,
        clock=clock,
    )


async def recorded(resources: Resources, model: Model) -> tuple[list[Run], list[Forecast]]:
    async with resources.db.session() as session:
        runs = list(await session.scalars(select(Run).where(Run.model_id == model.id)))
        forecasts = list(
            await session.scalars(
                select(Forecast).where(Forecast.model_id == model.id).order_by(Forecast.symbol)
            )
        )
    return runs, forecasts


MOMENTUM = """
from foretell.sdk import Forecast

def predict(ctx):
    out = []
    for symbol in ctx.symbols:
        bars = ctx.bars(symbol, lookback=10)
        assert len(bars) == 10, len(bars)
        ctx.log(f"{symbol} last open {bars.time[-1]} close {bars.close[-1]}")
        up = bars.close[-1] >= bars.close[0]
        out.append(Forecast(symbol, ctx.target_time, "up" if up else "down",
                            predicted_return=0.01 if up else -0.01, probability=0.6))
    return out
"""


async def test_a_model_reads_bars_and_its_forecasts_are_recorded_once(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    model, version = await model_from_source(
        registry, sign_up, settings, resources, tmp_path, MOMENTUM
    )
    first = await run(resources, settings, model, version, clock)
    assert first.outcome == "ok", first.detail + first.log
    assert first.recorded
    # The last bar seen closed at AS_OF: it opened one hour before.
    last_open = AS_OF - timedelta(hours=1)
    assert f"last open {last_open}" in first.log
    again = await run(resources, settings, model, version, clock)
    assert not again.recorded and again.run_id == first.run_id
    runs, forecasts = await recorded(resources, model)
    assert len(runs) == 1 and runs[0].kind == "live"
    a, b = model.symbols
    assert [(f.symbol, f.direction, f.target_time, f.probability) for f in forecasts] == [
        (a, "up", TARGET, 0.6),
        (b, "down", TARGET, 0.6),
    ]
    assert all(f.run_id == first.run_id and f.as_of == AS_OF for f in forecasts)


async def test_bars_after_as_of_are_out_of_range(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    source = """
    from datetime import timedelta

    def predict(ctx):
        ctx.bars(ctx.symbols[0], lookback=5, end=ctx.as_of + timedelta(hours=2))
        return []
    """
    model, version = await model_from_source(
        registry, sign_up, settings, resources, tmp_path, source
    )
    result = await run(resources, settings, model, version, clock)
    assert result.outcome == "model_error"
    assert "DataError: OUT_OF_RANGE" in result.detail
    _runs, forecasts = await recorded(resources, model)
    assert forecasts == []


async def test_another_symbol_is_refused_and_ingest_too(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    source = """
    import os, grpc
    from foretell.datafeed.v1 import datafeed_service_pb2 as pb
    from foretell.datafeed.v1 import datafeed_service_pb2_grpc as pb_grpc

    def predict(ctx):
        for symbol in ("EURUSD", ctx.symbols[0]):
            try:
                ctx.bars(symbol, lookback=5)
                print(symbol, "ok")
            except Exception as error:
                print(symbol, error)
        with grpc.insecure_channel("unix://" + os.environ["FORETELL_SOCKET"]) as channel:
            feed = pb_grpc.DataFeedServiceStub(channel)
            listed = feed.ListSymbols(pb.ListSymbolsRequest())
            print("listed", [(s.symbol, s.series[0].bar_count) for s in listed.symbols])
            try:
                feed.IngestBars(iter([pb.IngestBarsRequest()]))
            except grpc.RpcError as error:
                print("ingest", error.code().name)
        return []
    """
    model, version = await model_from_source(
        registry, sign_up, settings, resources, tmp_path, source
    )
    result = await run(resources, settings, model, version, clock)
    assert result.outcome == "ok", result.detail + result.log
    a, b = model.symbols
    assert "EURUSD PERMISSION_DENIED" in result.log
    assert f"{a} ok" in result.log
    # Only the model's symbols, counted up to as_of.
    assert f"listed [('{a}', 30), ('{b}', 30)]" in result.log
    assert "ingest PERMISSION_DENIED" in result.log


@pytest.mark.parametrize(
    ("forecast", "field"),
    [
        ("probability=1.5", "forecasts[0].probability"),
        ("predicted_return=float('nan')", "forecasts[0].predicted_return"),
        ("target_time=ctx.target_time + timedelta(hours=1)", "forecasts[0].target_time"),
    ],
)
async def test_invalid_forecasts_are_refused_and_nothing_is_recorded(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
    forecast: str,
    field: str,
) -> None:
    source = f"""
    from datetime import timedelta

    def predict(ctx):
        f = dict(symbol=ctx.symbols[0], target_time=ctx.target_time, direction=1)
        f.update(dict({forecast}))
        return [f]
    """
    model, version = await model_from_source(
        registry, sign_up, settings, resources, tmp_path, source
    )
    result = await run(resources, settings, model, version, clock)
    assert result.outcome == "invalid_output", result.detail + result.log
    assert field in result.detail
    runs, forecasts = await recorded(resources, model)
    assert [r.outcome for r in runs] == ["invalid_output"] and forecasts == []


def test_forecast_rules() -> None:
    scope = RunScope(("EURUSD",), "1h", 2, AS_OF)
    good = fc_pb.Forecast(symbol="EURUSD", direction=fc_pb.DIRECTION_UP, probability=0.5)
    good.target_time.FromDatetime(AS_OF + timedelta(hours=2))
    assert len(check_forecasts(scope, [good], set())) == 1
    bad = fc_pb.Forecast()
    bad.CopyFrom(good)
    bad.symbol = "GBPUSD"
    bad.direction = fc_pb.DIRECTION_UNSPECIFIED
    bad.target_time.FromDatetime(AS_OF)
    with pytest.raises(InvalidArgument) as caught:
        check_forecasts(scope, [good, bad, good], set())
    assert {v.field for v in caught.value.violations} == {
        "forecasts[1].symbol",
        "forecasts[1].direction",
        "forecasts[1].target_time",
        "forecasts[2].symbol",
    }
    with pytest.raises(ValueError, match="boundary"):
        RunScope(("EURUSD",), "1h", 1, AS_OF + timedelta(minutes=1))


async def test_a_crash_is_a_model_error_with_its_traceback(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    source = """
    def helper():
        raise ValueError("the model broke")

    def predict(ctx):
        return helper()
    """
    model, version = await model_from_source(
        registry, sign_up, settings, resources, tmp_path, source
    )
    result = await run(resources, settings, model, version, clock)
    assert result.outcome == "model_error"
    assert result.detail.startswith("Traceback (most recent call last):")
    assert 'File "/image/app/model.py"' in result.detail
    assert result.detail.endswith("ValueError: the model broke")
    runs, _forecasts = await recorded(resources, model)
    assert runs[0].detail == result.detail


async def test_an_infinite_loop_times_out(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    source = """
    def predict(ctx):
        while True:
            pass
    """
    model, version = await model_from_source(
        registry, sign_up, settings, resources, tmp_path, source
    )
    result = await execute_run(
        resources.db,
        resources.store,
        model,
        version,
        AS_OF,
        run_root=settings.data_dir / "runs",
        sdk=sdk_dir(settings.data_dir),
        limits=SandboxLimits(wall_seconds=3, cpu_seconds=3),
        clock=clock,
    )
    assert result.outcome == "timeout"
    runs, forecasts = await recorded(resources, model)
    assert [r.outcome for r in runs] == ["timeout"] and forecasts == []


async def test_the_scaffolded_model_runs_as_generated(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> None:
    names = symbols()
    await add_bars(resources, names[0], rising=True)
    await add_bars(resources, names[1], rising=False)
    manifest = Manifest(
        entrypoint="model:predict",
        symbols=names,
        resolution="1h",
        horizon=1,
        lookback=24,
        requirements="requirements.txt",
    )
    folder = tmp_path / "scaffold"
    _scaffold.write(folder, "scaffold", manifest, pushes_by_folder=True)
    model, version = await built(registry, sign_up, settings, resources, folder, names)
    result = await run(resources, settings, model, version, clock)
    assert result.outcome == "ok", result.detail + result.log
    _runs, forecasts = await recorded(resources, model)
    assert [(f.symbol, f.direction, f.target_time) for f in forecasts] == [
        (names[0], "up", TARGET),
        (names[1], "down", TARGET),
    ]
    assert all(f.probability is not None and 0.5 <= f.probability <= 0.75 for f in forecasts)


async def test_a_live_run_the_platform_failed_is_chained_and_never_counted(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, version = await model_from_source(
        registry, sign_up, settings, resources, tmp_path, MOMENTUM
    )
    # An nsjail that dies of SIGSEGV before running anything, every time.
    crashing = tmp_path / "nsjail"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(sandbox_run, "nsjail_binary", lambda: str(crashing))
    result = await run(resources, settings, model, version, clock)
    assert result.outcome == "platform_error"
    assert "nsjail was killed by SIGSEGV (status -11)" in result.detail
    runs, forecasts = await recorded(resources, model)
    assert [r.outcome for r in runs] == ["platform_error"] and forecasts == []
    # Chained in the ledger like any live run.
    async with resources.db.session() as session:
        chained = await session.scalar(
            select(LedgerEntry.run_id).where(LedgerEntry.run_id == runs[0].id)
        )
    assert chained == runs[0].id


def test_platform_errors_count_in_no_measure() -> None:
    step = 3600
    # Four hourly slots of the 24/7 calendar, the second one failed by the platform.
    start = int(datetime(2024, 3, 4, 10, tzinfo=UTC).timestamp())
    slots = np.array([start + i * step for i in range(4)], dtype=np.int64)
    calendar = calendars.get(calendars.CRYPTO)
    coverage = _coverage(calendar, "1h", slots, ["ok", "platform_error", "ok", "ok"])
    assert coverage.due_slots == 3
    assert (coverage.runs, coverage.runs_ok, coverage.runs_failed) == (3, 3, 0)
    assert coverage.slots_without_run == 0
    assert coverage.ratio == 1.0
