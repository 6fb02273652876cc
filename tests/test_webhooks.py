"""Webhooks: recorded forecasts POSTed, signed, to a receiver on 127.0.0.1 (with
FORETELL_WEBHOOKS_ALLOW_PRIVATE on, on a gRPC server of this module's own), retried with
back-off when it fails, never sent again once it answered 2xx; the SSRF refusals with the
setting off (the session's server); bad input over gRPC and REST."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc import aio
from sqlalchemy import text, update

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.db.models import WebhookDelivery
from foretell.runtime import Resources
from foretell.runtime.lanes import Lane
from foretell.settings import Settings
from foretell.subscription.v1 import subscription_service_pb2 as pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as pb_grpc
from foretell.webhooks import (
    Dispatcher,
    EndpointRefused,
    SendFailed,
    SignatureInvalid,
    check_address,
    claim,
    deliver_due,
    parse_url,
    post,
    send_one,
    sign,
    verify,
)
from foretell.worker import close_worker, create_worker
from tests._billing import sold_model
from tests._envoy import Envoy
from tests._errors import field_violations
from tests._records import BASE, HOUR, Made, record
from tests._webhooks import dispatching, lenient_services, receiving
from tests.conftest import MovableClock, SignedIn, SignUp, status_code

DELIVERED = pb.WEBHOOK_DELIVERY_STATE_DELIVERED


@pytest.fixture(scope="module")
async def hooks_stack(
    settings: Settings, session_clock: MovableClock
) -> AsyncIterator[tuple[Resources, int]]:
    async with lenient_services(settings, session_clock) as stack:
        yield stack


@pytest.fixture(scope="module")
def hooks_resources(hooks_stack: tuple[Resources, int]) -> Resources:
    return hooks_stack[0]


@pytest.fixture(scope="module")
async def hooks(
    hooks_stack: tuple[Resources, int],
) -> AsyncIterator[pb_grpc.SubscriptionServiceAsyncStub]:
    """SubscriptionService on a server whose settings allow private endpoints."""
    async with aio.insecure_channel(f"127.0.0.1:{hooks_stack[1]}") as channel:
        yield pb_grpc.SubscriptionServiceStub(channel)


@pytest.fixture
async def dispatcher(hooks_resources: Resources) -> AsyncIterator[Dispatcher]:
    """The worker's dispatcher, running for the test."""
    async with dispatching(hooks_resources) as running:
        yield running


@pytest.fixture(scope="module")
def subs(channel: aio.Channel) -> pb_grpc.SubscriptionServiceAsyncStub:
    return pb_grpc.SubscriptionServiceStub(channel)


@dataclasses.dataclass(frozen=True)
class Subscribed:
    model: Made
    reader: SignedIn
    subscription: pb.Subscription


async def _subscribed(channel: aio.Channel, sign_up: SignUp, resources: Resources) -> Subscribed:
    model = await sold_model(channel, sign_up, resources, trial_days=14)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    stub = pb_grpc.SubscriptionServiceStub(channel)
    sub = await stub.Subscribe(pb.SubscribeRequest(model=model.name), metadata=reader.metadata)
    return Subscribed(model, reader, sub.subscription)


async def _endpoint(
    hooks: pb_grpc.SubscriptionServiceAsyncStub, who: Subscribed, url: str
) -> pb.CreateWebhookEndpointResponse:
    request = pb.CreateWebhookEndpointRequest(
        subscription_id=who.subscription.id, url=url, description="my desk"
    )
    return await hooks.CreateWebhookEndpoint(request, metadata=who.reader.metadata)


async def _log(
    hooks: pb_grpc.SubscriptionServiceAsyncStub, who: Subscribed
) -> list[pb.WebhookDelivery]:
    request = pb.ListWebhookDeliveriesRequest(subscription_id=who.subscription.id)
    return list(
        (await hooks.ListWebhookDeliveries(request, metadata=who.reader.metadata)).deliveries
    )


