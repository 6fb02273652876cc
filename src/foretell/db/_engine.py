from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def async_url(url: str) -> str:
    """`postgresql://…` (what users and pgserver write) → the asyncpg driver URL."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    # Read-write sessions: `async with db.session.begin()` for one transaction.
    session: async_sessionmaker[AsyncSession]
    # Single-statement Core reads in autocommit: no BEGIN/ROLLBACK round trips and no ORM
    # bookkeeping on hot read paths. Anything that needs a consistent view across statements
    # uses `session`.
    read: AsyncEngine

    async def close(self) -> None:
        await self.engine.dispose()


def connect(url: str, *, pool_size: int = 10) -> Database:
    # No pool_pre_ping: it costs a round trip per checkout on every RPC. Connections are
    # recycled instead, and a dropped connection fails one request, not every one.
    engine = create_async_engine(async_url(url), pool_size=pool_size, pool_recycle=1800)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Database(
        engine,
        async_sessionmaker(engine, expire_on_commit=False),
        autocommit,
    )
