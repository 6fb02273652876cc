"""Forecast reads need an entitlement: a live subscription (TRIALING, ACTIVE, PAST_DUE within
grace), the model's ownership, or the admin role; everyone else signed in lists only the
delayed sample. An open stream stops when its subscription lapses or the model is hidden."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import select

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.auth.policy import Role
from foretell.auth.principal import Principal
from foretell.billing.entitlement import Reach, forecast_access, still_entitled
from foretell.billing.payments import processor_for
from foretell.billing.settle import locked_subscription, run_billing
from foretell.db.models import Model, Subscription
from foretell.errors import PermissionDenied
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.subscription.v1 import subscription_service_pb2 as sub_pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as sub_grpc
from tests._billing import trial
from tests._envoy import Envoy
from tests._records import BASE, HOUR, Made, make_model, record
from tests.conftest import MovableClock, SignedIn, SignUp, status_code

if TYPE_CHECKING:
    from grpc import aio

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def forecasts(channel: aio.Channel) -> pb_grpc.ForecastServiceAsyncStub:
    return pb_grpc.ForecastServiceStub(channel)


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> reg_grpc.RegistryServiceAsyncStub:
    return reg_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def subs(channel: aio.Channel) -> sub_grpc.SubscriptionServiceAsyncStub:
    return sub_grpc.SubscriptionServiceStub(channel)


@pytest.fixture
async def http(envoy: Envoy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        yield client


async def _old_and_new(resources: Resources, model: Made) -> tuple[str, str]:
    """One run recorded ten days ago (in the delayed sample) and one just now."""
    old = await record(
        resources, model, BASE, recorded_at=datetime.now(UTC) - 10 * DAY, symbols=("EURUSD",)
    )
    new = await record(resources, model, BASE + HOUR, symbols=("EURUSD",))
    return str(old), str(new)


async def _grpc_runs(
    forecasts: pb_grpc.ForecastServiceAsyncStub, model: str, who: SignedIn
) -> set[str]:
    listed = await forecasts.ListForecasts(
        pb.ListForecastsRequest(model=model), metadata=who.metadata
    )
    return {f.run_id for f in listed.forecasts}


async def _rest_runs(http: httpx.AsyncClient, model: str, who: SignedIn) -> set[str]:
    response = await http.get(
        f"/v1/models/{model}/forecasts",
        headers={"authorization": f"Bearer {who.tokens.access_token}"},
    )
    assert response.status_code == 200, response.text
    return {f["runId"] for f in response.json().get("forecasts", [])}


async def test_listing_needs_an_entitlement_over_grpc_and_rest(
    channel: aio.Channel,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    subs: sub_grpc.SubscriptionServiceAsyncStub,
    http: httpx.AsyncClient,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    old, new = await _old_and_new(resources, m)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    for runs in (_grpc_runs(forecasts, m.name, reader), _rest_runs(http, m.name, reader)):
        assert await runs == {old}  # the delayed sample only
    for runs in (_grpc_runs(forecasts, m.name, m.owner), _rest_runs(http, m.name, m.owner)):
        assert await runs == {old, new}
    # The answer says when it is only the sample, and where the sample ends.
    sampled = await http.get(
        f"/v1/models/{m.name}/forecasts",
        headers={"authorization": f"Bearer {reader.tokens.access_token}"},
    )
    assert sampled.json()["delayedSample"] is True
    assert "sampleRecordedBefore" in sampled.json()
    whole = await forecasts.ListForecasts(
        pb.ListForecastsRequest(model=m.name), metadata=m.owner.metadata
    )
    assert not whole.delayed_sample and not whole.HasField("sample_recorded_before")
    sub = await trial(channel, m.owner, reader, m.name)
    for runs in (_grpc_runs(forecasts, m.name, reader), _rest_runs(http, m.name, reader)):
        assert await runs == {old, new}
    await subs.CancelSubscription(
        sub_pb.CancelSubscriptionRequest(id=sub.id, immediately=True), metadata=reader.metadata
    )
    for runs in (_grpc_runs(forecasts, m.name, reader), _rest_runs(http, m.name, reader)):
        assert await runs == {old}

    # Streams carry live forecasts: never a sample. Refused over gRPC and REST alike.
    stream = forecasts.StreamForecasts(
        pb.StreamForecastsRequest(model=m.name), metadata=reader.metadata
    )
    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.wait_for(stream.read(), 10)
    assert status_code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    refused = await http.get(
        f"/v1/models/{m.name}/forecasts:stream",
        headers={"authorization": f"Bearer {reader.tokens.access_token}"},
    )
    assert refused.status_code == 403, refused.text


async def test_a_read_with_nothing_due_takes_no_lock(
    channel: aio.Channel,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    """Every forecast read checks the entitlement: with no billing event due it is a plain
    read, so it goes on while the subscription row is locked elsewhere (a payment, the cron)."""
    m = await make_model(registry, sign_up, resources, public=True)
    old, new = await _old_and_new(resources, m)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    sub = await trial(channel, m.owner, reader, m.name)
    async with resources.db.session.begin() as session:
        await locked_subscription(session, uuid.UUID(sub.id))
        runs = await asyncio.wait_for(_grpc_runs(forecasts, m.name, reader), 10)
    assert runs == {old, new}


async def test_still_entitled_settles_once_the_period_is_over(
    channel: aio.Channel,
    registry: reg_grpc.RegistryServiceAsyncStub,
    subs: sub_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    """What the webhook worker asks before each POST: a trial canceled at its end entitles
    until then; after it, the subscription is settled (canceled) and entitles no more."""
    m = await make_model(registry, sign_up, resources, public=True)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    sub = await trial(channel, m.owner, reader, m.name)
    await subs.CancelSubscription(
        sub_pb.CancelSubscriptionRequest(id=sub.id), metadata=reader.metadata
    )
    db, settings = resources.db, resources.settings
    async with db.session() as session:
        row = await session.get(Subscription, uuid.UUID(sub.id))
    assert row is not None and row.cancel_at_period_end
    assert await still_entitled(db, settings, row, row.period_end - DAY)
    assert not await still_entitled(db, settings, row, row.period_end + DAY)
    async with db.session() as session:
        assert (
            await session.scalar(select(Subscription.state).where(Subscription.id == row.id))
            == "canceled"
        )


async def test_without_the_delayed_sample_others_are_refused(
    registry: reg_grpc.RegistryServiceAsyncStub, sign_up: SignUp, resources: Resources
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    async with resources.db.session() as session:
        model = await session.get(Model, m.model_id)
    assert model is not None
    caller = Principal(uuid.UUID(reader.user.id), Role.SUBSCRIBER, "jwt")
    now = datetime.now(UTC)
    sample = await forecast_access(resources.db, caller, model, now, resources.settings)
    assert sample.reach is Reach.SAMPLE and sample.recorded_before == now - 7 * DAY
    off = dataclasses.replace(resources.settings, delayed_sample="off")
    with pytest.raises(PermissionDenied):
        await forecast_access(resources.db, caller, model, now, off)
    admin = Principal(uuid.uuid4(), Role.ADMIN, "jwt")
    assert (await forecast_access(resources.db, admin, model, now, off)).reach is Reach.FULL


async def _open_stream(
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    resources: Resources,
    m: Made,
    reader: SignedIn,
) -> aio.UnaryStreamCall[pb.StreamForecastsRequest, pb.StreamForecastsResponse]:
    stream = forecasts.StreamForecasts(
        pb.StreamForecastsRequest(model=m.name), metadata=reader.metadata
    )
    await asyncio.wait_for(stream.initial_metadata(), 10)
    run = await record(resources, m, BASE + 5 * HOUR)
    message = await asyncio.wait_for(stream.read(), 10)
    assert isinstance(message, pb.StreamForecastsResponse)
    assert {f.run_id for f in message.forecasts} == {str(run)}
    return stream


async def test_an_open_stream_stops_when_the_subscription_lapses(
    channel: aio.Channel,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    subs: sub_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    sub = await trial(channel, m.owner, reader, m.name)
    await subs.CancelSubscription(
        sub_pb.CancelSubscriptionRequest(id=sub.id), metadata=reader.metadata
    )
    stream = await _open_stream(forecasts, resources, m, reader)
    try:
        # The trial (14 days) ends with the cancellation: the billing run ends the
        # subscription, and its notice wakes the stream, which re-checks and stops.
        clock.advance(15 * DAY)
        settings = resources.settings
        assert await run_billing(resources.db, settings, clock(), processor_for(settings)) >= 1
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.wait_for(stream.read(), 10)
        assert status_code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        stream.cancel()


async def test_an_open_stream_stops_on_its_next_message_after_the_trial_ends(
    channel: aio.Channel,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
) -> None:
    """No billing run yet: the re-check on each delivered message settles the subscription
    (trial over, first invoice unpaid past due and past grace) and stops the stream."""
    m = await make_model(registry, sign_up, resources, public=True)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await trial(channel, m.owner, reader, m.name)
    stream = await _open_stream(forecasts, resources, m, reader)
    try:
        clock.advance(29 * DAY)
        await record(resources, m, BASE + 6 * HOUR)
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.wait_for(stream.read(), 10)
        assert status_code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        stream.cancel()


async def test_an_open_stream_stops_when_the_model_goes_private(
    channel: aio.Channel,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    m = await make_model(registry, sign_up, resources, public=True)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await trial(channel, m.owner, reader, m.name)
    stream = await _open_stream(forecasts, resources, m, reader)
    try:
        await registry.UpdateModel(
            reg_pb.UpdateModelRequest(
                model=reg_pb.Model(name=m.name, visibility=reg_pb.VISIBILITY_PRIVATE),
                update_mask=FieldMask(paths=["visibility"]),
            ),
            metadata=m.owner.metadata,
        )
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.wait_for(stream.read(), 10)
        assert status_code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        stream.cancel()
