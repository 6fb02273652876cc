from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from foretell.auth.policy import Role
from foretell.errors import Unauthenticated


@dataclass(frozen=True)
class Principal:
    """The verified caller of an RPC."""

    user_id: uuid.UUID
    role: Role
    # "jwt" for an access token, "api_key" for an API key.
    credential: str


_current: ContextVar[Principal | None] = ContextVar("foretell_principal", default=None)


def current_principal() -> Principal:
    """The caller of the RPC being handled. Handlers of methods open to anonymous callers
    must not call this."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("sign in first")
    return principal


def set_principal(principal: Principal | None) -> None:
    _current.set(principal)
