"""Server-side account creation for `foretell admin create-user` and `foretell admin feeders
create`, with the API's rules."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from foretell.account.v1 import account_service_pb2 as pb
from foretell.auth.policy import Role
from foretell.clock import utc_now
from foretell.db import connected
from foretell.errors import ForetellError, InvalidArgument
from foretell.services.account import _queries, _validate
from foretell.settings import Settings


@dataclass(frozen=True)
class FeederAccount:
    user_id: uuid.UUID
    # The API key's secret, shown once.
    api_key: str


async def create_account(
    settings: Settings, email: str, password: str, display_name: str, role: str
) -> uuid.UUID:
    """Raises ValueError with a readable message when the input breaks a rule."""
    assert settings.database_url
    # Validate as a self-service role would be; the role itself is trusted here.
    request = pb.CreateUserRequest(
        email=email, password=password, display_name=display_name, role=pb.ROLE_SUBSCRIBER
    )
    try:
        email, display_name, _ = _validate.create_user(request)
    except InvalidArgument as error:
        raise ValueError(error.message) from None
    async with connected(settings.database_url) as db:
        try:
            user = await _queries.create_user(
                db,
                email=email,
                password=password,
                display_name=display_name,
                role=Role(role),
                now=utc_now(),
            )
        except ForetellError as error:
            raise ValueError(error.message) from None
    return user.id


async def create_feeder(settings: Settings, email: str, display_name: str) -> FeederAccount:
    """A data feeder's account and its API key (shown once, here). The account has a random
    password nobody is told: a vendor's script signs in with the key alone. Raises ValueError
    with a readable message when the input breaks a rule."""
    password = secrets.token_urlsafe(32)
    user_id = await create_account(settings, email, password, display_name, Role.FEEDER.value)
    async with connected(settings.database_url) as db:
        _key, secret = await _queries.create_api_key(db, user_id, "data feed", utc_now())
    return FeederAccount(user_id, secret)


async def find_user(settings: Settings, email: str, role: Role) -> uuid.UUID:
    """The id of the account with `email` and `role`; ValueError when there is none."""
    async with connected(settings.database_url) as db:
        user = await _queries.user_by_email(db, email)
    if user is None or user.role != role.value:
        raise ValueError(f"no {role.value} account with the email {email}")
    return user.id
