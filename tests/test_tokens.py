"""Every token is forged until verified: each kind of bad token is refused over gRPC and over
REST through Envoy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from foretell.account.v1 import account_service_pb2 as pb
from foretell.account.v1 import account_service_pb2_grpc as pb_grpc
from foretell.auth.api_keys import remember_existing
from foretell.auth.policy import Role
from foretell.auth.tokens import TokenIssuer
from foretell.runtime import Resources
from tests._envoy import Envoy
from tests.conftest import SignUp


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(res: Resources, user_id: str, **change: object) -> dict[str, object]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, object] = {
        "iss": res.settings.jwt_issuer,
        "aud": res.settings.jwt_audience,
        "sub": user_id,
        "role": "admin",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(change)
    return {k: v for k, v in claims.items() if v is not None}


def forged_tokens(res: Resources, valid: str, user_id: str) -> dict[str, str]:
    kid = res.keys.signing_kid
    signing_key = res.keys.signing_key
    other_key = ec.generate_private_key(ec.SECP256R1())
    header, payload, signature = valid.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["role"] = "admin"
    public_pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused_head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    confused_body = _b64(json.dumps(_claims(res, user_id)).encode())
    confused_sig = hmac.new(
        public_pem, f"{confused_head}.{confused_body}".encode(), hashlib.sha256
    ).digest()
    expired, _ = TokenIssuer(
        res.keys, res.settings.jwt_issuer, res.settings.jwt_audience, timedelta(minutes=15)
    ).issue(uuid.UUID(user_id), Role.PROVIDER, datetime.now(UTC) - timedelta(hours=1))
    return {
        "expired": expired,
        "alg none": jwt.encode(_claims(res, user_id), "", algorithm="none", headers={"kid": kid}),
        "wrong key": jwt.encode(
            _claims(res, user_id), other_key, algorithm="ES256", headers={"kid": kid}
        ),
        "unknown kid": jwt.encode(
            _claims(res, user_id), other_key, algorithm="ES256", headers={"kid": "made-up"}
        ),
        "wrong audience": jwt.encode(
            _claims(res, user_id, aud="someone-else"), signing_key, "ES256", headers={"kid": kid}
        ),
        "wrong issuer": jwt.encode(
            _claims(res, user_id, iss="evil"), signing_key, "ES256", headers={"kid": kid}
        ),
        "no expiry": jwt.encode(
            _claims(res, user_id, exp=None), signing_key, "ES256", headers={"kid": kid}
        ),
        "unknown role": jwt.encode(
            _claims(res, user_id, role="root"), signing_key, "ES256", headers={"kid": kid}
        ),
        "tampered payload": f"{header}.{_b64(json.dumps(tampered).encode())}.{signature}",
        "HS256 with the public key": f"{confused_head}.{confused_body}.{_b64(confused_sig)}",
    }


async def test_forged_tokens_are_refused_over_grpc(
    account: pb_grpc.AccountServiceAsyncStub, sign_up: SignUp, resources: Resources
) -> None:
    me = await sign_up()
    tokens = forged_tokens(resources, me.tokens.access_token, me.user.id)
    for name, token in tokens.items():
        with pytest.raises(grpc.RpcError) as caught:
            await account.GetMe(pb.GetMeRequest(), metadata=(("authorization", f"Bearer {token}"),))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, name


async def test_forged_tokens_are_refused_over_rest(
    envoy: Envoy, sign_up: SignUp, resources: Resources
) -> None:
    me = await sign_up()
    tokens = forged_tokens(resources, me.tokens.access_token, me.user.id)
    async with httpx.AsyncClient(base_url=envoy.base_url) as http:
        for name, token in tokens.items():
            response = await http.get("/v1/users/me", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 401, name
            assert response.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0], name


async def test_an_existing_account_is_asked_about_once_a_window() -> None:
    asked: list[uuid.UUID] = []
    exists = {uuid.uuid4(), uuid.uuid4()}
    now = [100.0]

    async def check(user_id: uuid.UUID) -> bool:
        asked.append(user_id)
        return user_id in exists

    remembered = remember_existing(check, for_s=10.0, now=lambda: now[0])
    alive, gone = sorted(exists)[0], uuid.uuid4()
    assert await remembered(alive) and await remembered(alive)
    assert not await remembered(gone) and not await remembered(gone)
    assert asked == [alive, gone, gone]  # a missing account is asked about every time
    exists.discard(alive)
    now[0] += 9.9
    assert await remembered(alive)  # still within the window
    now[0] += 0.2
    assert not await remembered(alive)  # the deletion is seen once the window has passed
    assert not await remembered(alive)
    assert asked == [alive, gone, gone, alive, alive]
