from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
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
    # ORM reads on `read`: objects loaded by single statements with no transaction round
    # trips (a live run loads its version and model this way).
    read_session: async_sessionmaker[AsyncSession]

    async def close(self) -> None:
        await self.engine.dispose()


def drop_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pool `checkout` listener: a connection whose server end has gone is replaced.

    After PostgreSQL restarts, every pooled connection is dead: the server ended each
    backend, and asyncpg marks its connection closed as soon as the event loop reads the
    end of the stream. Asking it costs nothing, where SQLAlchemy's `pool_pre_ping` spends
    three round trips on every checkout (BEGIN, a statement, ROLLBACK): a live run checks out
    four connections. A connection that dies between this check and its use fails its
    statement; SQLAlchemy then invalidates the whole pool, and the request is answered
    UNAVAILABLE (runtime), as during the outage itself."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this connection")


def connect(url: str, *, pool_size: int = 10) -> Database:
    engine = create_async_engine(async_url(url), pool_size=pool_size, pool_recycle=1800)
    event.listen(engine.sync_engine, "checkout", drop_closed)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Database(
        engine,
        async_sessionmaker(engine, expire_on_commit=False),
        autocommit,
        async_sessionmaker(autocommit, expire_on_commit=False),
    )


@asynccontextmanager
async def connected(url: str | None) -> AsyncIterator[Database]:
    """One connection for one short task (a command of the server's command line), closed
    after it."""
    assert url, "FORETELL_DATABASE_URL is checked before any command reaches the database"
    db = connect(url, pool_size=1)
    try:
        yield db
    finally:
        await db.close()
