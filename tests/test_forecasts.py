"""ForecastService reads: recorded forecasts listed and streamed, runs for their owner, the
access rules, and the REST surface through Envoy. Runs and forecasts are inserted directly
(test_runs.py covers recording them from real sandboxed runs); a recorded run is announced the
way `execute_run` announces it, in the recording transaction."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy import text

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.composition import start_services
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.settings import Address
from tests._billing import trial
from tests._envoy import Envoy
from tests._errors import field_violations
from tests._records import BASE, HOUR, make_model, record, record_run
from tests.conftest import SignUp, status_code


@pytest.fixture(scope="module")
def forecasts(channel: aio.Channel) -> pb_grpc.ForecastServiceAsyncStub:
    return pb_grpc.ForecastServiceStub(channel)


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> reg_grpc.RegistryServiceAsyncStub:
    return reg_grpc.RegistryServiceStub(channel)


def ts(when: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(when)
    return out


async def test_list_filters_and_pages_newest_first(
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=False, versions=2)
    for hour in range(5):
        await record(resources, m, BASE + hour * HOUR, version=1 if hour < 3 else 2)
    md = m.owner.metadata

    everything = await forecasts.ListForecasts(pb.ListForecastsRequest(model=m.name), metadata=md)
    assert len(everything.forecasts) == 10 and not everything.next_page_token
    as_ofs = [f.as_of.ToDatetime(tzinfo=UTC) for f in everything.forecasts]
    assert as_ofs == sorted(as_ofs, reverse=True)
    first = everything.forecasts[0]
    assert first.model == m.name and first.kind == pb.RUN_KIND_LIVE and first.version == 2
    assert first.target_time.ToDatetime(tzinfo=UTC) == BASE + 5 * HOUR
    assert first.HasField("probability") and first.probability == pytest.approx(0.6)
    assert first.run_id and first.HasField("recorded_time")

    # Pages of 3 walk the same list without gaps or repeats.
    seen: list[tuple[str, str]] = []
    token = ""
    while True:
        page = await forecasts.ListForecasts(
            pb.ListForecastsRequest(model=m.name, page_size=3, page_token=token), metadata=md
        )
        assert len(page.forecasts) <= 3
        seen.extend((f.run_id, f.symbol) for f in page.forecasts)
        token = page.next_page_token
        if not token:
            break
    assert seen == [(f.run_id, f.symbol) for f in everything.forecasts]

    only = await forecasts.ListForecasts(
        pb.ListForecastsRequest(
            model=m.name,
            symbol="GOOG",
            version=1,
            start_time=ts(BASE + HOUR),
            end_time=ts(BASE + 3 * HOUR),
        ),
        metadata=md,
    )
    assert [(f.symbol, f.version) for f in only.forecasts] == [("GOOG", 1)] * 2
    assert [f.as_of.ToDatetime(tzinfo=UTC) for f in only.forecasts] == [
        BASE + 2 * HOUR,
        BASE + HOUR,
    ]


async def test_kinds_never_mix(
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    live = await record(resources, m, BASE)
    dry = await record(resources, m, BASE, kind="dry")
    simulated = await record(resources, m, BASE + HOUR, kind="simulated")
    md = m.owner.metadata

    async def runs_of(kind: pb.RunKind.ValueType) -> set[str]:
        reply = await forecasts.ListForecasts(
            pb.ListForecastsRequest(model=m.name, kind=kind), metadata=md
        )
        assert all(f.kind == (kind or pb.RUN_KIND_LIVE) for f in reply.forecasts), reply.forecasts
        return {f.run_id for f in reply.forecasts}

    assert await runs_of(pb.RUN_KIND_UNSPECIFIED) == {str(live)}
    assert await runs_of(pb.RUN_KIND_LIVE) == {str(live)}
    assert await runs_of(pb.RUN_KIND_DRY) == {str(dry)}
    assert await runs_of(pb.RUN_KIND_SIMULATED) == {str(simulated)}
    runs = await forecasts.ListRuns(pb.ListRunsRequest(model=m.name), metadata=md)
    assert [r.id for r in runs.runs] == [str(live)]
    dry_runs = await forecasts.ListRuns(
        pb.ListRunsRequest(model=m.name, kind=pb.RUN_KIND_DRY), metadata=md
    )
    assert [r.id for r in dry_runs.runs] == [str(dry)]


async def test_runs_filter_by_outcome(
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    http: httpx.AsyncClient,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    ok = await record_run(resources, m, BASE, outcome="ok")
    failed = await record_run(resources, m, BASE + HOUR, outcome="model_error")
    await record_run(resources, m, BASE + 2 * HOUR, kind="dry", outcome="model_error")
    md = m.owner.metadata

    async def ids(outcome: pb.RunOutcome.ValueType) -> list[str]:
        reply = await forecasts.ListRuns(
            pb.ListRunsRequest(model=m.name, outcome=outcome), metadata=md
        )
        return [r.id for r in reply.runs]

    assert await ids(pb.RUN_OUTCOME_UNSPECIFIED) == [str(failed), str(ok)]
    assert await ids(pb.RUN_OUTCOME_MODEL_ERROR) == [str(failed)]
    assert await ids(pb.RUN_OUTCOME_OK) == [str(ok)]
    assert await ids(pb.RUN_OUTCOME_TIMEOUT) == []
    with pytest.raises(grpc.RpcError) as bad:
        await ids(pb.RunOutcome.ValueType(99))
    assert status_code(bad.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(bad.value)) == {"outcome"}

    auth = {"authorization": f"Bearer {m.owner.tokens.access_token}"}
    rest = await http.get(
        f"/v1/models/{m.name}/runs", params={"outcome": "RUN_OUTCOME_MODEL_ERROR"}, headers=auth
    )
    assert [r["id"] for r in rest.json()["runs"]] == [str(failed)]


async def test_access_rules(
    channel: aio.Channel,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    account: account_grpc.AccountServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    private = await make_model(registry, sign_up, resources, public=False)
    public = await make_model(registry, sign_up, resources, public=True)
    private_run = await record(resources, private, BASE)
    public_run = await record(resources, public, BASE)
    other = await sign_up()
    subscriber = await sign_up(account_pb.ROLE_SUBSCRIBER)

    for caller in (other, subscriber):
        md = caller.metadata
        for call in (
            forecasts.ListForecasts(pb.ListForecastsRequest(model=private.name), metadata=md),
            forecasts.ListRuns(pb.ListRunsRequest(model=private.name), metadata=md),
            forecasts.GetRun(
                pb.GetRunRequest(model=private.name, run_id=str(private_run)), metadata=md
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                await call
            assert status_code(caught.value) == grpc.StatusCode.NOT_FOUND
        # A public model's recent forecasts need a subscription: others list only the delayed
        # sample (nothing recorded this week); its runs are the owner's.
        listed = await forecasts.ListForecasts(
            pb.ListForecastsRequest(model=public.name), metadata=md
        )
        assert list(listed.forecasts) == []
        for call in (
            forecasts.ListRuns(pb.ListRunsRequest(model=public.name), metadata=md),
            forecasts.GetRun(
                pb.GetRunRequest(model=public.name, run_id=str(public_run)), metadata=md
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                await call
            assert status_code(caught.value) == grpc.StatusCode.PERMISSION_DENIED

    # A run id of another model is not found under this one.
    with pytest.raises(grpc.RpcError) as caught:
        await forecasts.GetRun(
            pb.GetRunRequest(model=private.name, run_id=str(public_run)),
            metadata=private.owner.metadata,
        )
    assert status_code(caught.value) == grpc.StatusCode.NOT_FOUND

    # Reads need a credential; an API key is one.
    with pytest.raises(grpc.RpcError) as caught:
        await forecasts.ListForecasts(pb.ListForecastsRequest(model=public.name))
    assert status_code(caught.value) == grpc.StatusCode.UNAUTHENTICATED
    await trial(channel, public.owner, subscriber, public.name)
    key = await account.CreateApiKey(
        account_pb.CreateApiKeyRequest(name="script"), metadata=subscriber.metadata
    )
    by_key = await forecasts.ListForecasts(
        pb.ListForecastsRequest(model=public.name),
        metadata=(("authorization", f"Bearer {key.secret}"),),
    )
    assert len(by_key.forecasts) == 2

    # SubmitForecasts stays refused on the public servers.
    with pytest.raises(grpc.RpcError) as caught:
        await forecasts.SubmitForecasts(
            pb.SubmitForecastsRequest(), metadata=private.owner.metadata
        )
    assert status_code(caught.value) == grpc.StatusCode.PERMISSION_DENIED


async def test_runs_for_the_owner_with_logs(
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    ok = await record(resources, m, BASE, log="hello from the model\n")
    failed = await record(resources, m, BASE + HOUR, outcome="model_error", log="Traceback…\n")
    md = m.owner.metadata

    runs = await forecasts.ListRuns(pb.ListRunsRequest(model=m.name), metadata=md)
    assert [r.id for r in runs.runs] == [str(failed), str(ok)]
    assert [r.outcome for r in runs.runs] == [pb.RUN_OUTCOME_MODEL_ERROR, pb.RUN_OUTCOME_OK]
    assert [r.forecast_count for r in runs.runs] == [0, 2]
    assert all(r.log == "" for r in runs.runs)
    assert runs.runs[1].duration.ToMilliseconds() == 250
    assert runs.runs[1].version == 1 and runs.runs[1].kind == pb.RUN_KIND_LIVE

    first = await forecasts.ListRuns(pb.ListRunsRequest(model=m.name, page_size=1), metadata=md)
    second = await forecasts.ListRuns(
        pb.ListRunsRequest(model=m.name, page_size=1, page_token=first.next_page_token),
        metadata=md,
    )
    assert [r.id for r in (*first.runs, *second.runs)] == [str(failed), str(ok)]
    assert not second.next_page_token

    got = await forecasts.GetRun(pb.GetRunRequest(model=m.name, run_id=str(ok)), metadata=md)
    assert got.run.log == "hello from the model\n"
    assert got.run.as_of.ToDatetime(tzinfo=UTC) == BASE


async def test_every_outcome_the_schema_allows_is_readable(
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    """A run is readable whatever the database let it be recorded with: an outcome added to
    the schema's CHECK constraint without a RunOutcome value would make ListRuns fail."""
    async with resources.db.engine.connect() as conn:
        check = await conn.scalar(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conname = 'runs_outcome_check'"
            )
        )
    outcomes = re.findall(r"'([a-z_]+)'", str(check))
    assert "missed" in outcomes and "ok" in outcomes
    m = await make_model(registry, sign_up, resources, public=False)
    for i, outcome in enumerate(outcomes):
        await record(resources, m, BASE + i * HOUR, outcome=outcome)
    runs = await forecasts.ListRuns(pb.ListRunsRequest(model=m.name), metadata=m.owner.metadata)
    got = [pb.RunOutcome.Name(r.outcome) for r in reversed(runs.runs)]
    assert got == [f"RUN_OUTCOME_{o.upper()}" for o in outcomes]


