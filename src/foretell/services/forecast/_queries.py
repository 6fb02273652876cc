"""Recorded forecasts and runs in PostgreSQL, with the access rules: a model the caller may not
see does not exist (registry rules); runs are the owner's and admins'."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, tuple_

from foretell.auth.policy import Role
from foretell.auth.principal import Principal
from foretell.build import BuildState
from foretell.db import Database
from foretell.db.models import Forecast, Run, Version
from foretell.errors import FailedPrecondition, NotFound, PermissionDenied
from foretell.services.forecast._validate import Filters
from foretell.services.registry import ModelView, get_view


async def readable_model(db: Database, principal: Principal, name: str) -> ModelView:
    """A model whose forecasts the caller may read; NOT_FOUND for one they may not see."""
    return await get_view(db, name, principal)


async def runs_model(db: Database, principal: Principal, name: str) -> ModelView:
    """A model whose runs the caller may read: their own, or any for an admin. Another's
    private model is NOT_FOUND; another's public model is PERMISSION_DENIED."""
    view = await get_view(db, name, principal)
    if view.model.owner_id != principal.user_id and principal.role != Role.ADMIN:
        raise PermissionDenied(f"only the owner of model {name!r} may read its runs")
    return view


def _forecasts() -> Select[Forecast, int]:
    return select(Forecast, Version.number).join(Version, Version.id == Forecast.version_id)


async def list_forecasts(
    db: Database, view: ModelView, filters: Filters, recorded_before: datetime | None = None
) -> Sequence[tuple[Forecast, int]]:
    """`recorded_before`: only forecasts recorded before it (the delayed sample)."""
    query = (
        _forecasts()
        .where(Forecast.model_id == view.model.id, Forecast.kind == filters.kind)
        .order_by(Forecast.as_of.desc(), Forecast.id.desc())
        .limit(filters.limit + 1)
    )
    if filters.version is not None:
        query = query.where(Version.number == filters.version)
    if filters.symbol:
        query = query.where(Forecast.symbol == filters.symbol)
    if recorded_before is not None:
        query = query.where(Forecast.recorded_at < recorded_before)
    if filters.start is not None:
        query = query.where(Forecast.as_of >= filters.start)
    if filters.end is not None:
        query = query.where(Forecast.as_of < filters.end)
    if filters.after is not None:
        query = query.where(
            tuple_(Forecast.as_of, Forecast.id) < (filters.after.as_of, int(filters.after.id))
        )
    async with db.session() as session:
        return [(row[0], row[1]) for row in (await session.execute(query)).all()]


async def run_forecasts(
    db: Database, run_id: uuid.UUID, symbol: str
) -> Sequence[tuple[Forecast, int]]:
    """The forecasts one run recorded, for StreamForecasts."""
    query = _forecasts().where(Forecast.run_id == run_id).order_by(Forecast.id)
    if symbol:
        query = query.where(Forecast.symbol == symbol)
    async with db.session() as session:
        return [(row[0], row[1]) for row in (await session.execute(query)).all()]


async def latest_forecast_id(db: Database, model_id: uuid.UUID) -> int:
    """The highest forecast id of the model so far (0 for none): where a stream starts."""
    query = select(func.coalesce(func.max(Forecast.id), 0)).where(Forecast.model_id == model_id)
    async with db.session() as session:
        return int((await session.execute(query)).scalar_one())


async def forecasts_after(
    db: Database, model_id: uuid.UUID, kind: str, symbol: str, after_id: int
) -> Sequence[tuple[Forecast, int]]:
    """The model's forecasts of `kind` recorded after forecast `after_id`, for a stream whose
    notices were interrupted (the database restarted): what it missed meanwhile."""
    query = (
        _forecasts()
        .where(Forecast.model_id == model_id, Forecast.kind == kind, Forecast.id > after_id)
        .order_by(Forecast.id)
    )
    if symbol:
        query = query.where(Forecast.symbol == symbol)
    async with db.session() as session:
        return [(row[0], row[1]) for row in (await session.execute(query)).all()]


def _runs() -> Select[Run, int, int]:
    count = (
        select(func.count()).select_from(Forecast).where(Forecast.run_id == Run.id)
    ).scalar_subquery()
    return select(Run, Version.number, count).join(Version, Version.id == Run.version_id)


async def list_runs(db: Database, view: ModelView, filters: Filters) -> list[tuple[Run, int, int]]:
    query = (
        _runs()
        .where(Run.model_id == view.model.id, Run.kind == filters.kind)
        .order_by(Run.as_of.desc(), Run.id.desc())
        .limit(filters.limit + 1)
    )
    if filters.version is not None:
        query = query.where(Version.number == filters.version)
    if filters.outcome:
        query = query.where(Run.outcome == filters.outcome)
    if filters.start is not None:
        query = query.where(Run.as_of >= filters.start)
    if filters.end is not None:
        query = query.where(Run.as_of < filters.end)
    if filters.after is not None:
        after: Any = (filters.after.as_of, uuid.UUID(filters.after.id))
        query = query.where(tuple_(Run.as_of, Run.id) < after)
    async with db.session() as session:
        return [(row[0], row[1], row[2]) for row in (await session.execute(query)).all()]


async def get_run(db: Database, view: ModelView, run_id: uuid.UUID) -> tuple[Run, int, int]:
    query = _runs().where(Run.model_id == view.model.id, Run.id == run_id)
    async with db.session() as session:
        row = (await session.execute(query)).first()
    if row is None:
        raise NotFound(f"model {view.model.name!r} has no run {str(run_id)!r}")
    return row[0], row[1], row[2]


async def dry_run_version(db: Database, view: ModelView, number: int | None) -> Version:
    """The version a dry run runs: `number`, or the live version, or the latest built one."""
    query = select(Version).where(Version.model_id == view.model.id)
    if number is not None:
        query = query.where(Version.number == number)
    elif view.model.live_version is not None:
        query = query.where(Version.number == view.model.live_version)
    else:
        query = query.where(Version.build_state == BuildState.READY).order_by(Version.number.desc())
    async with db.session() as session:
        version = await session.scalar(query.limit(1))
    if version is None:
        if number is not None:
            raise NotFound(f"model {view.model.name!r} has no version {number}")
        raise FailedPrecondition(f"model {view.model.name!r} has no built version to run")
    return version