async def _until_settled(
    hooks: pb_grpc.SubscriptionServiceAsyncStub, who: Subscribed, count: int
) -> list[pb.WebhookDelivery]:
    """The log once it has `count` deliveries, none pending (the receiver has been answered,
    but the worker records the answer just after)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = await _log(hooks, who)
        if len(log) == count and all(d.state != pb.WEBHOOK_DELIVERY_STATE_PENDING for d in log):
            return log
        # The log has no notification of its own: poll it, within the deadline.
        await asyncio.sleep(0.02)
    raise AssertionError(f"deliveries not settled: {await _log(hooks, who)}")


async def test_recorded_forecasts_arrive_signed(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    dispatcher: Dispatcher,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    who = await _subscribed(channel, sign_up, resources)
    async with receiving() as receiver:
        created = await _endpoint(hooks, who, receiver.url)
        assert created.secret.startswith("whsec_")
        assert created.endpoint.url == receiver.url
        await record(resources, who.model, BASE)
        # Simulated replays and dry runs are not the live record: never sent.
        await record(resources, who.model, BASE + HOUR, kind="simulated")
        await receiver.wait_for(lambda got: len(got) >= 2)
        log = await _until_settled(hooks, who, 2)

    assert len(receiver.received) == 2
    symbols = set()
    for got in receiver.received:
        assert got.path == "/hooks"
        assert got.headers["content-type"] == "application/json"
        message_id = verify(created.secret, got.headers, got.body, time.time())
        event = json.loads(got.body)
        assert event["type"] == "forecast.recorded"
        assert event["data"]["model"] == who.model.name
        assert event["data"]["subscription_id"] == who.subscription.id
        assert event["data"]["as_of"] == BASE.isoformat().replace("+00:00", "Z")
        symbols.add(event["data"]["symbol"])
        assert message_id in {f"msg_{uuid.UUID(d.id).hex}" for d in log}
    assert symbols == {"EURUSD", "GOOG"}
    assert all(d.state == DELIVERED and len(d.attempts) == 1 for d in log)
    assert all(d.attempts[0].status_code == 200 and not d.next_attempt_time.seconds for d in log)
    # The list never shows the secret again.
    listed = await hooks.ListWebhookEndpoints(
        pb.ListWebhookEndpointsRequest(subscription_id=who.subscription.id),
        metadata=who.reader.metadata,
    )
    assert created.secret not in str(listed)


async def test_a_failing_receiver_is_retried_then_never_sent_the_event_again(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    hooks_resources: Resources,
    dispatcher: Dispatcher,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    who = await _subscribed(channel, sign_up, resources)
    async with receiving(script=[503]) as receiver:
        await _endpoint(hooks, who, receiver.url)
        await record(resources, who.model, BASE, symbols=("EURUSD",))
        await receiver.wait_for(lambda got: len(got) >= 2)
        (delivery,) = await _until_settled(hooks, who, 1)
        assert delivery.state == DELIVERED
        assert [a.status_code for a in delivery.attempts] == [503, 200]
        assert delivery.attempts[0].error == "answered 503"
        first, second = receiver.received
        # A retry is the same event: same id and body, a fresh timestamp and signature.
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body

        # Answered 2xx: even a delivery made due again is never claimed, and a drain sends
        # nothing.
        async with hooks_resources.db.session.begin() as session:
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == uuid.UUID(delivery.id))
                .values(next_attempt_at=hooks_resources.clock() - timedelta(hours=1))
            )
        settings, db, clock = hooks_resources.settings, hooks_resources.db, hooks_resources.clock
        assert uuid.UUID(delivery.id) not in await claim(db, settings, clock(), 1000)
        assert await send_one(db, settings, clock, uuid.UUID(delivery.id)) == "gone"
        await deliver_due(db, settings, clock)
        assert len(receiver.received) == 2


async def test_a_stalled_endpoint_delays_only_its_own_deliveries(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    hooks_resources: Resources,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    """One subscriber's endpoint takes requests and never answers, with a backlog of
    deliveries: it holds at most FORETELL_WEBHOOK_ENDPOINT_CONCURRENCY of the dispatcher's
    POSTs, and another subscriber's delivery goes out meanwhile."""
    settings = dataclasses.replace(
        hooks_resources.settings, webhook_concurrency=2, webhook_endpoint_concurrency=1,
        webhook_timeout_s=30,
    )  # fmt: skip
    res = dataclasses.replace(hooks_resources, settings=settings)
    slow = await _subscribed(channel, sign_up, resources)
    fast = await _subscribed(channel, sign_up, resources)
    async with receiving() as stalled, receiving() as healthy:
        stalled.answering.clear()
        await _endpoint(hooks, slow, stalled.url)
        await _endpoint(hooks, fast, healthy.url)
        for hour in range(3):  # six deliveries: two symbols a run
            await record(resources, slow.model, BASE + hour * HOUR)
        async with dispatching(res):
            await stalled.wait_for(lambda got: len(got) >= 1)
            await record(resources, fast.model, BASE, symbols=("EURUSD",))
            await healthy.wait_for(lambda got: len(got) == 1)
            assert len(stalled.received) == 1
            stalled.answering.set()
            await stalled.wait_for(lambda got: len(got) == 6)


