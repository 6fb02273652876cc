"""Every bad input gets a 4xx (INVALID_ARGUMENT and friends) with field details and nothing
internal, over native gRPC and REST through Envoy: NUL characters, invalid UTF-8, forged page
tokens, out-of-range times, floods of violations, oversized headers and bodies, unknown JSON
fields and tokens of deleted accounts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy import text

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.common.v1 import common_pb2
from foretell.forecast.v1 import forecast_service_pb2 as forecast_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as forecast_grpc
from foretell.registry.v1 import registry_service_pb2 as registry_pb
from foretell.registry.v1 import registry_service_pb2_grpc as registry_grpc
from foretell.runtime import Resources
from foretell.subscription.v1 import subscription_service_pb2 as subscription_pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as subscription_grpc
from tests._envoy import Envoy
from tests._errors import field_violations
from tests._registry import create_model, model_name
from tests.conftest import PASSWORD, SignUp, unique_email

# Words that would mean an error leaks internals.
LEAKS = ("Traceback", "DecodeError", "google.protobuf", "foretell.", ".py", "Exception", "asyncpg")


@pytest.fixture
async def http(envoy: Envoy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=30) as client:
        yield client


def _no_leak(body: str) -> None:
    for word in LEAKS:
        assert word not in body, (word, body[:500])


async def _invalid(call: object) -> dict[str, str]:
    """The field violations of a call that must fail with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as caught:
        await call  # type: ignore[misc]
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    _no_leak(error.details() or "")
    return field_violations(error)


