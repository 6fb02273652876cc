"""RegistryService.ListModelSummaries: a provider's own models with their subscriptions by
state, this month's money received and the last live runs, over gRPC and REST."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from grpc import aio

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.billing.payments import ManualProcessor
from foretell.billing.settle import record_payment
from foretell.common.v1 import common_pb2
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runtime import Resources
from foretell.subscription.v1 import subscription_service_pb2 as sub_pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as sub_grpc
from tests._billing import set_plan
from tests._envoy import Envoy
from tests._errors import field_violations
from tests._records import HOUR, make_model, record_run
from tests.conftest import MovableClock, SignedIn, SignUp, status_code


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> pb_grpc.RegistryServiceAsyncStub:
    return pb_grpc.RegistryServiceStub(channel)


@pytest.fixture
async def http(envoy: Envoy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        yield client


async def _subscribe(
    channel: aio.Channel, reader: SignedIn, model: str
) -> sub_pb.SubscribeResponse:
    stub = sub_grpc.SubscriptionServiceStub(channel)
    response: sub_pb.SubscribeResponse = await stub.Subscribe(
        sub_pb.SubscribeRequest(model=model), metadata=reader.metadata
    )
    return response


async def _pay(resources: Resources, invoice_id: str, now: datetime) -> None:
    async with resources.db.session.begin() as session:
        await record_payment(
            session, uuid.UUID(invoice_id), processor="manual", reference="test", now=now,
            settings=resources.settings, charger=ManualProcessor(),
        )  # fmt: skip


async def test_counts_revenue_and_recent_runs_of_the_callers_models_only(
    channel: aio.Channel,
    registry: pb_grpc.RegistryServiceAsyncStub,
    resources: Resources,
    sign_up: SignUp,
    clock: MovableClock,
) -> None:
    made = await make_model(registry, sign_up, resources)
    owner = made.owner
    # A second model of the same owner, with no business yet, sorts after the first.
    quiet = await registry.CreateModel(
        pb.CreateModelRequest(
            model=pb.Model(
                name=f"{made.name}-z", title="Quiet", symbols=["EURUSD"],
                resolution=common_pb2.RESOLUTION_1H, horizon=1,
            )
        ),
        metadata=owner.metadata,
    )  # fmt: skip
    other = await make_model(registry, sign_up, resources)  # someone else's: never listed
    await registry.PublishVersion(
        pb.PublishVersionRequest(model=made.name, number=1), metadata=owner.metadata
    )

    # Paying, trialing and cancelled subscribers.
    await set_plan(channel, owner, made.name, price_minor=4900, currency="USD", trial_days=0)
    payer = await _subscribe(channel, await sign_up(account_pb.ROLE_SUBSCRIBER), made.name)
    assert payer.subscription.state == sub_pb.SUBSCRIPTION_STATE_INCOMPLETE
    await _pay(resources, payer.invoice.id, clock())
    unpaid = await _subscribe(channel, await sign_up(account_pb.ROLE_SUBSCRIBER), made.name)
    assert unpaid.subscription.state == sub_pb.SUBSCRIPTION_STATE_INCOMPLETE
    await set_plan(channel, owner, made.name, price_minor=4900, currency="USD", trial_days=14)
    await _subscribe(channel, await sign_up(account_pb.ROLE_SUBSCRIBER), made.name)
    leaver = await sign_up(account_pb.ROLE_SUBSCRIBER)
    left = await _subscribe(channel, leaver, made.name)
    await sub_grpc.SubscriptionServiceStub(channel).CancelSubscription(
        sub_pb.CancelSubscriptionRequest(id=left.subscription.id, immediately=True),
        metadata=leaver.metadata,
    )

    # Twelve live runs (the summary keeps the last ten) and a dry run (never counted).
    start = datetime(2026, 1, 5, tzinfo=UTC)
    outcomes = ["ok"] * 9 + ["model_error", "timeout", "ok"]
    for i, outcome in enumerate(outcomes):
        await record_run(resources, made, start + i * HOUR, outcome=outcome)
    await record_run(resources, made, start + 20 * HOUR, kind="dry", outcome="out_of_memory")

    answer = await registry.ListModelSummaries(
        pb.ListModelSummariesRequest(), metadata=owner.metadata
    )
    names = [s.model.name for s in answer.summaries]
    assert names == [made.name, quiet.model.name]
    assert other.name not in names
    first, second = answer.summaries
    assert first.model.live_version == 1
    assert first.subscribers == pb.SubscriberCounts(trialing=1, incomplete=1, active=1, canceled=1)
    assert list(first.revenue) == [pb.Money(amount_minor=4900, currency="USD")]
    now = clock()
    assert answer.month_start_time.ToDatetime(UTC) == datetime(now.year, now.month, 1, tzinfo=UTC)
    runs = list(first.recent_runs)
    assert [r.as_of.ToDatetime(UTC) for r in runs] == [start + i * HOUR for i in range(11, 1, -1)]
    assert [r.outcome for r in runs[:3]] == [
        fc_pb.RUN_OUTCOME_OK,
        fc_pb.RUN_OUTCOME_TIMEOUT,
        fc_pb.RUN_OUTCOME_MODEL_ERROR,
    ]
    assert all(r.version == 1 and uuid.UUID(r.id) for r in runs)
    assert second.subscribers == pb.SubscriberCounts()
    assert list(second.revenue) == [] and list(second.recent_runs) == []

    # A page at a time.
    page = await registry.ListModelSummaries(
        pb.ListModelSummariesRequest(page_size=1), metadata=owner.metadata
    )
    assert [s.model.name for s in page.summaries] == [made.name]
    rest = await registry.ListModelSummaries(
        pb.ListModelSummariesRequest(page_size=1, page_token=page.next_page_token),
        metadata=owner.metadata,
    )
    assert [s.model.name for s in rest.summaries] == [quiet.model.name]
    assert rest.next_page_token == ""

    # Next month, this month's money is last month's.
    clock.advance(timedelta(days=32))
    later = await registry.ListModelSummaries(
        pb.ListModelSummariesRequest(page_size=1), metadata=owner.metadata
    )
    assert list(later.summaries[0].revenue) == []
    assert later.month_start_time.ToDatetime(UTC) > answer.month_start_time.ToDatetime(UTC)


async def test_only_providers_and_checked_input(
    registry: pb_grpc.RegistryServiceAsyncStub, sign_up: SignUp
) -> None:
    subscriber = await sign_up(account_pb.ROLE_SUBSCRIBER)
    with pytest.raises(grpc.RpcError) as denied:
        await registry.ListModelSummaries(
            pb.ListModelSummariesRequest(), metadata=subscriber.metadata
        )
    assert status_code(denied.value) == grpc.StatusCode.PERMISSION_DENIED
    provider = await sign_up()
    with pytest.raises(grpc.RpcError) as bad:
        await registry.ListModelSummaries(
            pb.ListModelSummariesRequest(page_size=-1, page_token="forged"),
            metadata=provider.metadata,
        )
    assert status_code(bad.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(bad.value)) == {"page_size", "page_token"}
    empty = await registry.ListModelSummaries(
        pb.ListModelSummariesRequest(), metadata=provider.metadata
    )
    assert list(empty.summaries) == []


async def test_over_rest(
    http: httpx.AsyncClient,
    registry: pb_grpc.RegistryServiceAsyncStub,
    resources: Resources,
    sign_up: SignUp,
) -> None:
    made = await make_model(registry, sign_up, resources)
    await record_run(resources, made, datetime(2026, 2, 2, tzinfo=UTC), outcome="missed")
    auth = {"authorization": f"Bearer {made.owner.tokens.access_token}"}
    answer = await http.get("/v1/modelSummaries", headers=auth)
    assert answer.status_code == 200, answer.text
    (summary,) = answer.json()["summaries"]
    assert summary["model"]["name"] == made.name
    assert summary["recentRuns"][0]["outcome"] == "RUN_OUTCOME_MISSED"
    assert summary["recentRuns"][0]["asOf"] == "2026-02-02T00:00:00Z"
    assert "monthStartTime" in answer.json()

    bad = await http.get("/v1/modelSummaries", params={"pageSize": "-3"}, headers=auth)
    assert bad.status_code == 400
    [bad_request] = [d for d in bad.json()["details"] if "fieldViolations" in d]
    assert [v["field"] for v in bad_request["fieldViolations"]] == ["page_size"]

    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    denied = await http.get(
        "/v1/modelSummaries",
        headers={"authorization": f"Bearer {reader.tokens.access_token}"},
    )
    assert denied.status_code == 403
    assert (await http.get("/v1/modelSummaries")).status_code == 401
