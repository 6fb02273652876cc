"""API keys: how a key looks, how it is stored (hashed) and whom a presented key belongs to.

Issuing, listing and revoking keys is the account service's; resolving one is here, below the
runtime, because every service's interceptor needs it."""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import select, update

from foretell.auth.policy import Role
from foretell.auth.principal import Principal
from foretell.clock import Clock
from foretell.db import ApiKey, Database, User

API_KEY_PREFIX = "ftk_"
# Writing last_used_at on every read would turn each API call into a write; once a minute is
# precise enough for "when was this key last used".
_LAST_USED_PRECISION = timedelta(minutes=1)


def secret_digest(secret: str) -> bytes:
    """How API keys and refresh tokens are stored: secrets are 256-bit random strings, so a
    fast hash is enough (nothing to brute-force)."""
    return hashlib.sha256(secret.encode()).digest()


async def resolve_api_key(db: Database, clock: Clock, secret: str) -> Principal | None:
    """The owner of a valid API key, or None."""
    now = clock()
    async with db.session() as session:
        row = (
            await session.execute(
                select(ApiKey, User.role)
                .join(User, User.id == ApiKey.user_id)
                .where(ApiKey.secret_hash == secret_digest(secret), ApiKey.revoked_at.is_(None))
            )
        ).first()
        if row is None:
            return None
        key, role = row
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_PRECISION:
            await session.execute(
                update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now)
            )
            await session.commit()
    return Principal(key.user_id, Role(role), "api_key")


async def user_exists(db: Database, user_id: uuid.UUID) -> bool:
    """Whether the account a token was issued to still exists (a valid token can outlive it)."""
    async with db.session() as session:
        found = await session.scalar(select(User.id).where(User.id == user_id))
    return found is not None


UserCheck = Callable[[uuid.UUID], Awaitable[bool]]
# How long a positive "this account exists" is trusted, and how many are remembered.
USER_SEEN_S = 10.0
_USER_SEEN_MAX = 10_000


def remember_existing(
    check: UserCheck, for_s: float = USER_SEEN_S, now: Callable[[], float] = time.monotonic
) -> UserCheck:
    """`check`, asked at most once per `for_s` seconds for an account it found: every signed-in
    call asks whether its account still exists, and a busy client should cost one query a
    window, not one a call. A deleted account is refused at most `for_s` later; an account not
    found is asked about again every time."""
    seen: dict[uuid.UUID, float] = {}

    async def remembered(user_id: uuid.UUID) -> bool:
        at = now()
        if at - seen.get(user_id, -math.inf) < for_s:
            return True
        if not await check(user_id):
            seen.pop(user_id, None)
            return False
        if len(seen) >= _USER_SEEN_MAX:
            seen.clear()
        seen[user_id] = at
        return True

    return remembered