def _rest_violations(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 400, response.text
    _no_leak(response.text)
    fields: dict[str, str] = {}
    for detail in response.json().get("details", []):
        for violation in detail.get("fieldViolations", []):
            fields[violation["field"]] = violation["description"]
    return fields


async def test_nul_characters_are_refused_at_the_edge(
    channel: aio.Channel, http: httpx.AsyncClient, sign_up: SignUp
) -> None:
    me = await sign_up()
    auth = {"authorization": f"Bearer {me.tokens.access_token}"}
    signup = {
        "email": "nul\u0000x@example.com",
        "password": PASSWORD,
        "displayName": "Nul",
        "role": "ROLE_SUBSCRIBER",
    }
    assert "email" in _rest_violations(await http.post("/v1/users", json=signup))
    model = {
        "name": model_name(),
        "title": "Nul model",
        "description": "a description with a \u0000 in it",
        "symbols": ["EURUSD"],
        "resolution": "RESOLUTION_1H",
        "horizon": 1,
    }
    fields = _rest_violations(await http.post("/v1/models", json=model, headers=auth))
    assert "model.description" in fields
    listed = await http.get("/v1/models", params={"tag": "fx\u0000"}, headers=auth)
    assert "tag" in _rest_violations(listed)

    registry = registry_grpc.RegistryServiceStub(channel)
    fields = await _invalid(
        registry.ListModels(
            registry_pb.ListModelsRequest(page_token="ab\u0000"), metadata=me.metadata
        )
    )
    assert fields == {"page_token": "must not contain NUL characters"}
    account = account_grpc.AccountServiceStub(channel)
    fields = await _invalid(
        account.Login(account_pb.LoginRequest(email="a\u0000@example.com", password="p" * 12))
    )
    assert "email" in fields


def _forged(cursor: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


FORGED = [
    _forged(10**400),
    _forged(["subscriptions", "", "99999-01-01T00:00:00+00:00", "x"]),
    "W" * 20 + base64.urlsafe_b64encode(b"[" * 100_000).decode(),
    base64.urlsafe_b64encode(b"[" * 50_000 + b"]" * 50_000).decode(),
    _forged(["GetLedger", "m", 10**30]),
    "not a token at all",
    "abc.def",
]


async def test_forged_page_tokens_are_invalid_page_tokens(
    channel: aio.Channel, sign_up: SignUp
) -> None:
    me = await sign_up()
    registry = registry_grpc.RegistryServiceStub(channel)
    forecasts = forecast_grpc.ForecastServiceStub(channel)
    subscriptions = subscription_grpc.SubscriptionServiceStub(channel)
    model = await create_model(registry, me.metadata)
    for token in FORGED:
        calls = [
            registry.ListModels(
                registry_pb.ListModelsRequest(page_token=token), metadata=me.metadata
            ),
            registry.ListVersions(
                registry_pb.ListVersionsRequest(model=model.name, page_token=token),
                metadata=me.metadata,
            ),
            forecasts.ListForecasts(
                forecast_pb.ListForecastsRequest(model=model.name, page_token=token),
                metadata=me.metadata,
            ),
            forecasts.ListRuns(
                forecast_pb.ListRunsRequest(model=model.name, page_token=token),
                metadata=me.metadata,
            ),
            forecasts.GetLedger(
                forecast_pb.GetLedgerRequest(model=model.name, page_token=token),
                metadata=me.metadata,
            ),
            subscriptions.ListSubscriptions(
                subscription_pb.ListSubscriptionsRequest(page_token=token), metadata=me.metadata
            ),
            subscriptions.ListInvoices(
                subscription_pb.ListInvoicesRequest(page_token=token), metadata=me.metadata
            ),
        ]
        for call in calls:
            assert "page_token" in await _invalid(call), token[:40]


async def test_a_page_token_serves_only_the_call_that_issued_it(
    channel: aio.Channel, sign_up: SignUp
) -> None:
    me = await sign_up()
    registry = registry_grpc.RegistryServiceStub(channel)
    for _ in range(2):
        await create_model(registry, me.metadata)
    page = await registry.ListModels(
        registry_pb.ListModelsRequest(page_size=1, only_mine=True), metadata=me.metadata
    )
    assert page.next_page_token
    following = await registry.ListModels(
        registry_pb.ListModelsRequest(page_size=1, only_mine=True, page_token=page.next_page_token),
        metadata=me.metadata,
    )
    assert following.models[0].name != page.models[0].name
    # Altered by one character, or handed to another call: refused.
    token = page.next_page_token
    altered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    await _invalid(
        registry.ListModels(registry_pb.ListModelsRequest(page_token=altered), metadata=me.metadata)
    )
    forecasts = forecast_grpc.ForecastServiceStub(channel)
    await _invalid(
        forecasts.ListRuns(
            forecast_pb.ListRunsRequest(model=page.models[0].name, page_token=token),
            metadata=me.metadata,
        )
    )


async def test_invalid_utf8_and_unparsable_requests_are_invalid_argument(
    channel: aio.Channel, http: httpx.AsyncClient, sign_up: SignUp
) -> None:
    me = await sign_up()
    auth = {"authorization": f"Bearer {me.tokens.access_token}"}
    response = await http.get("/v1/models/%FF%FEabc", headers=auth)
    assert response.status_code == 400, response.text
    _no_leak(response.text)

    # Field 1 (a string) holding invalid UTF-8, and bytes that are no message at all.
    for raw in (b"\x0a\x03\xff\xfe\x41", b"\xff\xff\xff\xff"):
        call: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/foretell.registry.v1.RegistryService/GetModel",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as caught:
            await call(raw, metadata=me.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _no_leak(caught.value.details() or "")


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


async def test_out_of_range_timestamps_are_field_violations(
    channel: aio.Channel, sign_up: SignUp
) -> None:
    me = await sign_up()
    model = await create_model(registry_grpc.RegistryServiceStub(channel), me.metadata)
    forecasts = forecast_grpc.ForecastServiceStub(channel)
    fields = await _invalid(
        forecasts.ListForecasts(
            forecast_pb.ListForecastsRequest(
                model=model.name, start_time=_ts(10**12), end_time=_ts(0, -1)
            ),
            metadata=me.metadata,
        )
    )
    assert {"start_time", "end_time"} <= set(fields)
    fields = await _invalid(
        forecasts.ListRuns(
            forecast_pb.ListRunsRequest(model=model.name, start_time=_ts(-(10**12))),
            metadata=me.metadata,
        )
    )
    assert "start_time" in fields
    fields = await _invalid(
        forecasts.DryRun(
            forecast_pb.DryRunRequest(model=model.name, as_of=_ts(10**12)), metadata=me.metadata
        )
    )
    assert "as_of" in fields


async def test_field_violations_are_capped_with_a_count(
    channel: aio.Channel, sign_up: SignUp
) -> None:
    me = await sign_up()
    registry = registry_grpc.RegistryServiceStub(channel)
    fields = await _invalid(
        registry.CreateModel(
            registry_pb.CreateModelRequest(
                model=registry_pb.Model(
                    name=model_name(),
                    title="Many symbols",
                    symbols=[f"bad symbol {i}" for i in range(20_000)],
                    tags=[f"Bad Tag {i}" for i in range(10_000)],
                    resolution=common_pb2.RESOLUTION_1H,
                    horizon=1,
                )
            ),
            metadata=me.metadata,
        )
    )
    assert len(fields) <= 21
    assert fields["request"].endswith("more problems not listed")


async def test_oversized_headers_are_refused_cleanly_by_the_gateway(
    http: httpx.AsyncClient, envoy: Envoy
) -> None:
    huge = {"authorization": "Bearer " + "x" * 17_000}
    for _ in range(3):
        response = await http.get("/v1/users/me", headers=huge)
        assert response.status_code == 431, response.text
        query = await http.get("/v1/models", params={"tag": "a" * 17_000})
        assert query.status_code in (414, 431), query.text
    async with aio.insecure_channel(envoy.grpc_target) as gateway:
        stub = account_grpc.AccountServiceStub(gateway)
        codes = set()
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                await stub.GetMe(
                    account_pb.GetMeRequest(), metadata=(("authorization", huge["authorization"]),)
                )
            codes.add(caught.value.code())
            _no_leak(caught.value.details() or "")
        assert len(codes) == 1
        assert codes != {grpc.StatusCode.RESOURCE_EXHAUSTED}


async def _status_of_post(envoy: Envoy, path: str, size: int) -> int:
    """The status Envoy answers a POST of a `size`-byte body with, read while the body is still
    being sent (Envoy answers as soon as the limit is crossed and stops reading)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", envoy.port)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: foretell\r\ncontent-type: application/json\r\n"
        f"content-length: {size}\r\n\r\n"
    )

    async def send() -> None:
        writer.write(head.encode())
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(chunk)):
                writer.write(chunk)
                await writer.drain()

    sending = asyncio.create_task(send())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        writer.close()
    return int(status_line.split()[1])


async def test_large_bodies_are_413_from_the_gateway(http: httpx.AsyncClient, envoy: Envoy) -> None:
    for size in (10 * 1024 * 1024, 60 * 1024 * 1024):
        assert await _status_of_post(envoy, "/v1/auth:logout", size) == 413
    # Signing in needs a few hundred bytes: 9 KiB is refused too.
    login = {"email": unique_email(), "password": "p" * 9 * 1024}
    assert (await http.post("/v1/auth:login", json=login)).status_code == 413
    model = {"name": model_name(), "description": "d" * 300 * 1024}
    assert (await http.post("/v1/models", json=model)).status_code == 413


async def test_unknown_json_fields_are_400_naming_the_field(
    http: httpx.AsyncClient, sign_up: SignUp
) -> None:
    me = await sign_up()
    auth = {"authorization": f"Bearer {me.tokens.access_token}"}
    model = {
        "name": model_name(),
        "title": "Typo",
        "symbols": ["EURUSD"],
        "resolution": "RESOLUTION_1H",
        "horizon": 1,
        "visibilty": "VISIBILITY_PUBLIC",
    }
    response = await http.post("/v1/models", json=model, headers=auth)
    assert response.status_code == 400, response.text
    assert "visibilty" in response.json()["message"]
    plan = {"priceMinor": "4900", "currency": "USD", "trialDay": 7}
    response = await http.put(f"/v1/models/{model['name']}/plan", json=plan, headers=auth)
    assert response.status_code == 400, response.text
    assert _rest_violations(response) == {"trialDay": "no such field"}
    # Nested messages are checked too; known fields, in either spelling, pass.
    nested = {"email": unique_email(), "password": PASSWORD, "displayName": "N", "extra": {}}
    assert _rest_violations(await http.post("/v1/users", json=nested)) == {"extra": "no such field"}
    known = {"email": unique_email(), "password": PASSWORD, "display_name": "N", "role": 2}
    assert (await http.post("/v1/users", json=known)).status_code == 200


async def test_a_token_whose_account_is_gone_is_401(
    channel: aio.Channel, http: httpx.AsyncClient, sign_up: SignUp, resources: Resources
) -> None:
    me = await sign_up()
    async with resources.db.session() as session:
        await session.execute(text("DELETE FROM users WHERE id = :id"), {"id": me.user.id})
        await session.commit()
    account = account_grpc.AccountServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        await account.CreateApiKey(account_pb.CreateApiKeyRequest(name="k"), metadata=me.metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    auth = {"authorization": f"Bearer {me.tokens.access_token}"}
    created = await http.post(
        "/v1/models",
        json={"name": model_name(), "title": "t", "symbols": ["EURUSD"], "horizon": 1},
        headers=auth,
    )
    assert created.status_code == 401, created.text
