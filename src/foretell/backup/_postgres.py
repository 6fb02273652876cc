"""PostgreSQL's side of a backup: which client programs to use, their versions against the
server's, the dump (inside an exported snapshot) and the load.

Plain SQL, not pg_dump's custom format: psql of any version loads it, so a backup of the
embedded server (pgserver's PostgreSQL 16) restores into an external PostgreSQL 15 and back;
the custom format is readable only by a pg_restore at least as new as the pg_dump that wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from foretell._embedded import postgres_bin_dir, start_postgres
from foretell.backup._errors import BackupError
from foretell.settings import Settings

# How much of a failing program's output an error quotes.
_TAIL = 2000


@dataclass(frozen=True)
class Tools:
    pg_dump: Path
    psql: Path


@dataclass(frozen=True)
class Target:
    url: str
    tools: Tools
    # What the operator knows the database as, for messages: a URL without its password.
    shown: str


@contextlib.asynccontextmanager
async def database_of(settings: Settings, *, create: bool) -> AsyncIterator[Target]:
    """The platform's database: FORETELL_DATABASE_URL, or the embedded server under the data
    directory, started for the while (and shared with a running `foretell up`). `create`: a
    data directory without an embedded server gets a new one (a restore), else it is an
    error (a backup)."""
    if settings.database_url:
        tools = find_tools(settings.pg_bin_dir)
        yield Target(settings.database_url, tools, _without_password(settings.database_url))
        return
    pgdata = settings.data_dir / "postgres"
    if not create and not (pgdata / "PG_VERSION").is_file():
        raise BackupError(
            f"no embedded PostgreSQL in {pgdata}: set FORETELL_DATA_DIR to the platform's data "
            "directory, or FORETELL_DATABASE_URL to its database"
        )
    tools = find_tools(settings.pg_bin_dir or postgres_bin_dir())
    try:
        # In a thread: it runs an event loop of its own to create the database.
        embedded = await asyncio.to_thread(start_postgres, pgdata, sole_user=False)
    except Exception as error:  # noqa: BLE001 - pgserver raises anything; the reason is kept
        raise BackupError(f"the embedded PostgreSQL in {pgdata} did not start: {error}") from None
    try:
        yield Target(embedded.url, tools, f"the embedded PostgreSQL in {pgdata}")
    finally:
        await asyncio.to_thread(embedded.stop)


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return urllib.parse.urlunsplit(
        parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    )


def find_tools(bin_dir: Path | None) -> Tools:
    """pg_dump and psql from `bin_dir`, or from PATH."""
    found: dict[str, Path] = {}
    for name in ("pg_dump", "psql"):
        if bin_dir is not None:
            path = bin_dir / name
            if not os.access(path, os.X_OK):
                raise BackupError(f"{name} not found in {bin_dir} (FORETELL_PG_BIN_DIR)")
        else:
            where = shutil.which(name)
            if where is None:
                raise BackupError(
                    f"{name} not found on PATH: install PostgreSQL's client programs or set "
                    "FORETELL_PG_BIN_DIR"
                )
            path = Path(where)
        found[name] = path
    return Tools(found["pg_dump"], found["psql"])


def major_of(version: str) -> int:
    """The major version in a version string: `pg_dump (PostgreSQL) 16.2` → 16."""
    match = re.search(r"(\d+)(?:\.\d+)*", version)
    if match is None:
        raise BackupError(f"cannot read a PostgreSQL version from {version!r}")
    return int(match.group(1))


async def program_version(program: Path) -> str:
    """`16.2` for a pg_dump or psql that answers `pg_dump (PostgreSQL) 16.2`."""
    out = await _run([str(program), "--version"], {})
    match = re.search(r"\d+(?:\.\d+)*", out)
    if match is None:
        raise BackupError(f"{program} --version said {out.strip()!r}")
    return match.group(0)


def check_dump_version(pg_dump_version: str, server_version: str, pg_dump: Path) -> None:
    """pg_dump refuses a newer server with a terse message; this one says what to do."""
    if major_of(pg_dump_version) < major_of(server_version):
        raise BackupError(
            f"{pg_dump} is version {pg_dump_version}, older than the PostgreSQL server "
            f"({server_version}): install the client programs of version "
            f"{major_of(server_version)} or newer and point FORETELL_PG_BIN_DIR at them"
        )


@dataclass(frozen=True)
class Connection:
    """A libpq connection URI without its password, and the environment that carries the
    password (never on a command line, where `ps` would show it)."""

    uri: str
    env: dict[str, str]


def libpq_connection(url: str) -> Connection:
    parts = urllib.parse.urlsplit(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if parts.password:
        env["PGPASSWORD"] = urllib.parse.unquote(parts.password)
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}@{host}" if user else host
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    # SQLAlchemy-style driver suffixes (postgresql+asyncpg) mean nothing to libpq.
    scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
    return Connection(urllib.parse.urlunsplit(parts._replace(scheme=scheme)), env)


async def dump(tools: Tools, url: str, snapshot: str, target: Path) -> None:
    """Writes the database as plain SQL as of `snapshot` (exported by a transaction that stays
    open meanwhile). No owners or grants: the target database may belong to another role."""
    connection = libpq_connection(url)
    await _run(
        [
            str(tools.pg_dump),
            f"--dbname={connection.uri}",
            f"--snapshot={snapshot}",
            "--format=plain",
            "--no-owner",
            "--no-privileges",
            "--quote-all-identifiers",
            f"--file={target}",
        ],
        connection.env,
    )


# The first minor release of each major whose pg_dump writes, and psql understands, the
# `\restrict KEY` ... `\unrestrict KEY` lines around a dump (CVE-2025-8714).
_RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}


def knows_restrict(psql_version: str) -> bool:
    numbers = [int(n) for n in re.findall(r"\d+", psql_version)[:2]] + [0]
    major, minor = numbers[0], numbers[1]
    return major >= 18 or minor >= _RESTRICT_SINCE.get(major, 10**6)


def without_restrict(source: Path, target: Path) -> None:
    r"""`source` without its `\restrict` / `\unrestrict` pair, for a psql from before them.
    Only the pair's own lines go: the key is random, so no data line can be taken for them."""
    key = b""
    with open(source, "rb") as src, open(target, "wb") as out:
        for line in src:
            if not key and line.startswith(b"\\restrict "):
                key = line.split(b" ", 1)[1].strip()
                continue
            if key and line.rstrip(b"\r\n") == b"\\unrestrict " + key:
                continue
            out.write(line)


async def load(tools: Tools, url: str, source: Path) -> None:
    """Loads a plain SQL dump in one transaction: an error leaves the database as it was."""
    connection = libpq_connection(url)
    if not knows_restrict(await program_version(tools.psql)):
        plain = source.with_name(source.name + ".unrestricted")
        without_restrict(source, plain)
        source = plain
    await _run(
        [
            str(tools.psql),
            f"--dbname={connection.uri}",
            "--no-psqlrc",
            "--quiet",
            "--single-transaction",
            "--set=ON_ERROR_STOP=1",
            f"--file={source}",
        ],
        connection.env,
    )


async def _run(argv: list[str], env: dict[str, str]) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env or None,
        )
    except OSError as error:
        raise BackupError(f"cannot run {argv[0]}: {error.strerror}") from None
    out, err = await process.communicate()
    if process.returncode != 0:
        said = err.decode(errors="replace").strip()[-_TAIL:] or "(no output)"
        raise BackupError(f"{Path(argv[0]).name} failed (exit {process.returncode}): {said}")
    return out.decode(errors="replace")
