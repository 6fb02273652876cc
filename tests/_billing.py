"""Helpers for tests that need a plan and a subscription."""

from __future__ import annotations

from typing import TYPE_CHECKING

from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.subscription.v1 import subscription_service_pb2 as pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as pb_grpc
from tests._records import Made, make_model
from tests.conftest import SignedIn, SignUp

if TYPE_CHECKING:
    from grpc import aio


async def set_plan(
    channel: aio.Channel,
    owner: SignedIn,
    model: str,
    *,
    price_minor: int = 4900,
    currency: str = "USD",
    trial_days: int = 14,
) -> pb.Plan:
    stub = pb_grpc.SubscriptionServiceStub(channel)
    response = await stub.UpdatePlan(
        pb.UpdatePlanRequest(
            model=model,
            plan=pb.Plan(price_minor=price_minor, currency=currency, trial_days=trial_days),
        ),
        metadata=owner.metadata,
    )
    return response.plan


async def trial(
    channel: aio.Channel, owner: SignedIn, reader: SignedIn, model: str
) -> pb.Subscription:
    """Gives `reader` a trial of `model` (setting a 14-day plan): forecasts become readable."""
    await set_plan(channel, owner, model)
    stub = pb_grpc.SubscriptionServiceStub(channel)
    response = await stub.Subscribe(pb.SubscribeRequest(model=model), metadata=reader.metadata)
    assert response.subscription.state == pb.SUBSCRIPTION_STATE_TRIALING
    return response.subscription


async def sold_model(
    channel: aio.Channel, sign_up: SignUp, resources: Resources, *, trial_days: int
) -> Made:
    """A public model on sale: 49.00 USD a month, with a `trial_days` trial."""
    model = await make_model(reg_grpc.RegistryServiceStub(channel), sign_up, resources, public=True)
    await set_plan(channel, model.owner, model.name, trial_days=trial_days)
    return model
