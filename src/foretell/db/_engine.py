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
    # pool_pre_ping: after PostgreSQL restarts every pooled connection is dead; the ping (one
    # round trip per checkout) finds that and reconnects, so no request after the restart
    # fails on a stale connection. Those during the outage fail UNAVAILABLE (runtime).
    engine = create_async_engine(
        async_url(url), pool_size=pool_size, pool_recycle=1800, pool_pre_ping=True
    )
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Database(
        engine,
        async_sessionmaker(engine, expire_on_commit=False),
        autocommit,
    )
