"""Models and versions in PostgreSQL, with the access rules: others' private models do not
exist for the caller; only the owner changes a model."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from foretell.auth.policy import Role
from foretell.auth.principal import Principal
from foretell.build import BuildState
from foretell.bundle import Manifest
from foretell.db import Database, Model, User, Version
from foretell.db.notify import announce_access
from foretell.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied

# SQLSTATE of the immutability triggers (migration 0002).
IMMUTABLE_SQLSTATE = "FT001"


@dataclasses.dataclass(frozen=True)
class ModelView:
    model: Model
    owner_display_name: str
    latest_version: int


@asynccontextmanager
async def guarded() -> AsyncIterator[None]:
    """Turns the database's refusal to change history into FAILED_PRECONDITION."""
    try:
        yield
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == IMMUTABLE_SQLSTATE:
            raise FailedPrecondition(str(error.orig).split("\n")[0].split(": ", 1)[-1]) from None
        raise


def _views() -> Select[Model, str, int]:
    latest = (
        select(func.coalesce(func.max(Version.number), 0))
        .where(Version.model_id == Model.id)
        .scalar_subquery()
    )
    return select(Model, User.display_name, latest).join(User, User.id == Model.owner_id)


def _visible_to(principal: Principal) -> Any:
    if principal.role == Role.ADMIN:
        return True
    return or_(Model.visibility == "public", Model.owner_id == principal.user_id)


async def get_view(db: Database, name: str, principal: Principal) -> ModelView:
    async with db.session() as session:
        row = (await session.execute(_views().where(Model.name == name))).first()
    if row is None:
        raise NotFound(f"no model named {name!r}")
    view = ModelView(row[0], row[1], row[2])
    if not (
        view.model.visibility == "public"
        or view.model.owner_id == principal.user_id
        or principal.role == Role.ADMIN
    ):
        raise NotFound(f"no model named {name!r}")
    return view


async def owned_model(
    session: AsyncSession, name: str, principal: Principal, *, admin_ok: bool = False
) -> Model:
    """The caller's own model, locked for update. Another's private model is NOT_FOUND;
    another's public model is PERMISSION_DENIED."""
    model = await session.scalar(select(Model).where(Model.name == name).with_for_update())
    if model is None:
        raise NotFound(f"no model named {name!r}")
    if model.owner_id == principal.user_id or (admin_ok and principal.role == Role.ADMIN):
        return model
    if model.visibility != "public" and principal.role != Role.ADMIN:
        raise NotFound(f"no model named {name!r}")
    raise PermissionDenied(f"model {name!r} belongs to another provider")


async def create_model(
    db: Database, principal: Principal, fields: dict[str, Any], now: datetime
) -> ModelView:
    model = Model(
        id=uuid.uuid4(),
        owner_id=principal.user_id,
        live_version=None,
        live_since=None,
        created_at=now,
        updated_at=now,
        **fields,
    )
    try:
        async with db.session.begin() as session:
            session.add(model)
    except IntegrityError:
        raise AlreadyExists(
            f"a model named {fields['name']!r} exists", field="model.name"
        ) from None
    return await get_view(db, model.name, principal)


async def list_models(
    db: Database,
    principal: Principal,
    *,
    after: str | None,
    limit: int,
    symbol: str,
    tag: str,
    resolution: str | None,
    only_mine: bool,
) -> list[ModelView]:
    query = _views().where(_visible_to(principal)).order_by(Model.name).limit(limit)
    if after:
        query = query.where(Model.name > after)
    if symbol:
        query = query.where(Model.symbols.contains([symbol]))
    if tag:
        query = query.where(Model.tags.contains([tag]))
    if resolution:
        query = query.where(Model.resolution == resolution)
    if only_mine:
        query = query.where(Model.owner_id == principal.user_id)
    async with db.session() as session:
        return [ModelView(row[0], row[1], row[2]) for row in (await session.execute(query)).all()]


async def update_model(
    db: Database, principal: Principal, name: str, changes: dict[str, Any], now: datetime
) -> ModelView:
    async with db.session.begin() as session:
        model = await owned_model(session, name, principal)
        for key, value in changes.items():
            setattr(model, key, value)
        model.updated_at = now
        if "visibility" in changes:
            # Open forecast streams re-check whether their caller may still see the model.
            await announce_access(session, model.id)
    return await get_view(db, name, principal)


