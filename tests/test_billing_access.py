"""Billing follows access: a model its subscribers can no longer read (made private, retired,
deleted) stops billing them. Open invoices are credited, subscriptions end with a reason the
subscriber sees, and later billing runs invoice nothing."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc import aio

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.billing.payments import processor_for
from foretell.billing.settle import run_billing
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.subscription.v1 import subscription_service_pb2 as pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as pb_grpc
from tests._billing import set_plan, sold_model
from tests._registry import create_model
from tests.conftest import MovableClock, SignedIn, SignUp


async def _subscription(
    stub: pb_grpc.SubscriptionServiceAsyncStub, reader: SignedIn
) -> pb.Subscription:
    (sub,) = (
        await stub.ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=reader.metadata)
    ).subscriptions
    return sub


async def _invoice_states(
    stub: pb_grpc.SubscriptionServiceAsyncStub, reader: SignedIn, sub_id: str
) -> list[int]:
    listed = await stub.ListInvoices(
        pb.ListInvoicesRequest(subscription_id=sub_id), metadata=reader.metadata
    )
    return [invoice.state for invoice in listed.invoices]


async def _bill_later(resources: Resources, clock: MovableClock) -> None:
    clock.advance(timedelta(days=40))
    await run_billing(resources.db, resources.settings, clock(), processor_for(resources.settings))


@pytest.mark.parametrize("how", ["private", "retired"])
async def test_a_model_its_subscribers_lose_stops_billing_them(
    how: str,
    channel: aio.Channel,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=0)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    subs = pb_grpc.SubscriptionServiceStub(channel)
    started = await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    sub_id = started.subscription.id
    assert await _invoice_states(subs, reader, sub_id) == [pb.INVOICE_STATE_OPEN]

    registry = reg_grpc.RegistryServiceStub(channel)
    if how == "private":
        await registry.UpdateModel(
            reg_pb.UpdateModelRequest(
                model=reg_pb.Model(name=model.name, visibility=reg_pb.VISIBILITY_PRIVATE),
                update_mask=FieldMask(paths=["visibility"]),
            ),
            metadata=model.owner.metadata,
        )
        reason = "the provider made the model private"
    else:
        await registry.TakeOffline(
            reg_pb.TakeOfflineRequest(name=model.name, retire=True), metadata=model.owner.metadata
        )
        reason = "the provider retired the model"

    sub = await _subscription(subs, reader)
    assert sub.state == pb.SUBSCRIPTION_STATE_CANCELED
    assert sub.end_reason == reason
    assert sub.HasField("end_time")
    # The open invoice is credited in full: nothing is owed for what cannot be read.
    assert await _invoice_states(subs, reader, sub_id) == [pb.INVOICE_STATE_VOID]
    await _bill_later(resources, clock)
    assert await _invoice_states(subs, reader, sub_id) == [pb.INVOICE_STATE_VOID]


async def test_taking_a_model_offline_for_a_while_keeps_its_subscriptions(
    channel: aio.Channel, sign_up: SignUp, resources: Resources
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=14)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    subs = pb_grpc.SubscriptionServiceStub(channel)
    await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    registry = reg_grpc.RegistryServiceStub(channel)
    await registry.TakeOffline(
        reg_pb.TakeOfflineRequest(name=model.name), metadata=model.owner.metadata
    )
    sub = await _subscription(subs, reader)
    assert sub.state == pb.SUBSCRIPTION_STATE_TRIALING
    assert not sub.end_reason


async def test_a_model_with_subscriptions_on_record_is_retired_not_deleted(
    channel: aio.Channel, sign_up: SignUp
) -> None:
    owner = await sign_up()
    registry = reg_grpc.RegistryServiceStub(channel)
    model = await create_model(registry, owner.metadata, visibility=reg_pb.VISIBILITY_PUBLIC)
    await set_plan(channel, owner, model.name)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    subs = pb_grpc.SubscriptionServiceStub(channel)
    await subs.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    with pytest.raises(grpc.RpcError) as caught:
        await registry.DeleteModel(
            reg_pb.DeleteModelRequest(name=model.name), metadata=owner.metadata
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "retire" in (caught.value.details() or "")
    # The subscription goes on until the model is retired.
    assert (await _subscription(subs, reader)).state == pb.SUBSCRIPTION_STATE_TRIALING
