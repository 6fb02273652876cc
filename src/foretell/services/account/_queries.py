"""Account state in PostgreSQL (users, refresh tokens, API keys) and Redis (login back-off)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from foretell.auth.api_keys import API_KEY_PREFIX, secret_digest
from foretell.auth.passwords import hash_password, verify_password
from foretell.auth.policy import Role
from foretell.auth.tokens import TokenIssuer
from foretell.db import ApiKey, Database, OutboxMessage, RefreshToken, User
from foretell.errors import AlreadyExists, NotFound, ResourceExhausted, Unauthenticated
from foretell.runtime.resources import Resources
from foretell.services.account._validate import normal_email

REFRESH_PREFIX = "ftr_"
MAX_API_KEYS = 50


@dataclass(frozen=True)
class Session:
    user: User
    access_token: str
    access_expires: datetime
    refresh_token: str
    refresh_expires: datetime


async def create_user(
    db: Database, *, email: str, password: str, display_name: str, role: Role, now: datetime
) -> User:
    user = User(
        id=uuid.uuid4(),
        email=email,
        display_name=display_name,
        role=role.value,
        password_hash=await hash_password(password),
        created_at=now,
    )
    try:
        async with db.session.begin() as session:
            session.add(user)
    except IntegrityError:
        raise AlreadyExists("an account with this email already exists", field="email") from None
    return user


_TAKEN_SUBJECT = "Someone tried to create a Foretell account with your address"
_TAKEN_BODY = (
    "Someone (maybe you) tried to create a new Foretell account with this email address, which "
    "already has one. No account was created. If it was you, sign in with your password "
    "instead; if not, you need do nothing."
)


def _email_is(email: str) -> ColumnElement[bool]:
    """The account of `email` as sign-up stored it: normalised, then case-insensitively."""
    return func.lower(User.email) == func.lower(normal_email(email))


async def notify_owner(db: Database, email: str, now: datetime) -> None:
    """Leaves a notice for the owner of `email` (through the outbox) that someone tried to
    sign up with it."""
    async with db.session.begin() as session:
        owner = await session.scalar(select(User.email).where(_email_is(email)))
        session.add(
            OutboxMessage(
                id=uuid.uuid4(),
                kind="signup_existing",
                recipient=owner or email,
                subject=_TAKEN_SUBJECT,
                body=_TAKEN_BODY,
                created_at=now,
            )
        )


async def user_by_email(db: Database, email: str) -> User | None:
    async with db.session() as session:
        found: User | None = await session.scalar(select(User).where(_email_is(email)))
    return found


async def get_user(db: Database, user_id: uuid.UUID) -> User:
    async with db.read.connect() as conn:
        row = (await conn.execute(_USER_BY_ID, {"id": user_id})).first()
    if row is None:
        raise Unauthenticated("this account no longer exists")
    return User(**row._mapping)


# GetMe runs this on every call: a plain Core statement, compiled once.
_USER_BY_ID = select(*User.__table__.columns).where(User.__table__.c.id == bindparam("id"))


def _throttle_keys(email: str, client: str) -> tuple[str, str]:
    # Per account *and* client: failures from one place slow down guesses from there, and
    # never lock the account's owner out from anywhere else.
    h = hashlib.sha256(f"{email.strip().lower()}\0{client}".encode()).hexdigest()
    return f"foretell:login:failures:{h}", f"foretell:login:lock:{h}"


async def login(res: Resources, email: str, password: str, client: str) -> Session:
    """Checks the password, with a back-off per email and client address that does not reveal
    whether the email has an account: unknown emails are throttled the same way."""
    failures_key, lock_key = _throttle_keys(email, client)
    locked_ms = await res.redis.pttl(lock_key)
    if locked_ms > 0:
        raise ResourceExhausted(
            "too many failed sign-ins for this email from here; try again later",
            locked_ms / 1000,
        )
    async with res.db.session() as session:
        user = await session.scalar(select(User).where(_email_is(email)))
    if not await verify_password(user.password_hash if user else None, password) or user is None:
        await _record_failure(res, failures_key, lock_key)
        raise Unauthenticated("email or password is wrong")
    await res.redis.delete(failures_key, lock_key)
    return await _new_session(res, user, family_id=uuid.uuid4())


async def _record_failure(res: Resources, failures_key: str, lock_key: str) -> None:
    settings = res.settings
    async with res.redis.pipeline(transaction=True) as pipe:
        pipe.incr(failures_key)
        pipe.expire(failures_key, 24 * 3600)
        failures, _ = await pipe.execute()
    over = int(failures) - settings.login_free_failures
    if over > 0:
        backoff_s = min(2 ** (over - 1), settings.login_max_backoff_s)
        await res.redis.set(lock_key, b"1", px=backoff_s * 1000)


async def _new_session(res: Resources, user: User, family_id: uuid.UUID) -> Session:
    now = res.clock()
    settings = res.settings
    issuer = TokenIssuer(
        res.keys,
        settings.jwt_issuer,
        settings.jwt_audience,
        timedelta(seconds=settings.access_token_ttl_s),
    )
    access, access_expires = issuer.issue(user.id, Role(user.role), now)
    refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
    refresh_expires = now + timedelta(seconds=settings.refresh_token_ttl_s)
    async with res.db.session.begin() as session:
        session.add(
            RefreshToken(
                id=uuid.uuid4(),
                user_id=user.id,
                family_id=family_id,
                token_hash=secret_digest(refresh),
                created_at=now,
                expires_at=refresh_expires,
            )
        )
    return Session(user, access, access_expires, refresh, refresh_expires)


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID, now: datetime) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def refresh(res: Resources, token: str) -> Session:
    now = res.clock()
    reused = False
    async with res.db.session.begin() as session:
        # FOR UPDATE: two concurrent refreshes with one token must not both succeed.
        row = await session.scalar(
            select(RefreshToken)
            .where(RefreshToken.token_hash == secret_digest(token))
            .with_for_update()
        )
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise Unauthenticated("refresh token is not valid; sign in again")
        if row.rotated_at is not None:
            # A spent token came back: someone holds a copy. End the whole session family.
            await _revoke_family(session, row.family_id, now)
            reused = True
        else:
            row.rotated_at = now
            user = await session.get(User, row.user_id)
            family_id = row.family_id
    if reused or user is None:
        raise Unauthenticated("refresh token is not valid; sign in again")
    return await _new_session(res, user, family_id)


async def logout(res: Resources, token: str) -> None:
    async with res.db.session.begin() as session:
        row = await session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == secret_digest(token))
        )
        if row is None:
            raise Unauthenticated("refresh token is not valid")
        await _revoke_family(session, row.family_id, res.clock())


async def create_api_key(
    db: Database, user_id: uuid.UUID, name: str, now: datetime
) -> tuple[ApiKey, str]:
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=uuid.uuid4(),
        user_id=user_id,
        name=name,
        prefix=secret[:12],
        secret_hash=secret_digest(secret),
        created_at=now,
    )
    async with db.session.begin() as session:
        active = await session.scalars(
            select(ApiKey.id).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        )
        if len(active.all()) >= MAX_API_KEYS:
            raise ResourceExhausted(f"at most {MAX_API_KEYS} active API keys; revoke one", 0)
        session.add(key)
    return key, secret


async def list_api_keys(db: Database, user_id: uuid.UUID) -> list[ApiKey]:
    async with db.session() as session:
        rows = await session.scalars(
            select(ApiKey)
            .where(ApiKey.user_id == user_id)
            .order_by(ApiKey.created_at.desc(), ApiKey.id)
        )
        return list(rows)


async def revoke_api_key(res: Resources, user_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    async with res.db.session.begin() as session:
        key = await session.get(ApiKey, key_id, with_for_update=True)
        # Another user's key is reported missing, not forbidden: ids are not to be probed.
        if key is None or key.user_id != user_id:
            raise NotFound("no such API key")
        if key.revoked_at is None:
            key.revoked_at = res.clock()
    return key