async def delete_model(db: Database, principal: Principal, name: str) -> None:
    async with guarded(), db.session.begin() as session:
        model = await owned_model(session, name, principal)
        published = await session.scalar(
            select(func.count())
            .select_from(Version)
            .where(Version.model_id == model.id, Version.published_at.is_not(None))
        )
        if published:
            raise FailedPrecondition(
                f"model {name!r} has published versions: its track record cannot be deleted; "
                "take it offline instead"
            )
        await session.execute(delete(Version).where(Version.model_id == model.id))
        await session.delete(model)


async def get_version(
    db: Database, principal: Principal, name: str, number: int
) -> tuple[ModelView, Version]:
    view = await get_view(db, name, principal)
    async with db.session() as session:
        version = await session.scalar(
            select(Version).where(Version.model_id == view.model.id, Version.number == number)
        )
    if version is None:
        raise NotFound(f"model {name!r} has no version {number}")
    return view, version


async def list_versions(
    db: Database, principal: Principal, name: str, *, before: int | None, limit: int
) -> tuple[ModelView, Sequence[Version]]:
    view = await get_view(db, name, principal)
    query = (
        select(Version)
        .where(Version.model_id == view.model.id)
        .order_by(Version.number.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(Version.number < before)
    async with db.session() as session:
        return view, (await session.scalars(query)).all()


@dataclasses.dataclass(frozen=True)
class Upload:
    model: str
    digest: str
    size: int
    manifest: Manifest


async def add_version(
    db: Database, principal: Principal, upload: Upload, now: datetime
) -> tuple[Version, bool, bool]:
    """The version for an upload: a new one numbered after the last, or the existing one
    with the same digest (a failed build of it is queued again). Returns (version, created,
    queued): whether it is new, and whether a build must be enqueued for it."""
    async with db.session.begin() as session:
        # Locking the model serialises uploads to it, so numbers never collide.
        model = await owned_model(session, upload.model, principal)
        existing = await session.scalar(
            select(Version).where(Version.model_id == model.id, Version.digest == upload.digest)
        )
        if existing is not None:
            if existing.build_state != BuildState.FAILED:
                return existing, False, False
            existing.build_state = BuildState.QUEUED
            existing.failure_reason = ""
            return existing, False, True
        last = await session.scalar(
            select(func.coalesce(func.max(Version.number), 0)).where(Version.model_id == model.id)
        )
        version = Version(
            id=uuid.uuid4(),
            model_id=model.id,
            number=int(last or 0) + 1,
            digest=upload.digest,
            bundle_size=upload.size,
            manifest=upload.manifest.to_json(),
            created_at=now,
            build_state=BuildState.QUEUED,
            failure_reason="",
            image_digest=None,
            build_finished_at=None,
            build_log="",
            published_at=None,
        )
        session.add(version)
        model.updated_at = now
    return version, True, True


async def model_for_upload(db: Database, principal: Principal, name: str) -> Model:
    async with db.session() as session:
        return await owned_model(session, name, principal)


async def publish(
    db: Database, principal: Principal, name: str, number: int, now: datetime
) -> tuple[ModelView, Version]:
    async with guarded(), db.session.begin() as session:
        model = await owned_model(session, name, principal)
        version = await session.scalar(
            select(Version).where(Version.model_id == model.id, Version.number == number)
        )
        if version is None:
            raise NotFound(f"model {name!r} has no version {number}")
        if version.build_state != BuildState.READY:
            raise FailedPrecondition(
                f"version {number} is {version.build_state}, not ready: only a built version "
                "can be published"
            )
        if version.published_at is None:
            version.published_at = now
        if model.live_version != number:
            # Going live (again, or as another version) starts the schedule afresh; publishing
            # the live version again changes nothing, so a slot it missed stays missed.
            model.live_version = number
            model.live_since = now
            model.updated_at = now
    return await get_view(db, name, principal), version


async def take_offline(db: Database, principal: Principal, name: str, now: datetime) -> ModelView:
    async with db.session.begin() as session:
        model = await owned_model(session, name, principal, admin_ok=True)
        if model.live_version is not None:
            model.live_version = None
            model.live_since = None
            model.updated_at = now
    return await get_view(db, name, principal)
