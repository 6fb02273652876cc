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
    session: async_sessionmaker[AsyncSession]

    async def close(self) -> None:
        await self.engine.dispose()


def connect(url: str, *, pool_size: int = 10) -> Database:
    engine = create_async_engine(async_url(url), pool_size=pool_size, pool_pre_ping=True)
    return Database(engine, async_sessionmaker(engine, expire_on_commit=False))
