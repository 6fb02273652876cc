"""The signed-in sessions, one per Foretell URL, in a credentials file only its owner can read.

Every read-modify-write of the file holds a lock across processes. It matters for refresh:
refresh tokens are single-use, and two processes spending the same one would make the server
revoke the whole session.

Client side only, like every module of the client (see `_client.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from foretell.account.v1 import account_service_pb2 as account_pb

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, refreshes may race
    fcntl = None  # type: ignore[assignment]

# Refresh this long before the access token expires, so it cannot expire in flight.
REFRESH_MARGIN = timedelta(seconds=30)


@dataclass(frozen=True)
class Credentials:
    url: str
    email: str
    access_token: str
    access_expire_time: datetime
    refresh_token: str
    refresh_expire_time: datetime

    @classmethod
    def from_tokens(cls, url: str, email: str, tokens: account_pb.AuthTokens) -> Credentials:
        return cls(
            url=url,
            email=email,
            access_token=tokens.access_token,
            access_expire_time=tokens.access_token_expire_time.ToDatetime(tzinfo=UTC),
            refresh_token=tokens.refresh_token,
            refresh_expire_time=tokens.refresh_token_expire_time.ToDatetime(tzinfo=UTC),
        )

    @classmethod
    def from_json(cls, url: str, data: Mapping[str, Any]) -> Credentials:
        return cls(
            url=url,
            email=str(data["email"]),
            access_token=str(data["access_token"]),
            access_expire_time=_parse_time(data["access_expire_time"]),
            refresh_token=str(data["refresh_token"]),
            refresh_expire_time=_parse_time(data["refresh_expire_time"]),
        )

    def to_json(self) -> dict[str, str]:
        return {
            "url": self.url,
            "email": self.email,
            "access_token": self.access_token,
            "access_expire_time": self.access_expire_time.isoformat(),
            "refresh_token": self.refresh_token,
            "refresh_expire_time": self.refresh_expire_time.isoformat(),
        }

    def access_is_fresh(self) -> bool:
        return self.access_expire_time - _now() > REFRESH_MARGIN


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: object) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def config_dir() -> Path:
    return Path(os.environ.get("FORETELL_CONFIG_DIR") or click.get_app_dir("foretell"))


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / "credentials.lock", "a") as lock_file:
        if fcntl is not None:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield  # the lock goes with the file's closing


def _read_all() -> dict[str, Credentials]:
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
        return {url: Credentials.from_json(url, entry) for url, entry in data.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError):
        click.echo(f"warning: ignoring unreadable credentials file {path}", err=True)
        return {}


def _write_all(entries: Mapping[str, Credentials]) -> None:
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so the tokens are never readable by others, not even
    # between the write and the rename; os.replace makes the switch atomic.
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".credentials-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({url: c.to_json() for url, c in entries.items()}, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, credentials_path())
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_credentials(url: str) -> Credentials | None:
    return _read_all().get(url)


def save_credentials(credentials: Credentials) -> None:
    with _lock():
        _write_all({**_read_all(), credentials.url: credentials})


def delete_credentials(url: str) -> bool:
    with _lock():
        entries = _read_all()
        if entries.pop(url, None) is None:
            return False
        _write_all(entries)
        return True


def rotate_credentials(
    url: str, rejected: Credentials, renew: Callable[[Credentials], Credentials]
) -> Credentials | None:
    """Replaces the session `rejected` came from by `renew(stored)`, and stores it, all under
    the lock. If another process rotated it meanwhile, its fresh session is returned and
    `renew` is not called. None: no session left to refresh (signed out, or it expired)."""
    with _lock():
        entries = _read_all()
        current = entries.get(url)
        if current is None or current.refresh_expire_time <= _now():
            return None
        if current.access_token != rejected.access_token and current.access_is_fresh():
            return current
        renewed = renew(current)
        _write_all({**entries, url: renewed})
        return renewed
