"""Server-side account creation for `foretell admin create-user`, with the API's rules."""

from __future__ import annotations

import uuid

from foretell.account.v1 import account_service_pb2 as pb
from foretell.auth.policy import Role
from foretell.clock import utc_now
from foretell.db import connect
from foretell.errors import ForetellError, InvalidArgument
from foretell.services.account import _queries, _validate
from foretell.settings import Settings


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
    db = connect(settings.database_url, pool_size=1)
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
    finally:
        await db.close()
    return user.id