async def test_bad_input_names_the_fields(
    forecasts: pb_grpc.ForecastServiceAsyncStub, sign_up: SignUp
) -> None:
    me = await sign_up()
    cases: list[tuple[object, set[str]]] = [
        (
            forecasts.ListForecasts(
                pb.ListForecastsRequest(
                    model="Bad Name!",
                    page_token="%%%",
                    page_size=5000,
                    start_time=ts(BASE + HOUR),
                    end_time=ts(BASE),
                    symbol="lower",
                    version=-1,
                ),
                metadata=me.metadata,
            ),
            {"model", "page_token", "page_size", "end_time", "symbol", "version"},
        ),
        (
            forecasts.ListRuns(
                pb.ListRunsRequest(
                    model="m-ok-name",
                    page_token="eyJhIjogMX0=",
                    start_time=ts(BASE),
                    end_time=ts(BASE),
                ),
                metadata=me.metadata,
            ),
            {"page_token", "end_time"},
        ),
        (
            forecasts.GetRun(pb.GetRunRequest(model="", run_id="nope"), metadata=me.metadata),
            {"model", "run_id"},
        ),
    ]
    for call, fields in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await call  # type: ignore[misc]
        assert status_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == fields, field_violations(caught.value)

    stream = forecasts.StreamForecasts(
        pb.StreamForecastsRequest(model="X", kind=pb.RunKind.ValueType(9)),
        metadata=me.metadata,
    )
    with pytest.raises(grpc.RpcError) as caught:
        await stream.read()
    assert status_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"model", "kind"}


