from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from grpc import aio

from foretell.account.v1 import account_service_pb2 as pb
from foretell.account.v1 import account_service_pb2_grpc as pb_grpc
from foretell.auth.policy import Role
from foretell.auth.principal import current_principal
from foretell.clock import timestamp as _ts
from foretell.db import ApiKey, User
from foretell.errors import AlreadyExists
from foretell.runtime import client_address
from foretell.runtime.resources import Resources
from foretell.services.account import _queries, _validate

if TYPE_CHECKING:
    # Generic only in the type stubs.
    Context = aio.ServicerContext[Any, Any]

_ROLES = {
    Role.PROVIDER: pb.ROLE_PROVIDER,
    Role.SUBSCRIBER: pb.ROLE_SUBSCRIBER,
    Role.ADMIN: pb.ROLE_ADMIN,
    Role.FEEDER: pb.ROLE_FEEDER,
}


def user_pb(user: User) -> pb.User:
    return pb.User(
        id=str(user.id),
        email=user.email,
        display_name=user.display_name,
        role=_ROLES[Role(user.role)],
        create_time=_ts(user.created_at),
    )


def _api_key_pb(key: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=str(key.id),
        name=key.name,
        prefix=key.prefix,
        create_time=_ts(key.created_at),
        last_use_time=_ts(key.last_used_at),
        revoke_time=_ts(key.revoked_at),
    )


def _tokens_pb(session: _queries.Session) -> pb.AuthTokens:
    return pb.AuthTokens(
        access_token=session.access_token,
        token_type="Bearer",  # noqa: S106 - a scheme name, not a secret
        access_token_expire_time=_ts(session.access_expires),
        refresh_token=session.refresh_token,
        refresh_token_expire_time=_ts(session.refresh_expires),
    )


class AccountServicer(pb_grpc.AccountServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self._res = resources

    async def CreateUser(
        self, request: pb.CreateUserRequest, context: Context
    ) -> pb.CreateUserResponse:
        email, name, role = _validate.create_user(request)
        now = self._res.clock()
        try:
            user = await _queries.create_user(
                self._res.db,
                email=email,
                password=request.password,
                display_name=name,
                role=Role(role),
                now=now,
            )
        except AlreadyExists:
            # Sign-up answers the same whether or not the address has an account (the same
            # work, the same response: a user that was never stored), so it cannot be used to
            # find out who is registered. The owner hears of it at that address instead.
            await _queries.notify_owner(self._res.db, email, now)
            user = User(id=uuid.uuid4(), email=email, display_name=name, role=role, created_at=now)
        return pb.CreateUserResponse(user=user_pb(user))

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        _validate.login(request)
        session = await _queries.login(
            self._res,
            _validate.normal_email(request.email),
            request.password,
            client_address(context),
        )
        return pb.LoginResponse(tokens=_tokens_pb(session), user=user_pb(session.user))

    async def Refresh(self, request: pb.RefreshRequest, context: Context) -> pb.RefreshResponse:
        _validate.refresh_token(request.refresh_token)
        session = await _queries.refresh(self._res, request.refresh_token)
        return pb.RefreshResponse(tokens=_tokens_pb(session))

    async def Logout(self, request: pb.LogoutRequest, context: Context) -> pb.LogoutResponse:
        _validate.refresh_token(request.refresh_token)
        await _queries.logout(self._res, request.refresh_token)
        return pb.LogoutResponse()

    async def GetMe(self, request: pb.GetMeRequest, context: Context) -> pb.GetMeResponse:
        user = await _queries.get_user(self._res.db, current_principal().user_id)
        return pb.GetMeResponse(user=user_pb(user))

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        name = _validate.api_key_name(request.name)
        key, secret = await _queries.create_api_key(
            self._res.db, current_principal().user_id, name, self._res.clock()
        )
        return pb.CreateApiKeyResponse(api_key=_api_key_pb(key), secret=secret)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        keys = await _queries.list_api_keys(self._res.db, current_principal().user_id)
        return pb.ListApiKeysResponse(api_keys=[_api_key_pb(k) for k in keys])

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Context
    ) -> pb.RevokeApiKeyResponse:
        key_id = _validate.api_key_id(request.id)
        key = await _queries.revoke_api_key(self._res, current_principal().user_id, key_id)
        return pb.RevokeApiKeyResponse(api_key=_api_key_pb(key))

    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(keys=[pb.Jwk(**k.jwk()) for k in self._res.keys.public.values()])


def add_to_server(server: aio.Server, resources: Resources) -> None:
    pb_grpc.add_AccountServiceServicer_to_server(AccountServicer(resources), server)
