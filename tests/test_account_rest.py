"""AccountService through Envoy: REST (gRPC-JSON transcoding), native gRPC, grpc-web, CORS,
rate limiting and reflection."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc import aio
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from foretell.account.v1 import account_service_pb2 as pb
from foretell.account.v1 import account_service_pb2_grpc as pb_grpc
from foretell.composition import SERVICES
from foretell.runtime import RunningServer
from foretell.services.account import _queries
from foretell.settings import Address, Settings
from tests import _envoy
from tests._envoy import Envoy
from tests.conftest import PASSWORD, unique_email

# Words that would mean an error body leaks internals.
LEAKS = ("Traceback", "sqlalchemy", "asyncpg", "psycopg", ".py", "Exception", "SELECT", "upstream")


@pytest.fixture
async def http(envoy: Envoy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        yield client


def new_user(**change: object) -> dict[str, object]:
    body: dict[str, object] = {
        "email": unique_email("rest"),
        "password": PASSWORD,
        "displayName": "Rest User",
        "role": "ROLE_SUBSCRIBER",
    }
    body.update(change)
    return body


def assert_no_leak(response: httpx.Response) -> None:
    for word in LEAKS:
        assert word not in response.text, (word, response.text)


async def sign_in(http: httpx.AsyncClient) -> tuple[dict[str, object], dict[str, str]]:
    body = new_user()
    assert (await http.post("/v1/users", json=body)).status_code == 200
    login = await http.post("/v1/auth:login", json={"email": body["email"], "password": PASSWORD})
    assert login.status_code == 200
    tokens = login.json()["tokens"]
    return login.json(), {"authorization": f"Bearer {tokens['accessToken']}"}


async def test_register_login_me(http: httpx.AsyncClient) -> None:
    body = new_user()
    created = await http.post("/v1/users", json=body)
    assert created.status_code == 200
    user = created.json()["user"]
    assert user["email"] == body["email"]
    assert user["displayName"] == "Rest User"
    assert user["role"] == "ROLE_SUBSCRIBER"

    login = await http.post("/v1/auth:login", json={"email": body["email"], "password": PASSWORD})
    assert login.status_code == 200
    tokens = login.json()["tokens"]
    assert tokens["tokenType"] == "Bearer"
    me = await http.get(
        "/v1/users/me", headers={"authorization": f"Bearer {tokens['accessToken']}"}
    )
    assert me.status_code == 200
    assert me.json()["user"] == user

    refreshed = await http.post("/v1/auth:refresh", json={"refreshToken": tokens["refreshToken"]})
    assert refreshed.status_code == 200
    new_refresh = refreshed.json()["tokens"]["refreshToken"]
    reused = await http.post("/v1/auth:refresh", json={"refreshToken": tokens["refreshToken"]})
    assert reused.status_code == 401
    family_gone = await http.post("/v1/auth:refresh", json={"refreshToken": new_refresh})
    assert family_gone.status_code == 401

    login = await http.post("/v1/auth:login", json={"email": body["email"], "password": PASSWORD})
    refresh = login.json()["tokens"]["refreshToken"]
    assert (await http.post("/v1/auth:logout", json={"refreshToken": refresh})).status_code == 200
    assert (await http.post("/v1/auth:refresh", json={"refreshToken": refresh})).status_code == 401


async def test_api_keys_over_rest(http: httpx.AsyncClient) -> None:
    _, auth = await sign_in(http)
    created = await http.post("/v1/users/me/apiKeys", json={"name": "bot"}, headers=auth)
    assert created.status_code == 200
    key, secret = created.json()["apiKey"], created.json()["secret"]
    listed = await http.get("/v1/users/me/apiKeys", headers=auth)
    assert [k["id"] for k in listed.json()["apiKeys"]] == [key["id"]]
    assert secret not in listed.text
    me = await http.get("/v1/users/me", headers={"authorization": f"Bearer {secret}"})
    assert me.status_code == 200
    assert (await http.delete(f"/v1/users/me/apiKeys/{key['id']}", headers=auth)).status_code == 200
    me = await http.get("/v1/users/me", headers={"authorization": f"Bearer {secret}"})
    assert me.status_code == 401
    missing = await http.delete("/v1/users/me/apiKeys/not-a-uuid", headers=auth)
    assert missing.status_code == 400


async def test_jwks_is_a_json_web_key_set(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/auth/jwks")
    assert response.status_code == 200
    (key,) = response.json()["keys"]
    assert {key["kty"], key["alg"], key["crv"], key["use"]} == {"EC", "ES256", "P-256", "sig"}


async def test_validation_errors_are_400_with_field_violations(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/users", json=new_user(email="nope", password="short", displayName="")
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (bad_request,) = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    fields = {v["field"] for v in bad_request["fieldViolations"]}
    assert fields == {"email", "password", "display_name"}
    assert_no_leak(response)


@pytest.mark.parametrize(
    ("content", "case"),
    [
        (b"{not json", "malformed JSON"),
        (b'{"email": 12, "password": "x"}', "wrong type"),
        (
            b'{"email": "a@example.com", "password": "correct horse", "isAdmin": true}',
            "unknown field",
        ),
        (b'{"role": "ROLE_SUPERUSER"}', "unknown enum value"),
        (b"[]", "array instead of object"),
    ],
)
async def test_malformed_bodies_are_400(http: httpx.AsyncClient, content: bytes, case: str) -> None:
    response = await http.post(
        "/v1/users", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, case
    assert_no_leak(response)


async def test_duplicate_email_is_409(http: httpx.AsyncClient) -> None:
    body = new_user()
    assert (await http.post("/v1/users", json=body)).status_code == 200
    again = await http.post("/v1/users", json=body)
    assert again.status_code == 409
    assert_no_leak(again)


async def test_admin_role_cannot_be_self_assigned(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/users", json=new_user(role="ROLE_ADMIN"))
    assert response.status_code == 400


async def test_wrong_password_is_401_and_missing_token_is_401(http: httpx.AsyncClient) -> None:
    body = new_user()
    await http.post("/v1/users", json=body)
    wrong = await http.post("/v1/auth:login", json={"email": body["email"], "password": "x" * 12})
    assert wrong.status_code == 401
    assert (await http.get("/v1/users/me")).status_code == 401


async def test_api_key_cannot_manage_keys_403(http: httpx.AsyncClient) -> None:
    _, auth = await sign_in(http)
    secret = (await http.post("/v1/users/me/apiKeys", json={"name": "k"}, headers=auth)).json()[
        "secret"
    ]
    response = await http.post(
        "/v1/users/me/apiKeys", json={"name": "k2"}, headers={"authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 403
    assert_no_leak(response)


async def test_unknown_paths_and_query_parameters_are_rejected(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/nothing-here")).status_code == 404
    response = await http.get("/v1/auth/jwks", params={"debug": "1"})
    assert response.status_code == 400
    assert_no_leak(response)


async def test_login_back_off_is_429(http: httpx.AsyncClient, settings: Settings) -> None:
    body = new_user()
    await http.post("/v1/users", json=body)
    wrong = {"email": body["email"], "password": "wrong password 123"}
    for _ in range(settings.login_free_failures + 1):
        assert (await http.post("/v1/auth:login", json=wrong)).status_code == 401
    locked = await http.post("/v1/auth:login", json={"email": body["email"], "password": PASSWORD})
    assert locked.status_code == 429
    assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in locked.json()["details"])


async def test_native_grpc_through_envoy(envoy: Envoy) -> None:
    async with aio.insecure_channel(envoy.grpc_target) as channel:
        stub = pb_grpc.AccountServiceStub(channel)
        email = unique_email("grpc")
        await stub.CreateUser(
            pb.CreateUserRequest(
                email=email, password=PASSWORD, display_name="G", role=pb.ROLE_PROVIDER
            )
        )
        login = await stub.Login(pb.LoginRequest(email=email, password=PASSWORD))
        me = await stub.GetMe(
            pb.GetMeRequest(),
            metadata=(("authorization", f"Bearer {login.tokens.access_token}"),),
        )
        assert me.user.email == email
        with pytest.raises(grpc.RpcError) as caught:
            await stub.CreateUser(pb.CreateUserRequest(email="bad"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_grpc_web_through_envoy(http: httpx.AsyncClient) -> None:
    frame = b"\x00" + struct.pack(">I", 0)  # an empty GetJwksRequest
    response = await http.post(
        "/foretell.account.v1.AccountService/GetJwks",
        content=frame,
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
    )
    assert response.status_code == 200
    body = response.content
    length = struct.unpack(">I", body[1:5])[0]
    message = pb.GetJwksResponse.FromString(body[5 : 5 + length])
    assert message.keys[0].alg == "ES256"
    trailers = body[5 + length :]
    assert trailers[0] == 0x80 and b"grpc-status:0" in trailers


async def test_cors_preflight_allows_the_web_app_origin_only(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    origin = settings.cors_origins[0]
    allowed = await http.options(
        "/v1/users/me",
        headers={
            "origin": origin,
            "access-control-request-method": "GET",
            "access-control-request-headers": "authorization",
        },
    )
    assert allowed.headers.get("access-control-allow-origin") == origin
    assert "authorization" in allowed.headers.get("access-control-allow-headers", "").lower()
    denied = await http.options(
        "/v1/users/me",
        headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
    )
    assert "access-control-allow-origin" not in denied.headers


async def test_reflection_lists_and_calls_services_through_envoy(envoy: Envoy) -> None:
    # The reflection client is synchronous: run it off the loop the server is on.
    await asyncio.to_thread(_reflect_and_call, envoy)


def _reflect_and_call(envoy: Envoy) -> None:
    with grpc.insecure_channel(envoy.grpc_target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {d.full_name for d in SERVICES.values()} <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("foretell.account.v1.AccountService")
        method = service.methods_by_name["GetJwks"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/foretell.account.v1.AccountService/GetJwks",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        response = call(request_cls(), timeout=10)
        # A dynamic message from the reflected schema, not the generated class.
        keys = getattr(response, "keys")  # noqa: B009
        assert keys[0].kty == "EC"


@pytest.mark.timeout(60)
async def test_envoy_rate_limits_the_auth_routes(
    settings: Settings, grpc_server: RunningServer, tmp_root: Path
) -> None:
    limited = dataclasses.replace(settings, auth_rate_limit_per_min=3)
    upstream = Address("127.0.0.1", grpc_server.port)
    upstreams = dict.fromkeys(SERVICES, upstream)
    async with (
        _envoy.running_envoy(limited, upstreams, tmp_root / "envoy-limited") as gw,
        httpx.AsyncClient(base_url=gw.base_url) as http,
    ):
        wrong = {"email": unique_email("flood"), "password": "wrong password 123"}
        codes = [(await http.post("/v1/auth:login", json=wrong)).status_code for _ in range(5)]
        assert codes[:3] == [401, 401, 401]
        assert codes[3:] == [429, 429]
        limited_body = (await http.post("/v1/auth:login", json=wrong)).json()
        assert limited_body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        # Reads are not limited.
        assert (await http.get("/v1/auth/jwks")).status_code == 200
        async with aio.insecure_channel(gw.grpc_target) as channel:
            stub = pb_grpc.AccountServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                await stub.Login(pb.LoginRequest(email="x@example.com", password="y" * 12))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_unexpected_error_is_a_bare_500_over_rest(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, auth = await sign_in(http)

    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("asyncpg: relation users at /srv/foretell/_store.py line 12")

    monkeypatch.setattr(_queries, "get_user", explode)
    response = await http.get("/v1/users/me", headers=auth)
    assert response.status_code == 500
    assert response.json()["message"].startswith("internal error; reference ")
    assert_no_leak(response)
