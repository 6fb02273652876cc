"""The database and Redis: embedded ones started (and stopped last) when no URL is given."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    # The embedded Redis's command line: a supervised child like the services.
    redis_argv: list[str] | None = None


def safe_url(url: str) -> str:
    """`url` without its password, for printing."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def start_stores(settings: Settings, console: Console, stack: contextlib.ExitStack) -> Stores:
    """The database (started and migrated) and Redis, embedded ones started when no URL is
    given. PostgreSQL runs outside the supervisor and stops after its children (`stack` unwinds
    last); the embedded Redis is a supervised child that stops after the others. The services
    and the worker must never see their stores vanish while they shut down."""
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
    redis_argv: list[str] | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        try:
            embedded = redis_command(settings.data_dir / "redis")
        except OSError as error:
            raise StartupError(f"embedded Redis cannot be set up: {error}") from error
        console.say(f"embedded Redis in {embedded.directory}")
        redis_url, redis_dir, redis_argv = embedded.url, embedded.directory, embedded.argv

    console.say(f"migrating the database at {safe_url(database_url)}")
    try:
        upgrade_sync(database_url)
    except Exception as error:
        raise StartupError(
            f"could not migrate the database at {safe_url(database_url)}: {error}"
        ) from error
    return Stores(database_url, redis_url, pgdata, redis_dir, redis_argv)


def _stop_postgres(stop: Callable[[], None], console: Console) -> None:
    console.say("stopping embedded PostgreSQL")
    stop()
