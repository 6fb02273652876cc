"""Dry runs: ForecastService.DryRun for the model's owner (recorded as kind dry, never in the
live reads), `foretell run MODEL` against the gateway and `foretell run --local` on this
machine, all through the real sandbox."""

from __future__ import annotations

import csv
import json
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from arq.jobs import Job
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select

from foretell.bundle import Manifest
from foretell.bundle import scaffold as _scaffold
from foretell.cli._exit import Exit
from foretell.common.v1 import common_pb2
from foretell.db.models import Forecast, Run
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runs import _platform as runs_platform
from foretell.runs._execute import JAIL_ATTEMPTS
from foretell.runtime import Resources
from foretell.sandbox import _run as sandbox_run
from foretell.sandbox import nsjail_binary
from foretell.settings import Settings
from tests._envoy import Envoy
from tests._registry import model_name, push, run_builds, write_model
from tests.conftest import SignedIn, SignUp, status_code
from tests.test_cli import _foretell, _login, _run
from tests.test_runs import AS_OF, BASE, MOMENTUM, TARGET, add_bars, symbols

if TYPE_CHECKING:
    from grpc import aio


@pytest.fixture(autouse=True)
def _dry_lane(dry_lane: None) -> None:
    """Dry runs run on the dry lane's workers, never in the API process."""


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> pb_grpc.RegistryServiceAsyncStub:
    return pb_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def forecasts(channel: aio.Channel) -> fc_grpc.ForecastServiceAsyncStub:
    return fc_grpc.ForecastServiceStub(channel)


def _ts(moment: object) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)  # type: ignore[arg-type]
    return stamp


async def _owned_model(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    tmp_path: Path,
) -> tuple[SignedIn, str, tuple[str, str]]:
    names = symbols()
    await add_bars(resources, names[0], rising=True)
    await add_bars(resources, names[1], rising=False)
    folder = write_model(tmp_path / "m", source=textwrap.dedent(MOMENTUM), symbols=names)
    owner = await sign_up()
    created = await registry.CreateModel(
        pb.CreateModelRequest(
            model=pb.Model(
                name=model_name(),
                title="Dry run test",
                symbols=list(names),
                resolution=common_pb2.RESOLUTION_1H,
                horizon=1,
                visibility=pb.VISIBILITY_PUBLIC,
            )
        ),
        metadata=owner.metadata,
    )
    await push(registry, owner.metadata, created.model.name, folder)
    await run_builds(settings)
    return owner, created.model.name, names


async def test_a_dry_run_is_recorded_as_dry_and_never_read_as_live(
    registry: pb_grpc.RegistryServiceAsyncStub,
    forecasts: fc_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    tmp_path: Path,
) -> None:
    owner, name, names = await _owned_model(registry, sign_up, settings, resources, tmp_path)
    request = fc_pb.DryRunRequest(model=name, as_of=_ts(AS_OF))
    response = await forecasts.DryRun(request, metadata=owner.metadata, timeout=120)
    assert response.recorded
    assert response.run.outcome == fc_pb.RUN_OUTCOME_OK, response.run.detail + response.run.log
    assert response.run.kind == fc_pb.RUN_KIND_DRY and response.run.version == 1
    assert "last open" in response.run.log
    got = sorted((f.symbol, f.direction, f.target_time.ToDatetime()) for f in response.forecasts)
    target = TARGET.replace(tzinfo=None)
    assert got == [(names[0], fc_pb.DIRECTION_UP, target), (names[1], fc_pb.DIRECTION_DOWN, target)]
    assert all(f.kind == fc_pb.RUN_KIND_DRY for f in response.forecasts)
    # Run by a job of the dry lane's workers, not in the API process: the job's kept result
    # names the run.
    results = []
    async for key in resources.redis.scan_iter(match="arq:result:dry:*"):
        info = await Job(key.decode().removeprefix("arq:result:"), resources.redis).result_info()
        if info is not None and info.result.get("run_id") == response.run.id:
            results.append(info.function)
    assert results == ["dry_run"]
    # The same (version, as_of) again: the recorded run, not a second one (proto3 JSON leaves
    # recorded=false out).

    again = await forecasts.DryRun(request, metadata=owner.metadata, timeout=120)
    assert not again.recorded and again.run.id == response.run.id
    async with resources.db.session() as session:
        runs = list(await session.scalars(select(Run).where(Run.id == uuid.UUID(response.run.id))))
        rows = list(await session.scalars(select(Forecast).where(Forecast.run_id == runs[0].id)))
    assert [r.kind for r in runs] == ["dry"] and {f.kind for f in rows} == {"dry"}
    live = await forecasts.ListForecasts(
        fc_pb.ListForecastsRequest(model=name), metadata=owner.metadata
    )
    assert list(live.forecasts) == []
    dry = await forecasts.ListForecasts(
        fc_pb.ListForecastsRequest(model=name, kind=fc_pb.RUN_KIND_DRY), metadata=owner.metadata
    )
    assert len(dry.forecasts) == 2


