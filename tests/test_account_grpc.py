"""AccountService over native gRPC against a real in-process server."""

from __future__ import annotations

import unicodedata
from datetime import timedelta
from typing import TYPE_CHECKING

import grpc
import jwt
import pytest
from sqlalchemy import select

from foretell.account.v1 import account_service_pb2 as pb
from foretell.account.v1 import account_service_pb2_grpc as pb_grpc
from foretell.db import OutboxMessage
from foretell.runtime import Resources
from tests._errors import field_violations, retry_delay_s
from tests.conftest import PASSWORD, MovableClock, SignUp, unique_email

if TYPE_CHECKING:
    Stub = pb_grpc.AccountServiceAsyncStub


async def test_create_user_returns_the_user_without_secrets(account: Stub) -> None:
    email = unique_email("Ada")
    response = await account.CreateUser(
        pb.CreateUserRequest(
            email=email, password=PASSWORD, display_name="  Ada  ", role=pb.ROLE_SUBSCRIBER
        )
    )
    user = response.user
    assert user.email == email
    assert user.display_name == "Ada"
    assert user.role == pb.ROLE_SUBSCRIBER
    assert user.id and user.create_time.seconds > 0
    assert PASSWORD not in str(response)


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "a" <= c <= "z" else c for c in text)


async def test_signing_up_again_makes_no_account_and_does_not_say_so(
    account: Stub, resources: Resources
) -> None:
    email = unique_email("dup")
    request = pb.CreateUserRequest(
        email=email, password=PASSWORD, display_name="One", role=pb.ROLE_PROVIDER
    )
    first = await account.CreateUser(request)
    local, domain = email.split("@")
    again = [
        email.upper().replace("@EXAMPLE.COM", "@example.com"),
        f"{_fullwidth(local)}@{domain}",
    ]
    for variant in again:
        request.email = variant
        request.password = PASSWORD + " two"
        response = await account.CreateUser(request)
        # The same answer as a new account's, naming no existing one.
        assert response.user.id != first.user.id
        assert response.user.email.lower() == unicodedata.normalize("NFKC", variant).lower()
        with pytest.raises(grpc.RpcError) as caught:
            await account.Login(pb.LoginRequest(email=variant, password=PASSWORD + " two"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Only the first account exists, and its owner hears of each attempt at their address.
    login = await account.Login(pb.LoginRequest(email=again[1], password=PASSWORD))
    assert login.user.id == first.user.id
    async with resources.db.session() as session:
        notices = (
            await session.scalars(select(OutboxMessage).where(OutboxMessage.recipient == email))
        ).all()
    assert [n.kind for n in notices] == ["signup_existing", "signup_existing"]


BAD_USERS = [
    ({"email": ""}, "email", "required"),
    ({"email": "not-an-email"}, "email", "not a valid email"),
    ({"email": "a@b"}, "email", "not a valid email"),
    ({"email": "x" * 250 + "@example.com"}, "email", "at most 254"),
    ({"password": ""}, "password", "required"),
    ({"password": "short1!"}, "password", "at least 10"),
    ({"password": "aaaaaaaaaaaaaaa"}, "password", "too easy"),
    ({"password": "password123"}, "password", "too easy"),
    ({"password": "p" + "0123456789abcdef" * 9}, "password", "at most 128"),
    ({"display_name": ""}, "display_name", "required"),
    ({"display_name": "   "}, "display_name", "required"),
    ({"display_name": "n" * 81}, "display_name", "at most 80"),
    ({"display_name": "bell\x07"}, "display_name", "control characters"),
    ({"role": pb.ROLE_UNSPECIFIED}, "role", "required"),
    ({"role": pb.ROLE_ADMIN}, "role", "ROLE_PROVIDER or ROLE_SUBSCRIBER"),
    ({"role": 42}, "role", "ROLE_PROVIDER or ROLE_SUBSCRIBER"),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD_USERS)
async def test_bad_create_user_input_names_the_field(
    account: Stub, change: dict[str, object], field: str, message: str
) -> None:
    fields: dict[str, object] = {
        "email": unique_email(),
        "password": PASSWORD,
        "display_name": "Bad Input",
        "role": pb.ROLE_PROVIDER,
    }
    fields.update(change)
    with pytest.raises(grpc.RpcError) as caught:
        await account.CreateUser(pb.CreateUserRequest(**fields))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert message in violations[field]


async def test_every_violation_is_reported_at_once(account: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await account.CreateUser(pb.CreateUserRequest())
    assert set(field_violations(caught.value)) == {"email", "password", "display_name", "role"}


async def test_login_refuses_a_wrong_password_and_an_unknown_email_alike(
    account: Stub, sign_up: SignUp
) -> None:
    me = await sign_up()
    messages = []
    for email in (me.email, unique_email("nobody")):
        with pytest.raises(grpc.RpcError) as caught:
            await account.Login(pb.LoginRequest(email=email, password="wrong password 123"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        messages.append(caught.value.details())
    assert messages[0] == messages[1]


async def test_login_is_case_insensitive_on_email(account: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    response = await account.Login(pb.LoginRequest(email=me.email.upper(), password=PASSWORD))
    assert response.user.id == me.user.id


async def test_repeated_failures_back_off_even_the_right_password(
    account: Stub, sign_up: SignUp, resources: Resources
) -> None:
    me = await sign_up()
    for _ in range(resources.settings.login_free_failures):
        with pytest.raises(grpc.RpcError) as caught:
            await account.Login(pb.LoginRequest(email=me.email, password="wrong password 123"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        await account.Login(pb.LoginRequest(email=me.email, password="wrong password 123"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        await account.Login(pb.LoginRequest(email=me.email, password=PASSWORD))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay_s(caught.value)
    assert delay is not None and 0 < delay <= 1


async def test_unknown_emails_are_throttled_too(account: Stub, resources: Resources) -> None:
    email = unique_email("ghost")
    for _ in range(resources.settings.login_free_failures + 1):
        with pytest.raises(grpc.RpcError):
            await account.Login(pb.LoginRequest(email=email, password="wrong password 123"))
    with pytest.raises(grpc.RpcError) as caught:
        await account.Login(pb.LoginRequest(email=email, password="wrong password 123"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_get_me_with_an_access_token(account: Stub, sign_up: SignUp) -> None:
    me = await sign_up(pb.ROLE_SUBSCRIBER)
    response = await account.GetMe(pb.GetMeRequest(), metadata=me.metadata)
    assert response.user == me.user


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer ftk_not-a-real-key"],
)
async def test_get_me_without_valid_credentials_is_unauthenticated(
    account: Stub, header: str | None
) -> None:
    metadata = () if header is None else (("authorization", header),)
    with pytest.raises(grpc.RpcError) as caught:
        await account.GetMe(pb.GetMeRequest(), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_refresh_rotates_and_reuse_revokes_the_family(account: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    first = me.tokens.refresh_token
    second = (await account.Refresh(pb.RefreshRequest(refresh_token=first))).tokens
    assert second.refresh_token != first
    third = (await account.Refresh(pb.RefreshRequest(refresh_token=second.refresh_token))).tokens
    # A thief replays the first token: refused, and the legitimate newest token dies with it.
    with pytest.raises(grpc.RpcError) as caught:
        await account.Refresh(pb.RefreshRequest(refresh_token=first))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        await account.Refresh(pb.RefreshRequest(refresh_token=third.refresh_token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Another login is a new family and works.
    again = await account.Login(pb.LoginRequest(email=me.email, password=PASSWORD))
    await account.Refresh(pb.RefreshRequest(refresh_token=again.tokens.refresh_token))


async def test_refreshed_access_token_works(account: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    tokens = (
        await account.Refresh(pb.RefreshRequest(refresh_token=me.tokens.refresh_token))
    ).tokens
    assert tokens.token_type == "Bearer"
    response = await account.GetMe(
        pb.GetMeRequest(), metadata=(("authorization", f"Bearer {tokens.access_token}"),)
    )
    assert response.user.id == me.user.id


async def test_an_expired_refresh_token_is_refused(
    account: Stub, sign_up: SignUp, clock: MovableClock, resources: Resources
) -> None:
    me = await sign_up()
    clock.advance(timedelta(seconds=resources.settings.refresh_token_ttl_s + 1))
    with pytest.raises(grpc.RpcError) as caught:
        await account.Refresh(pb.RefreshRequest(refresh_token=me.tokens.refresh_token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_logout_ends_the_session(account: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    await account.Logout(pb.LogoutRequest(refresh_token=me.tokens.refresh_token))
    with pytest.raises(grpc.RpcError) as caught:
        await account.Refresh(pb.RefreshRequest(refresh_token=me.tokens.refresh_token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("token", ["", "x" * 201])
async def test_refresh_and_logout_validate_the_token_field(account: Stub, token: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await account.Refresh(pb.RefreshRequest(refresh_token=token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "refresh_token" in field_violations(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        await account.Logout(pb.LogoutRequest(refresh_token=token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "refresh_token" in field_violations(caught.value)


async def test_api_key_lifecycle(account: Stub, sign_up: SignUp) -> None:
    me = await sign_up(pb.ROLE_SUBSCRIBER)
    created = await account.CreateApiKey(
        pb.CreateApiKeyRequest(name="trading bot"), metadata=me.metadata
    )
    secret = created.secret
    assert secret.startswith(created.api_key.prefix)
    key_auth = (("authorization", f"Bearer {secret}"),)

    assert (await account.GetMe(pb.GetMeRequest(), metadata=key_auth)).user.id == me.user.id
    listed = await account.ListApiKeys(pb.ListApiKeysRequest(), metadata=me.metadata)
    assert [k.id for k in listed.api_keys] == [created.api_key.id]
    assert secret not in str(listed)
    assert listed.api_keys[0].HasField("last_use_time")

    # A key reads; it cannot manage keys.
    with pytest.raises(grpc.RpcError) as caught:
        await account.CreateApiKey(pb.CreateApiKeyRequest(name="more"), metadata=key_auth)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    revoked = await account.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=me.metadata
    )
    assert revoked.api_key.HasField("revoke_time")
    again = await account.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=me.metadata
    )
    assert again.api_key.revoke_time == revoked.api_key.revoke_time
    with pytest.raises(grpc.RpcError) as caught:
        await account.GetMe(pb.GetMeRequest(), metadata=key_auth)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_cannot_revoke_another_users_key(account: Stub, sign_up: SignUp) -> None:
    owner, other = await sign_up(), await sign_up()
    created = await account.CreateApiKey(
        pb.CreateApiKeyRequest(name="mine"), metadata=owner.metadata
    )
    with pytest.raises(grpc.RpcError) as caught:
        await account.RevokeApiKey(
            pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=other.metadata
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    key_auth = (("authorization", f"Bearer {created.secret}"),)
    assert (await account.GetMe(pb.GetMeRequest(), metadata=key_auth)).user.id == owner.user.id


@pytest.mark.parametrize(("key_id", "message"), [("", "required"), ("42", "UUID")])
async def test_revoke_validates_the_id(
    account: Stub, sign_up: SignUp, key_id: str, message: str
) -> None:
    me = await sign_up()
    with pytest.raises(grpc.RpcError) as caught:
        await account.RevokeApiKey(pb.RevokeApiKeyRequest(id=key_id), metadata=me.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in field_violations(caught.value)["id"]


@pytest.mark.parametrize(("name", "message"), [("", "required"), ("k" * 65, "at most 64")])
async def test_api_key_name_is_validated(
    account: Stub, sign_up: SignUp, name: str, message: str
) -> None:
    me = await sign_up()
    with pytest.raises(grpc.RpcError) as caught:
        await account.CreateApiKey(pb.CreateApiKeyRequest(name=name), metadata=me.metadata)
    assert message in field_violations(caught.value)["name"]


async def test_jwks_verifies_issued_tokens(
    account: Stub, sign_up: SignUp, resources: Resources
) -> None:
    me = await sign_up()
    jwks = await account.GetJwks(pb.GetJwksRequest())
    header = jwt.get_unverified_header(me.tokens.access_token)
    (jwk,) = [k for k in jwks.keys if k.kid == header["kid"]]
    key = jwt.PyJWK(
        {"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x, "y": jwk.y, "alg": jwk.alg, "kid": jwk.kid}
    )
    claims = jwt.decode(
        me.tokens.access_token,
        key.key,
        algorithms=["ES256"],
        audience=resources.settings.jwt_audience,
        issuer=resources.settings.jwt_issuer,
    )
    assert claims["sub"] == me.user.id
    assert claims["role"] == "provider"


async def test_admin_commands_find_an_account_by_its_email_in_any_form(
    resources: Resources,
) -> None:
    """`foretell admin feeders grant` and friends look accounts up as sign-up stores them:
    fullwidth letters and capitals name the same account."""
    from foretell.auth.policy import Role
    from foretell.services.account.admin import create_account, find_user

    email = unique_email("feed")
    created = await create_account(resources.settings, email, PASSWORD, "Feed", "provider")
    fullwidth = unicodedata.normalize("NFKC", email).upper().replace("F", "\uff26", 1)
    assert await find_user(resources.settings, fullwidth, Role.PROVIDER) == created
    with pytest.raises(ValueError, match="no subscriber account"):
        await find_user(resources.settings, email, Role.SUBSCRIBER)