async def test_the_worker_delivers(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    hooks_resources: Resources,
    sign_up: SignUp,
    resources: Resources,
    session_clock: MovableClock,
) -> None:
    """`foretell worker --lane live --role cron` (the periodic worker) runs the dispatcher."""
    who = await _subscribed(channel, sign_up, resources)
    settings = dataclasses.replace(hooks_resources.settings, queue_name=f"hooks-{uuid.uuid4()}")
    worker = create_worker(
        settings, lane=Lane.LIVE, role="cron", scheduler=False, handle_signals=False,
        clock=session_clock,
    )  # fmt: skip
    running = asyncio.create_task(worker.async_run())
    try:
        async with receiving() as receiver:
            await _endpoint(hooks, who, receiver.url)
            await record(resources, who.model, BASE, symbols=("EURUSD",))
            # The worker builds the trading calendars before it starts: seconds on a busy host.
            await receiver.wait_for(lambda got: len(got) == 1, within_s=60)
            (delivery,) = await _until_settled(hooks, who, 1)
        assert delivery.state == DELIVERED
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await close_worker(worker)


async def test_a_delivery_whose_worker_died_is_sent_once_its_lease_has_passed(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    hooks_resources: Resources,
    sign_up: SignUp,
    resources: Resources,
    clock: MovableClock,
) -> None:
    """At least once: a worker claims a delivery and dies before recording anything; another
    sends it when the claim's lease (the POST's time limit plus 30 s) has passed, not before."""
    who = await _subscribed(channel, sign_up, resources)
    async with receiving() as receiver:
        await _endpoint(hooks, who, receiver.url)
        await record(resources, who.model, BASE, symbols=("EURUSD",))
        (delivery,) = await _log(hooks, who)
        res = hooks_resources
        assert uuid.UUID(delivery.id) in await claim(res.db, res.settings, clock(), 1000)
        async with dispatching(res):
            # Leased: nobody takes it meanwhile.
            assert uuid.UUID(delivery.id) not in await claim(res.db, res.settings, clock(), 1000)
            assert receiver.received == []
            clock.advance(timedelta(seconds=res.settings.webhook_timeout_s + 31))
            await receiver.wait_for(lambda got: len(got) == 1)
            (delivery,) = await _until_settled(hooks, who, 1)
    assert delivery.state == DELIVERED
    assert len(delivery.attempts) == 1