async def test_stream_delivers_forecasts_recorded_after_it_opened(
    channel: aio.Channel,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    await record(resources, m, BASE)  # before the stream: never sent
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await trial(channel, m.owner, reader, m.name)
    stream = forecasts.StreamForecasts(
        pb.StreamForecastsRequest(model=m.name, symbol="GOOG"), metadata=reader.metadata
    )
    try:
        # Headers arrive once the server listens: anything recorded from now on is delivered.
        await asyncio.wait_for(stream.initial_metadata(), 10)
        # Another model's run, a dry run and a live run of ours: only the last comes through.
        other = await make_model(registry, sign_up, resources, public=True)
        await record(resources, other, BASE + HOUR)
        await record(resources, m, BASE + HOUR, kind="dry")
        live = await record(resources, m, BASE + 2 * HOUR)
        message = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(message, pb.StreamForecastsResponse)
        assert [(f.run_id, f.symbol, f.kind) for f in message.forecasts] == [
            (str(live), "GOOG", pb.RUN_KIND_LIVE)
        ]
        assert message.forecasts[0].as_of.ToDatetime(tzinfo=UTC) == BASE + 2 * HOUR
        nxt = await record(resources, m, BASE + 3 * HOUR)
        message = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(message, pb.StreamForecastsResponse)
        assert [f.run_id for f in message.forecasts] == [str(nxt)]
    finally:
        stream.cancel()


async def test_an_idle_stream_sends_a_heartbeat_at_each_recheck(
    channel: aio.Channel,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    """Nothing recorded: an empty message at each entitlement re-check, so that a gateway's
    stream idle timeout never ends a quiet stream (and the client knows it is alive)."""
    quick = dataclasses.replace(
        resources, settings=dataclasses.replace(resources.settings, entitlement_recheck_s=0.2)
    )
    running = await start_services(quick, ["forecast"], Address("127.0.0.1", 0))
    m = await make_model(registry, sign_up, resources, public=True)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await trial(channel, m.owner, reader, m.name)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{running.port}") as own:
            stream = pb_grpc.ForecastServiceStub(own).StreamForecasts(
                pb.StreamForecastsRequest(model=m.name), metadata=reader.metadata
            )
            try:
                for _ in range(2):
                    beat = await asyncio.wait_for(stream.read(), 5)
                    assert isinstance(beat, pb.StreamForecastsResponse)
                    assert list(beat.forecasts) == []
                live = await record(resources, m, BASE + HOUR)
                while True:
                    message = await asyncio.wait_for(stream.read(), 5)
                    assert isinstance(message, pb.StreamForecastsResponse)
                    if message.forecasts:
                        break  # heartbeats until then
                assert {f.run_id for f in message.forecasts} == {str(live)}
            finally:
                stream.cancel()
    finally:
        await running.stop(0.5)


async def _drop_feed_connections(resources: Resources) -> int:
    """Ends the forecast feed's listening connections from the server side, as a restart of
    PostgreSQL would (the shared server itself is never restarted by the suite)."""
    async with resources.db.read.connect() as conn:
        dropped = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%foretell_access%'"
            )
        )
    return int(dropped or 0)


