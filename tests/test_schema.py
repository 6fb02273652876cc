"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from foretell.db import Base
from foretell.runtime import Resources


async def test_migrations_match_the_models(resources: Resources) -> None:
    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with resources.db.engine.connect() as connection:
        differences = await connection.run_sync(diff)
    assert differences == []