async def test_only_the_owner_dry_runs_and_as_of_is_checked(
    registry: pb_grpc.RegistryServiceAsyncStub,
    forecasts: fc_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    tmp_path: Path,
) -> None:
    owner, name, _names = await _owned_model(registry, sign_up, settings, resources, tmp_path)
    other = await sign_up()
    with pytest.raises(grpc.RpcError) as denied:
        await forecasts.DryRun(
            fc_pb.DryRunRequest(model=name, as_of=_ts(AS_OF)), metadata=other.metadata
        )
    assert status_code(denied.value) == grpc.StatusCode.PERMISSION_DENIED
    future = resources.clock() + timedelta(days=2)
    future = future.replace(minute=0, second=0, microsecond=0)
    for as_of in (future, AS_OF + timedelta(minutes=30)):
        with pytest.raises(grpc.RpcError) as bad:
            await forecasts.DryRun(
                fc_pb.DryRunRequest(model=name, as_of=_ts(as_of)), metadata=owner.metadata
            )
        assert status_code(bad.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as missing:
        await forecasts.DryRun(
            fc_pb.DryRunRequest(model=name, version=7, as_of=_ts(AS_OF)), metadata=owner.metadata
        )
    assert status_code(missing.value) == grpc.StatusCode.NOT_FOUND


async def test_foretell_run_prints_forecasts_and_logs(
    registry: pb_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    envoy: Envoy,
    tmp_path: Path,
) -> None:
    owner, name, names = await _owned_model(registry, sign_up, settings, resources, tmp_path)
    url = f"http://{envoy.grpc_target}"
    config = tmp_path / "config"
    await _login(config, url, owner)
    result = await _run(config, url, "run", name, "--as-of", AS_OF.isoformat())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run" in result.stdout and ": ok in" in result.stdout
    assert names[0] in result.stdout and "up" in result.stdout and "last open" in result.stdout
    result = await _run(config, url, "run", name, "--as-of", AS_OF.isoformat(), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert "recorded" not in document and len(document["forecasts"]) == 2


def test_foretell_run_local_runs_the_scaffold_on_a_csv(tmp_path: Path) -> None:
    manifest = Manifest(
        entrypoint="model:predict",
        symbols=("EURUSD",),
        resolution="1h",
        horizon=1,
        lookback=24,
        requirements="requirements.txt",
    )
    folder = tmp_path / "scaffold"
    _scaffold.write(folder, "scaffold", manifest, pushes_by_folder=True)
    data = tmp_path / "EURUSD.csv"
    with open(data, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["Datetime", "Open", "High", "Low", "Close", "Volume"])
        for i in range(48):
            close = 1.1 + i * 0.001
            when = (BASE + timedelta(hours=i)).strftime("%Y-%m-%d %H:%M:%S")
            writer.writerow([when, close, close + 0.001, close - 0.001, close, 10])
    result = _foretell(tmp_path / "config", "", "run", "--local", str(folder), "--data", str(data))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "local run" in result.stdout and ": ok in" in result.stdout
    assert "EURUSD" in result.stdout and "up" in result.stdout
    # A model that raises: exit RUN_FAILED with its traceback in the log.
    (folder / "model.py").write_text("def predict(ctx):\n    raise RuntimeError('boom')\n")
    failed = _foretell(tmp_path / "config", "", "run", "--local", str(folder), "--data", str(data))
    assert failed.returncode == Exit.RUN_FAILED, failed.stdout + failed.stderr
    assert "boom" in failed.stdout


async def test_foretell_run_local_without_data_uses_the_platforms_bars(
    sign_up: SignUp, resources: Resources, envoy: Envoy, tmp_path: Path
) -> None:
    names = symbols()
    await add_bars(resources, names[0], rising=True)
    await add_bars(resources, names[1], rising=False)
    folder = write_model(tmp_path / "m", source=textwrap.dedent(MOMENTUM), symbols=names)
    url = f"http://{envoy.grpc_target}"
    config = tmp_path / "config"
    await _login(config, url, await sign_up())
    result = await _run(config, url, "run", "--local", str(folder), "--as-of", AS_OF.isoformat(),
                        "--json")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["asOf"] == AS_OF.isoformat()
    directions = {f["symbol"]: f["direction"] for f in document["forecasts"]}
    assert directions == {names[0]: "up", names[1]: "down"}
    # Nothing after as_of reached the model: its log names the last bar it saw.
    assert f"last open {AS_OF - timedelta(hours=1)}" in document["log"], document["log"]
    # A symbol the platform has no bars of: a plain not-found error, nothing run.
    lonely = write_model(tmp_path / "n", source=textwrap.dedent(MOMENTUM), symbols=("NOBARS1",))
    missing = await _run(config, url, "run", "--local", str(lonely))
    assert missing.returncode == Exit.NOT_FOUND, missing.stdout + missing.stderr
    assert "NOBARS1" in missing.stderr


def _crashing_nsjail(directory: Path, crashes: int) -> Path:
    """An nsjail stand-in that dies of SIGSEGV before running anything, as the real one was
    seen to, `crashes` times; then it execs the real nsjail."""
    counter = directory / "crashes"
    counter.write_text("0")
    script = directory / "nsjail"
    script.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        n=$(cat {counter})
        if [ "$n" -lt {crashes} ]; then
          echo $((n + 1)) > {counter}
          kill -SEGV $$
        fi
        exec {nsjail_binary()} "$@"
        """)
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("crashes", [2, 5])
async def test_a_jail_that_never_ran_is_retried_then_recorded_as_the_platforms(
    crashes: int,
    registry: pb_grpc.RegistryServiceAsyncStub,
    forecasts: fc_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner, name, _ = await _owned_model(registry, sign_up, settings, resources, tmp_path)
    fake = _crashing_nsjail(tmp_path, crashes)
    monkeypatch.setattr(sandbox_run, "nsjail_binary", lambda: str(fake))
    # The cold start's retries: warm starts off (a failed template falls back to this path).
    monkeypatch.setattr(runs_platform, "warm_templates", lambda _settings: None)
    request = fc_pb.DryRunRequest(model=name, as_of=_ts(AS_OF))
    response = await forecasts.DryRun(request, metadata=owner.metadata, timeout=120)
    assert response.recorded
    if crashes < JAIL_ATTEMPTS:
        # Retried at once: the model ran on the third attempt.
        assert response.run.outcome == fc_pb.RUN_OUTCOME_OK, response.run.detail
        assert len(response.forecasts) == 2
    else:
        # Never INTERNAL: the run is recorded as the platform's failure, with the reason.
        assert response.run.outcome == fc_pb.RUN_OUTCOME_PLATFORM_ERROR
        assert "status -11" in response.run.detail
        assert "platform" in response.run.detail
        assert not response.forecasts
    assert (tmp_path / "crashes").read_text().strip() == str(min(crashes, JAIL_ATTEMPTS))