async def test_a_stream_outlives_the_feeds_lost_connection_and_sends_what_it_missed_once(
    channel: aio.Channel,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await trial(channel, m.owner, reader, m.name)
    stream = forecasts.StreamForecasts(
        pb.StreamForecastsRequest(model=m.name, symbol="GOOG"), metadata=reader.metadata
    )
    try:
        await asyncio.wait_for(stream.initial_metadata(), 10)
        first = await record(resources, m, BASE + HOUR)
        message = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(message, pb.StreamForecastsResponse)
        assert [f.run_id for f in message.forecasts] == [str(first)]

        assert await _drop_feed_connections(resources) >= 1
        # Recorded while the feed listens again, or before: announced to no one either way
        # unless the feed reads what it missed.
        missed = await record(resources, m, BASE + 2 * HOUR)
        message = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(message, pb.StreamForecastsResponse)
        assert [f.run_id for f in message.forecasts] == [str(missed)]

        # Listening again: the next run comes by notice, and the missed one is not repeated.
        after = await record(resources, m, BASE + 3 * HOUR)
        message = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(message, pb.StreamForecastsResponse)
        assert [f.run_id for f in message.forecasts] == [str(after)]
    finally:
        stream.cancel()


async def test_a_private_models_stream_is_not_found_for_others(
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=False)
    other = await sign_up()
    stream = forecasts.StreamForecasts(
        pb.StreamForecastsRequest(model=m.name), metadata=other.metadata
    )
    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.wait_for(stream.read(), 10)
    assert status_code(caught.value) == grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def http(envoy: Envoy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        yield client


async def test_forecasts_and_runs_over_rest(
    http: httpx.AsyncClient,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=False)
    for hour in range(3):
        await record(resources, m, BASE + hour * HOUR, log=f"run {hour}\n")
    await record(resources, m, BASE, kind="dry")
    auth = {"authorization": f"Bearer {m.owner.tokens.access_token}"}

    page = await http.get(
        f"/v1/models/{m.name}/forecasts", params={"pageSize": 4, "symbol": "EURUSD"}, headers=auth
    )
    assert page.status_code == 200, page.text
    body = page.json()
    assert [f["asOf"] for f in body["forecasts"]] == [
        "2024-03-04T02:00:00Z",
        "2024-03-04T01:00:00Z",
        "2024-03-04T00:00:00Z",
    ]
    assert body["forecasts"][0]["kind"] == "RUN_KIND_LIVE"
    assert body["forecasts"][0]["direction"] == "DIRECTION_UP"
    dry = await http.get(
        f"/v1/models/{m.name}/forecasts", params={"kind": "RUN_KIND_DRY"}, headers=auth
    )
    assert {f["kind"] for f in dry.json()["forecasts"]} == {"RUN_KIND_DRY"}
    bad = await http.get(
        f"/v1/models/{m.name}/forecasts", params={"pageToken": "garbage!"}, headers=auth
    )
    assert bad.status_code == 400, bad.text

    runs = await http.get(f"/v1/models/{m.name}/runs", params={"pageSize": 2}, headers=auth)
    assert runs.status_code == 200, runs.text
    listed = runs.json()
    assert len(listed["runs"]) == 2 and listed["nextPageToken"]
    run_id = listed["runs"][0]["id"]
    one = await http.get(f"/v1/models/{m.name}/runs/{run_id}", headers=auth)
    assert one.status_code == 200, one.text
    assert one.json()["run"]["log"] == "run 2\n"
    assert one.json()["run"]["outcome"] == "RUN_OUTCOME_OK"

    other = await sign_up()
    hidden = await http.get(
        f"/v1/models/{m.name}/runs",
        headers={"authorization": f"Bearer {other.tokens.access_token}"},
    )
    assert hidden.status_code == 404
    assert (await http.get(f"/v1/models/{m.name}/forecasts")).status_code == 401
