"""`foretell forecasts` and `foretell runs` through Envoy, against the real stack: paging,
filters, the delayed sample for non-subscribers, following new runs live, and runs for the
model's owner only. Runs are recorded with tests.test_forecasts.record, which announces each
run in its recording transaction as execute_run does (StreamForecasts learns of runs only
from that NOTIFY)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.cli._exit import Exit
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.subscription.v1 import subscription_service_pb2 as sub_pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as sub_grpc
from tests._billing import trial
from tests._envoy import Envoy
from tests._records import BASE, HOUR, make_model, record
from tests.conftest import FORETELL, SignUp
from tests.test_cli import _env, _fails, _login, _ok, _run

if TYPE_CHECKING:
    from grpc import aio

DAY = timedelta(days=1)
WAIT_S = 30.0


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> reg_grpc.RegistryServiceAsyncStub:
    return reg_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def forecast_stub(channel: aio.Channel) -> pb_grpc.ForecastServiceAsyncStub:
    return pb_grpc.ForecastServiceStub(channel)


@pytest.fixture
def url(envoy: Envoy) -> str:
    return envoy.base_url


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _listed(stdout: str) -> list[dict[str, object]]:
    document = json.loads(stdout)
    assert set(document) == {"forecasts"}
    forecasts: list[dict[str, object]] = document["forecasts"]
    return forecasts


async def test_forecasts_list_newest_first_across_pages_with_filters(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecast_stub: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    tmp_path: Path,
    url: str,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True, versions=2)
    # 60 runs of two forecasts: 120, more than the CLI's page of 100.
    for hour in range(60):
        await record(resources, m, BASE + hour * HOUR, version=1 if hour < 30 else 2)
    simulated = await record(resources, m, BASE, kind="simulated")
    await _login(tmp_path, url, m.owner)

    table = _ok(await _run(tmp_path, url, "forecasts", m.name))
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["AS", "OF", "SYMBOL", "DIRECTION", "TARGET", "RETURN",
                                "PROBABILITY", "VERSION", "RECORDED"]  # fmt: skip
    assert len(lines) == 1 + 20  # the newest 20 by default
    assert lines[1].startswith("2024-03-06 11:00Z")  # BASE + 59 h
    assert "+1.0000%" in lines[1] and "0.60" in lines[1] and "v2" in lines[1]
    assert table.stderr == ""  # the owner reads everything: no note

    everything = _listed(
        _ok(await _run(tmp_path, url, "forecasts", m.name, "--all", "--json")).stdout
    )
    direct = await forecast_stub.ListForecasts(
        pb.ListForecastsRequest(model=m.name, page_size=1000), metadata=m.owner.metadata
    )
    assert len(everything) == 120
    assert [(f["runId"], f["symbol"]) for f in everything] == [
        (f.run_id, f.symbol) for f in direct.forecasts
    ]
    first = everything[0]
    assert first["asOf"] == "2024-03-06T11:00:00Z" and first["version"] == 2
    assert first["kind"] == "RUN_KIND_LIVE"
    expected = {"EURUSD": "DIRECTION_UP", "GOOG": "DIRECTION_DOWN"}[str(first["symbol"])]
    assert first["direction"] == expected
    assert {"model", "targetTime", "predictedReturn", "probability", "recordedTime"} <= set(first)

    last = _listed(
        _ok(await _run(tmp_path, url, "forecasts", m.name, "--last", "105", "--json")).stdout
    )
    assert last == everything[:105]

    filtered = _listed(
        _ok(
            await _run(
                tmp_path, url, "forecasts", m.name, "--symbol", "GOOG", "--version", "1",
                "--since", "2024-03-04T10:00Z", "--until", "2024-03-04 13:00", "--all", "--json",
            )
        ).stdout
    )  # fmt: skip
    assert [(f["symbol"], f["version"], f["asOf"]) for f in filtered] == [
        ("GOOG", 1, "2024-03-04T12:00:00Z"),
        ("GOOG", 1, "2024-03-04T11:00:00Z"),
        ("GOOG", 1, "2024-03-04T10:00:00Z"),
    ]
    replay = _listed(
        _ok(await _run(tmp_path, url, "forecasts", m.name, "--simulated", "--json")).stdout
    )
    assert {f["runId"] for f in replay} == {str(simulated)}
    dry = _ok(await _run(tmp_path, url, "forecasts", m.name, "--dry"))
    assert dry.stdout.strip() == f"no dry forecasts of {m.name}"

    bad = _fails(await _run(tmp_path, url, "forecasts", m.name, "--since", "last week"), Exit.USAGE)
    assert "--since" in bad.stderr and len(bad.stderr.splitlines()) == 1
    _fails(await _run(tmp_path, url, "forecasts", m.name, "--last", "5", "--all"), Exit.USAGE)
    _fails(await _run(tmp_path, url, "forecasts", m.name, "--simulated", "--dry"), Exit.USAGE)
    backwards = ("--since", "2024-03-05", "--until", "2024-03-04")
    _fails(await _run(tmp_path, url, "forecasts", m.name, *backwards), Exit.USAGE)
    _fails(await _run(tmp_path, url, "forecasts", "no-such-model"), Exit.NOT_FOUND)


async def test_a_non_subscriber_lists_the_delayed_sample_with_a_note(
    registry: reg_grpc.RegistryServiceAsyncStub,
    channel: aio.Channel,
    sign_up: SignUp,
    resources: Resources,
    tmp_path: Path,
    url: str,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    old = await record(resources, m, BASE, recorded_at=datetime.now(UTC) - 10 * DAY)
    new = await record(resources, m, BASE + HOUR)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await _login(tmp_path, url, reader)

    sample = _ok(await _run(tmp_path, url, "forecasts", m.name, "--json"))
    assert {f["runId"] for f in _listed(sample.stdout)} == {str(old)}
    assert sample.stderr.startswith("note: you are not subscribed to")
    assert "delayed sample" in sample.stderr and len(sample.stderr.splitlines()) == 1

    await trial(channel, m.owner, reader, m.name)
    full = _ok(await _run(tmp_path, url, "forecasts", m.name, "--json"))
    assert {f["runId"] for f in _listed(full.stdout)} == {str(old), str(new)}
    assert full.stderr == ""


@asynccontextmanager
async def _following(
    config_dir: Path, url: str, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        FORETELL, "forecasts", *args, "--follow",
        env=_env(config_dir, url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    line = await asyncio.wait_for(stream.readline(), WAIT_S)
    assert line, "the command ended"
    return line.decode()


async def _until_following(process: asyncio.subprocess.Process) -> None:
    """Waits for the line the CLI prints once its stream is open and its listing printed."""
    line = await _line(process.stderr)
    assert line.startswith("following "), line


async def test_follow_prints_runs_recorded_after_the_stream_opened(
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    tmp_path: Path,
    url: str,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    before = await record(resources, m, BASE)
    await _login(tmp_path, url, m.owner)

    async with _following(tmp_path, url, m.name, "--json", "--symbol", "GOOG") as process:
        await _until_following(process)
        listed = json.loads(await _line(process.stdout))
        assert listed["runId"] == str(before) and listed["symbol"] == "GOOG"
        await record(resources, m, BASE + 2 * HOUR, kind="dry")  # another kind: not shown
        after = await record(resources, m, BASE + HOUR)
        arrived = json.loads(await _line(process.stdout))
        assert arrived["runId"] == str(after) and arrived["symbol"] == "GOOG"
        assert arrived["asOf"] == "2024-03-04T01:00:00Z"
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), WAIT_S) == 0
        assert process.stderr is not None
        assert b"Traceback" not in await process.stderr.read()

    # The table form: the listing oldest first, then each new forecast on a line.
    async with _following(tmp_path, url, m.name) as process:
        await _until_following(process)
        assert process.stdout is not None
        header = await _line(process.stdout)
        assert header.startswith("AS OF")
        listed_lines = [await _line(process.stdout) for _ in range(4)]
        assert [line[:17] for line in listed_lines] == ["2024-03-04 00:00Z"] * 2 + [
            "2024-03-04 01:00Z"
        ] * 2
        await record(resources, m, BASE + 3 * HOUR)
        new = {(await _line(process.stdout)).split()[2] for _ in range(2)}
        assert new == {"EURUSD", "GOOG"}
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), WAIT_S) == 0


async def test_follow_needs_a_subscription_and_stops_when_it_lapses(
    registry: reg_grpc.RegistryServiceAsyncStub,
    channel: aio.Channel,
    sign_up: SignUp,
    resources: Resources,
    tmp_path: Path,
    url: str,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await _login(tmp_path, url, reader)

    refused = _fails(await _run(tmp_path, url, "forecasts", m.name, "--follow"), Exit.DENIED)
    assert "subscribe" in refused.stderr and len(refused.stderr.splitlines()) == 1

    sub = await trial(channel, m.owner, reader, m.name)
    async with _following(tmp_path, url, m.name, "--json") as process:
        await _until_following(process)
        run_id = await record(resources, m, BASE)
        assert json.loads(await _line(process.stdout))["runId"] == str(run_id)
        await sub_grpc.SubscriptionServiceStub(channel).CancelSubscription(
            sub_pb.CancelSubscriptionRequest(id=sub.id, immediately=True),
            metadata=reader.metadata,
        )
        assert await asyncio.wait_for(process.wait(), WAIT_S) == Exit.DENIED
        assert process.stderr is not None
        error = (await process.stderr.read()).decode()
        assert error.startswith(f"error: cannot follow {m.name}: ") and "Traceback" not in error
        assert len(error.splitlines()) == 1


async def test_runs_for_the_owner_and_refused_for_others(
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    tmp_path: Path,
    url: str,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True, versions=2)
    ok = await record(resources, m, BASE, log="fitted 48 bars\n")
    failed = await record(resources, m, BASE + HOUR, version=2, outcome="model_error", log="boom")
    dry = await record(resources, m, BASE + 2 * HOUR, kind="dry")
    owner_dir, other_dir = tmp_path / "owner", tmp_path / "other"
    await _login(owner_dir, url, m.owner)

    table = _ok(await _run(owner_dir, url, "runs", m.name)).stdout.splitlines()
    assert table[0].split() == ["AS", "OF", "VERSION", "OUTCOME", "DURATION", "FORECASTS",
                                "DETAIL", "ID"]  # fmt: skip
    assert len(table) == 3
    assert str(failed) in table[1] and "model error" in table[1] and "v2" in table[1]
    assert str(ok) in table[2] and " ok " in table[2] and "0.25 s" in table[2]

    listed = json.loads(_ok(await _run(owner_dir, url, "runs", m.name, "--json")).stdout)
    assert [r["id"] for r in listed["runs"]] == [str(failed), str(ok)]
    assert listed["runs"][1]["forecastCount"] == 2 and "log" not in listed["runs"][1]
    assert [r["id"] for r in json.loads(
        _ok(await _run(owner_dir, url, "runs", m.name, "--version", "1", "--json")).stdout
    )["runs"]] == [str(ok)]  # fmt: skip
    last = _ok(await _run(owner_dir, url, "runs", m.name, "--last", "1")).stdout
    assert str(failed) in last and str(ok) not in last
    assert str(dry) in _ok(await _run(owner_dir, url, "runs", m.name, "--dry")).stdout

    one = _ok(await _run(owner_dir, url, "runs", m.name, str(ok))).stdout
    assert f"run:       {ok}" in one and "outcome:   ok" in one
    assert one.endswith("--- log ---\nfitted 48 bars\n")
    one_json = json.loads(
        _ok(await _run(owner_dir, url, "runs", m.name, str(failed), "--json")).stdout
    )
    assert one_json["id"] == str(failed) and one_json["log"] == "boom"
    assert one_json["outcome"] == "RUN_OUTCOME_MODEL_ERROR"
    _fails(await _run(owner_dir, url, "runs", m.name, str(ok), "--last", "3"), Exit.USAGE)
    _fails(await _run(owner_dir, url, "runs", m.name, "not-a-uuid"), Exit.USAGE)

    other = await sign_up()
    await _login(other_dir, url, other)
    _fails(await _run(other_dir, url, "runs", m.name), Exit.DENIED)
    _fails(await _run(other_dir, url, "runs", m.name, str(ok)), Exit.DENIED)
    hidden = await make_model(registry, sign_up, resources, public=False)
    _fails(await _run(other_dir, url, "runs", hidden.name), Exit.NOT_FOUND)
