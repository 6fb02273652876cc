"""Settings: every `FORETELL_*` environment variable, read once into a frozen dataclass.

Defaults work out of the box on one machine. A malformed value fails at start with the
variable's name, never later with a confusing error deep in a service.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Topology = Literal["all", "split"]
LogFormat = Literal["console", "json"]

class SettingsError(ValueError):
    """A `FORETELL_*` variable holds a value that cannot be used."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def with_port(self, port: int) -> Address:
        return Address(self.host, port)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".foretell")
    # None means: start an embedded server under data_dir.
    database_url: str | None = None
    redis_url: str | None = None
    http_addr: Address = Address("127.0.0.1", 8080)
    grpc_addr: Address = Address("127.0.0.1", 50051)
    metrics_addr: Address = Address("127.0.0.1", 9464)
    envoy_admin_addr: Address = Address("127.0.0.1", 9901)
    topology: Topology = "all"
    log_format: LogFormat = "console"
    log_level: str = "INFO"
    cors_origins: tuple[str, ...] = ("http://localhost:5173", "http://127.0.0.1:5173")
    jwt_issuer: str = "foretell"
    jwt_audience: str = "foretell-api"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 86400
    # Per-email login back-off: this many failures are free, then each doubles the wait.
    login_free_failures: int = 5
    login_max_backoff_s: int = 900
    # Requests per minute Envoy lets through to the auth routes, per listener.
    auth_rate_limit_per_min: int = 60
    shutdown_grace_s: float = 5.0

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


_ADDRESS_FIELDS = ("http_addr", "grpc_addr", "metrics_addr", "envoy_admin_addr")
_INT_FIELDS = (
    "access_token_ttl_s",
    "refresh_token_ttl_s",
    "login_free_failures",
    "login_max_backoff_s",
    "auth_rate_limit_per_min",
)


def parse_address(name: str, raw: str) -> Address:
    host, sep, port_text = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"{name}={raw!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return Address(host, int(port_text))


def _parse_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r}: must be positive")
    return value


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Builds Settings from `FORETELL_*` variables (os.environ by default)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}

    def get(field: str) -> tuple[str, str] | None:
        name = f"FORETELL_{field.upper()}"
        raw = env.get(name)
        return None if raw is None or raw == "" else (name, raw)

    for field in _ADDRESS_FIELDS:
        if item := get(field):
            values[field] = parse_address(*item)
    for field in _INT_FIELDS:
        if item := get(field):
            values[field] = _parse_int(*item)
    if item := get("shutdown_grace_s"):
        try:
            values["shutdown_grace_s"] = float(item[1])
        except ValueError:
            raise SettingsError(f"{item[0]}={item[1]!r}: expected seconds") from None
    if item := get("data_dir"):
        values["data_dir"] = Path(item[1])
    for field in ("database_url", "redis_url", "jwt_issuer", "jwt_audience"):
        if item := get(field):
            values[field] = item[1]
    if item := get("topology"):
        values["topology"] = _choice(*item, ("all", "split"))
    if item := get("log_format"):
        values["log_format"] = _choice(*item, ("console", "json"))
    if item := get("log_level"):
        values["log_level"] = _choice(item[0], item[1].upper(), ("DEBUG", "INFO", "WARNING", "ERROR"))
    if item := get("cors_origins"):
        values["cors_origins"] = tuple(o.strip() for o in item[1].split(",") if o.strip())
    if (url := values.get("database_url")) and not str(url).startswith("postgresql"):
        raise SettingsError(f"FORETELL_DATABASE_URL={url!r}: expected a postgresql:// URL")
    if (url := values.get("redis_url")) and not str(url).startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"FORETELL_REDIS_URL={url!r}: expected a redis:// or unix:// URL")
    return dataclasses.replace(Settings(), **values)  # type: ignore[arg-type]
