from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from arq.connections import ArqRedis

from foretell.auth.keys import SigningKeys, load_or_create_keys
from foretell.clock import Clock, utc_now
from foretell.db import Database, connect
from foretell.settings import Settings, SettingsError
from foretell.store import ArtifactStore


@dataclass(frozen=True)
class Resources:
    """Connections and keys a process opens once and its services share."""

    settings: Settings
    db: Database
    # arq's client is a redis.asyncio.Redis that can also enqueue jobs.
    redis: ArqRedis
    keys: SigningKeys
    # Injected so tests can move time.
    clock: Clock = utc_now

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifacts_dir)


@asynccontextmanager
async def open_resources(settings: Settings, clock: Clock = utc_now) -> AsyncIterator[Resources]:
    if not settings.database_url:
        raise SettingsError(
            "FORETELL_DATABASE_URL is not set: `foretell up` starts an embedded PostgreSQL, "
            "`foretell serve` needs a URL"
        )
    if not settings.redis_url:
        raise SettingsError(
            "FORETELL_REDIS_URL is not set: `foretell up` starts an embedded Redis, "
            "`foretell serve` needs a URL"
        )
    db = connect(settings.database_url)
    redis = ArqRedis.from_url(settings.redis_url)
    try:
        yield Resources(settings, db, redis, load_or_create_keys(settings.keys_dir), clock)
    finally:
        await redis.aclose()
        await db.close()
