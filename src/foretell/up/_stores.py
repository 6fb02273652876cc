"""The database and Redis: embedded ones started (and stopped last) when no URL is given."""

from __future__ import annotations

import contextlib
import subprocess
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from foretell._embedded import redis_command, start_postgres
from foretell.db.migrate import upgrade_sync
from foretell.settings import Settings
from foretell.up._console import Console
from foretell.up._errors import StartupError


@dataclass(frozen=True)
class Stores:
    database_url: str
    redis_url: str
    # The data directories of the embedded servers; None for a server given by URL.
    embedded_postgres: Path | None
    embedded_redis: Path | None


def safe_url(url: str) -> str:
    """`url` without its password, for printing."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def start_stores(settings: Settings, console: Console, stack: contextlib.ExitStack) -> Stores:
    """The database (started and migrated) and Redis, embedded ones started when no URL is
    given. Both run outside honcho and stop after its children (`stack` unwinds last): the
    services and the worker must never see their stores vanish while they shut down."""
    database_url = settings.database_url
    pgdata: Path | None = None
    if database_url is None:
        pgdata = settings.data_dir / "postgres"
        console.say(f"starting embedded PostgreSQL in {pgdata}")
        try:
            postgres = start_postgres(pgdata)
        except Exception as error:
            raise StartupError(
                f"embedded PostgreSQL in {pgdata} did not start ({error}); see {pgdata / 'log'}"
            ) from error
        stack.callback(_stop_postgres, postgres.stop, console)
        database_url = postgres.url

    redis_dir: Path | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        try:
            embedded = redis_command(settings.data_dir / "redis")
            log = open(embedded.directory / "redis.log", "ab")  # noqa: SIM115 - closed on stop
            # A session of its own, like PostgreSQL's: a Ctrl-C in the terminal must not stop
            # it before the services and the worker.
            redis = subprocess.Popen(  # noqa: S603 - our own redis-server command line
                embedded.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as error:
            raise StartupError(f"embedded Redis cannot be started: {error}") from error
        console.say(f"started embedded Redis in {embedded.directory} (pid {redis.pid})")
        stack.callback(_stop_redis, redis, log, console)
        redis_url, redis_dir = embedded.url, embedded.directory

    console.say(f"migrating the database at {safe_url(database_url)}")
    try:
        upgrade_sync(database_url)
    except Exception as error:
        raise StartupError(
            f"could not migrate the database at {safe_url(database_url)}: {error}"
        ) from error
    return Stores(database_url, redis_url, pgdata, redis_dir)


def _stop_redis(process: subprocess.Popen[bytes], log: IO[bytes], console: Console) -> None:
    console.say("stopping embedded Redis")
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _stop_postgres(stop: Callable[[], None], console: Console) -> None:
    console.say("stopping embedded PostgreSQL")
    stop()