async def test_attempts_are_bounded_then_the_delivery_fails(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    dispatcher: Dispatcher,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    who = await _subscribed(channel, sign_up, resources)
    async with receiving(script=[500] * 10) as receiver:
        await _endpoint(hooks, who, receiver.url)
        await record(resources, who.model, BASE, symbols=("EURUSD",))
        (delivery,) = await _until_settled(hooks, who, 1)
    assert delivery.state == pb.WEBHOOK_DELIVERY_STATE_FAILED
    assert [a.status_code for a in delivery.attempts] == [500, 500, 500]
    assert len(receiver.received) == 3


async def test_the_test_event_and_a_lapsed_subscription(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    dispatcher: Dispatcher,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    who = await _subscribed(channel, sign_up, resources)
    async with receiving() as receiver:
        created = await _endpoint(hooks, who, receiver.url)
        sent = await hooks.SendTestWebhook(
            pb.SendTestWebhookRequest(id=created.endpoint.id), metadata=who.reader.metadata
        )
        assert sent.delivery.event_type == "webhook.test"
        await receiver.wait_for(lambda got: len(got) >= 1)
        verify(created.secret, receiver.received[0].headers, receiver.received[0].body, time.time())
        assert json.loads(receiver.received[0].body)["type"] == "webhook.test"
        await _until_settled(hooks, who, 1)

        # Canceled at once: the next forecast queues nothing, and a test event is refused.
        await hooks.CancelSubscription(
            pb.CancelSubscriptionRequest(id=who.subscription.id, immediately=True),
            metadata=who.reader.metadata,
        )
        await record(resources, who.model, BASE, symbols=("EURUSD",))
        with pytest.raises(grpc.RpcError) as caught:
            await hooks.SendTestWebhook(
                pb.SendTestWebhookRequest(id=created.endpoint.id), metadata=who.reader.metadata
            )
        assert status_code(caught.value) == grpc.StatusCode.FAILED_PRECONDITION
        assert len(await _log(hooks, who)) == 1
        assert len(receiver.received) == 1


async def test_a_pending_delivery_of_a_lapsed_subscription_is_canceled(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    dispatcher: Dispatcher,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    """A delivery being retried when the subscription ends is canceled, not sent again."""
    who = await _subscribed(channel, sign_up, resources)
    async with receiving(script=[500] * 10) as receiver:
        await _endpoint(hooks, who, receiver.url)
        await record(resources, who.model, BASE, symbols=("EURUSD",))
        await receiver.wait_for(lambda got: len(got) >= 1)
        await hooks.CancelSubscription(
            pb.CancelSubscriptionRequest(id=who.subscription.id, immediately=True),
            metadata=who.reader.metadata,
        )
        (delivery,) = await _until_settled(hooks, who, 1)
        assert delivery.state == pb.WEBHOOK_DELIVERY_STATE_CANCELED
        assert len(receiver.received) == len(delivery.attempts) < 3
        assert not delivery.next_attempt_time.seconds


SSRF = [
    "https://127.0.0.1/hook",
    "https://10.1.2.3/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://localhost/hook",
    "https://0.0.0.0/hook",
    "https://224.0.0.1/hook",
    "http://93.184.215.14/hook",
    "https://user:pw@93.184.215.14/hook",
    "ftp://93.184.215.14/hook",
    "https://no-such-host.invalid/hook",
]


async def test_private_and_reserved_endpoints_are_refused(
    channel: aio.Channel, subs: pb_grpc.SubscriptionServiceAsyncStub, sign_up: SignUp,
    resources: Resources,
) -> None:  # fmt: skip
    assert resources.settings.webhooks_allow_private == "off"
    who = await _subscribed(channel, sign_up, resources)
    for url in SSRF:
        with pytest.raises(grpc.RpcError) as caught:
            await _endpoint(subs, who, url)
        assert status_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT, url
        assert "url" in field_violations(caught.value), url
    # What a name resolves to inside the platform's network is not told to the subscriber.
    with pytest.raises(grpc.RpcError) as caught:
        await _endpoint(subs, who, "https://localhost/hook")
    assert "127.0.0.1" not in field_violations(caught.value)["url"]
    for address in (
        "100.64.0.1", "192.168.1.1", "fe80::1", "240.0.0.1", "fc00::1", "2002:7f00:1::",
        "2002:a01:203::", "fec0::1",
    ):  # fmt: skip
        with pytest.raises(EndpointRefused):
            check_address(ipaddress.ip_address(address), allow_private=False)
    check_address(ipaddress.ip_address("93.184.215.14"), allow_private=False)
    check_address(ipaddress.ip_address("2002:5db8:d70e::"), allow_private=False)


async def test_an_endpoint_that_turned_private_is_refused_at_delivery(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    hooks_resources: Resources,
    resources: Resources,
    sign_up: SignUp,
) -> None:
    """Registered where private addresses were allowed; delivered where they are not (as for a
    name whose address changed after registration): the POST is never made."""
    who = await _subscribed(channel, sign_up, resources)
    async with receiving() as receiver:
        await _endpoint(hooks, who, receiver.url)
        await record(resources, who.model, BASE, symbols=("EURUSD",))
        (delivery,) = await _log(hooks, who)
        strict = dataclasses.replace(hooks_resources.settings, webhooks_allow_private="off")
        db, clock = hooks_resources.db, hooks_resources.clock
        assert await send_one(db, strict, clock, uuid.UUID(delivery.id)) == "pending"
        (delivery,) = await _log(hooks, who)
        assert delivery.attempts[0].error.startswith("refused: ")
        assert delivery.attempts[0].status_code == 0
        assert receiver.received == []


async def test_bad_input_over_grpc(
    channel: aio.Channel,
    hooks: pb_grpc.SubscriptionServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    who = await _subscribed(channel, sign_up, resources)
    md = who.reader.metadata
    cases: list[tuple[object, str]] = [
        (pb.CreateWebhookEndpointRequest(url="http://127.0.0.1/x"), "subscription_id"),
        (pb.CreateWebhookEndpointRequest(subscription_id="nope", url="x"), "subscription_id"),
        (pb.CreateWebhookEndpointRequest(subscription_id=who.subscription.id), "url"),
        (
            pb.CreateWebhookEndpointRequest(
                subscription_id=who.subscription.id, url="http://127.0.0.1/\x00"
            ),
            "url",
        ),
        (
            pb.CreateWebhookEndpointRequest(
                subscription_id=who.subscription.id, url="http://127.0.0.1/", description="x" * 201
            ),
            "description",
        ),
        (
            pb.CreateWebhookEndpointRequest(
                subscription_id=who.subscription.id, url="https://[::1/x"
            ),
            "url",
        ),
        (
            pb.CreateWebhookEndpointRequest(
                subscription_id=who.subscription.id, url="https://[x]/"
            ),
            "url",
        ),
        (pb.ListWebhookDeliveriesRequest(subscription_id="1"), "subscription_id"),
        (
            pb.ListWebhookDeliveriesRequest(subscription_id=who.subscription.id, page_token="x"),
            "page_token",
        ),
        (pb.ListWebhookEndpointsRequest(subscription_id=""), "subscription_id"),
        (pb.SendTestWebhookRequest(id=""), "id"),
        (pb.DeleteWebhookEndpointRequest(id="zz"), "id"),
    ]
    methods = {
        pb.CreateWebhookEndpointRequest: hooks.CreateWebhookEndpoint,
        pb.ListWebhookDeliveriesRequest: hooks.ListWebhookDeliveries,
        pb.ListWebhookEndpointsRequest: hooks.ListWebhookEndpoints,
        pb.SendTestWebhookRequest: hooks.SendTestWebhook,
        pb.DeleteWebhookEndpointRequest: hooks.DeleteWebhookEndpoint,
    }
    for request, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await methods[type(request)](request, metadata=md)  # type: ignore[operator]
        assert status_code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in field_violations(caught.value), (request, field_violations(caught.value))

    # Someone else's subscription and endpoint do not exist for this caller.
    stranger = await sign_up(account_pb.ROLE_SUBSCRIBER)
    created = await _endpoint(hooks, who, "http://127.0.0.1:9/x")
    for call, request in [
        (hooks.ListWebhookEndpoints,
         pb.ListWebhookEndpointsRequest(subscription_id=who.subscription.id)),
        (hooks.SendTestWebhook, pb.SendTestWebhookRequest(id=created.endpoint.id)),
        (hooks.DeleteWebhookEndpoint, pb.DeleteWebhookEndpointRequest(id=created.endpoint.id)),
        (
            hooks.CreateWebhookEndpoint,
            pb.CreateWebhookEndpointRequest(
                subscription_id=who.subscription.id, url="http://127.0.0.1:9/x"
            ),
        ),
    ]:  # fmt: skip
        with pytest.raises(grpc.RpcError) as caught:
            await call(request, metadata=stranger.metadata)  # type: ignore[operator]
        assert status_code(caught.value) == grpc.StatusCode.NOT_FOUND

    # At most five endpoints per subscription; deleting one frees a place.
    for _ in range(4):
        await _endpoint(hooks, who, "http://127.0.0.1:9/x")
    with pytest.raises(grpc.RpcError) as caught:
        await _endpoint(hooks, who, "http://127.0.0.1:9/x")
    assert status_code(caught.value) == grpc.StatusCode.FAILED_PRECONDITION
    await hooks.DeleteWebhookEndpoint(
        pb.DeleteWebhookEndpointRequest(id=created.endpoint.id), metadata=md
    )
    await _endpoint(hooks, who, "http://127.0.0.1:9/x")


async def test_bad_input_over_rest(
    envoy: Envoy, channel: aio.Channel, sign_up: SignUp, resources: Resources
) -> None:
    who = await _subscribed(channel, sign_up, resources)
    auth = {"authorization": f"Bearer {who.reader.tokens.access_token}"}
    sub = who.subscription.id
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as http:
        refused = await http.post(
            f"/v1/subscriptions/{sub}/webhooks",
            json={"url": "https://169.254.169.254/latest"},
            headers=auth,
        )
        assert refused.status_code == 400, refused.text
        assert "url" in refused.text
        bad_id = await http.get("/v1/subscriptions/not-a-uuid/webhook-deliveries", headers=auth)
        assert bad_id.status_code == 400
        unknown = await http.delete(f"/v1/webhooks/{uuid.uuid4()}", headers=auth)
        assert unknown.status_code == 404
        test = await http.post(f"/v1/webhooks/{uuid.uuid4()}:test", json={}, headers=auth)
        assert test.status_code == 404
        listed = await http.get(f"/v1/subscriptions/{sub}/webhooks", headers=auth)
        assert listed.status_code == 200
        assert listed.json().get("endpoints", []) == []
        anonymous = await http.get(f"/v1/subscriptions/{sub}/webhooks")
        assert anonymous.status_code == 401


def test_signatures_follow_standard_webhooks() -> None:
    """The test vector of the Standard Webhooks specification, then tampering and replays."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, msg_id, timestamp, body) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": f"v1,bm90IGl0 {expected}"}  # fmt: skip
    assert verify(secret, headers, body, now=timestamp + 10) == msg_id
    with pytest.raises(SignatureInvalid):
        verify(secret, headers, body + b" ", now=timestamp)
    with pytest.raises(SignatureInvalid):
        verify(secret, headers, body, now=timestamp + 301)
    with pytest.raises(SignatureInvalid):
        verify(secret, {**headers, "webhook-id": "msg_other"}, body, now=timestamp)


async def test_the_test_receiver_follows_its_script() -> None:
    """The helper itself answers by its script (so the tests above can fail)."""
    async with receiving(script=[418]) as receiver, httpx.AsyncClient() as client:
        assert (await client.post(receiver.url, content=b"{}")).status_code == 418
        assert (await client.post(receiver.url, content=b"{}")).status_code == 200
    assert [r.body for r in receiver.received] == [b"{}", b"{}"]


def _certificate(host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for `host` and its key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


async def test_https_is_verified_against_the_host_name_not_the_address(tmp_path: Path) -> None:
    """The POST connects to the checked address and verifies TLS for the URL's host: a
    certificate for another name is refused though the address is the same."""
    cert, key = _certificate("hooks.test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    trust = ssl.create_default_context(cadata=cert.decode())
    loopback = [ipaddress.ip_address("127.0.0.1")]
    async with receiving(tls=server) as receiver:
        good = parse_url(f"https://hooks.test:{receiver.port}/in", allow_private=True)
        assert await post(good, loopback, {}, b"{}", 5, trust) == 200
        assert receiver.received[0].headers["host"] == f"hooks.test:{receiver.port}"
        other = parse_url(f"https://other.test:{receiver.port}/in", allow_private=True)
        with pytest.raises(SendFailed, match="TLS failed"):
            await post(other, loopback, {}, b"{}", 5, trust)
        # The system's authorities do not know this certificate either.
        with pytest.raises(SendFailed, match="TLS failed"):
            await post(good, loopback, {}, b"{}", 5)
    assert len(receiver.received) == 1


_LISTENERS = text(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND query LIKE 'LISTEN%foretell_webhooks%'"
)


async def test_the_dispatcher_listens_again_after_its_connection_ended(
    hooks_resources: Resources,
) -> None:
    """As after a PostgreSQL restart: the dispatcher's LISTEN connection ends; it opens another
    (meanwhile its one-second tick still finds due deliveries)."""
    async with dispatching(hooks_resources):
        async with hooks_resources.db.read.connect() as conn:
            before = set((await conn.scalars(_LISTENERS)).all())
            assert before
            for pid in before:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        deadline = time.monotonic() + 10
        while True:
            async with hooks_resources.db.read.connect() as conn:
                now = set((await conn.scalars(_LISTENERS)).all())
            if now - before:
                break
            assert time.monotonic() < deadline, "the dispatcher never listened again"
            await asyncio.sleep(0.1)


async def test_an_endpoint_that_answers_no_status_line_is_a_failed_attempt() -> None:
    """A status line past the stream's limit (or none at all) is SendFailed like any other
    endpoint that does not speak HTTP, so the attempt is counted and retried, never left
    leased for ever."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 " + b"x" * 100_000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        target = parse_url(f"http://127.0.0.1:{port}/in", allow_private=True)
        with pytest.raises(SendFailed, match="did not answer HTTP"):
            await post(target, [ipaddress.ip_address("127.0.0.1")], {}, b"{}", 5)
