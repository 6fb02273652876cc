"""Settings: every `FORETELL_*` environment variable, read once into a frozen dataclass.

Defaults work out of the box on one machine. A malformed value fails at start with the
variable's name, never later with a confusing error deep in a service.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
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
    # Requests per minute Envoy lets through to each auth route (sign-up, sign-in, refresh):
    # per client address, and in all (the ceiling, per Envoy).
    auth_rate_limit_per_client_per_min: int = 30
    auth_rate_limit_per_min: int = 600
    # The same for each expensive call (performance, ledger, dry run, upload), per client
    # address and per bearer token, and in all.
    expensive_rate_limit_per_client_per_min: int = 60
    expensive_rate_limit_per_min: int = 1200
    shutdown_grace_s: float = 5.0
    # Where the worker sends notices to account owners (smtp://[user:password@]host:port, or
    # smtps://); unset, they wait in the outbox table.
    smtp_url: str | None = None
    smtp_from: str = "foretell@localhost"
    # Content-addressed bundles and images; default: data_dir/store.
    store_dir: Path | None = None
    # Where builds get wheels: an index URL, or a local wheelhouse (then no index is used).
    pip_index_url: str | None = None
    wheelhouse: Path | None = None
    max_bundle_bytes: int = 64 * 1024 * 1024
    # The largest REST (JSON) request body Envoy accepts; larger ones get a 413 from Envoy
    # before anything is transcoded. gRPC messages are bounded by the services.
    rest_max_body_bytes: int = 256 * 1024
    build_timeout_s: int = 600
    # The arq queue; separate names keep sites (or test sessions) sharing one Redis apart.
    queue_name: str = "foretell:queue"
    # The worker's every-minute cron that runs live versions at each closed slot.
    scheduler: Literal["on", "off"] = "on"
    # Sandbox limits of a scheduled run.
    run_wall_s: int = 30
    run_cpu_s: int = 30
    run_memory_mib: int = 512
    # Billing: an invoice is due this many days after it is issued; unpaid past that, the
    # subscription is PAST_DUE (still readable) for the grace days, then EXPIRED.
    billing_due_days: int = 7
    billing_grace_days: int = 7
    # Development only: the built-in manual payment processor marks every invoice paid on issue.
    billing_auto_pay: Literal["on", "off"] = "off"
    # Forecasts recorded longer ago than this are a delayed sample everyone signed in may list.
    delayed_sample: Literal["on", "off"] = "on"
    sample_delay_days: int = 7
    # How often an open StreamForecasts re-checks its caller's entitlement even when nothing
    # happens (subscription changes wake it at once).
    entitlement_recheck_s: float = 60.0
    # How long past its own limit (a build's timeout, a run's wall clock) a job may go before
    # arq cancels it, which kills its jail. A worker that died mid-job has its job delivered
    # again once the longest job timeout plus 10 s has passed (arq's in-progress key).
    job_grace_s: int = 60
    # The longest a periodic job (the scheduler cycle, the billing run, ledger checkpoints)
    # may take. arq delivers a job whose worker died again only after the longest timeout of
    # all: this keeps the crons from holding that back longer than the runs need.
    cron_timeout_s: int = 300

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def ledger_keys_dir(self) -> Path:
        """Checkpoint-signing keys of the forecast ledger: apart from the token keys."""
        return self.data_dir / "ledger-keys"

    @property
    def artifacts_dir(self) -> Path:
        return self.store_dir or self.data_dir / "store"


def parse_address(name: str, raw: str) -> Address:
    host, sep, port_text = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"{name}={raw!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return Address(host, int(port_text))


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r}: must be positive")
    return value


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected seconds") from None
    if not value >= 0:
        raise SettingsError(f"{name}={raw!r}: must be zero or more")
    return value


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in choices:
            raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
        return raw

    return parse


def _url(*schemes: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if not raw.startswith(schemes):
            raise SettingsError(f"{name}={raw!r}: expected a URL starting {' or '.join(schemes)}")
        return raw

    return parse


def _text(name: str, raw: str) -> str:
    return raw


def _origins(name: str, raw: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in raw.split(",") if o.strip())


_PARSERS: dict[str, Callable[[str, str], object]] = {
    "data_dir": lambda _name, raw: Path(raw),
    "database_url": _url("postgresql://", "postgres://"),
    "redis_url": _url("redis://", "rediss://", "unix://"),
    "http_addr": parse_address,
    "grpc_addr": parse_address,
    "metrics_addr": parse_address,
    "envoy_admin_addr": parse_address,
    "topology": _choice("all", "split"),
    "log_format": _choice("console", "json"),
    "log_level": lambda name, raw: _choice("DEBUG", "INFO", "WARNING", "ERROR")(name, raw.upper()),
    "cors_origins": _origins,
    "jwt_issuer": _text,
    "jwt_audience": _text,
    "access_token_ttl_s": _positive_int,
    "refresh_token_ttl_s": _positive_int,
    "login_free_failures": _positive_int,
    "login_max_backoff_s": _positive_int,
    "auth_rate_limit_per_min": _positive_int,
    "auth_rate_limit_per_client_per_min": _positive_int,
    "expensive_rate_limit_per_min": _positive_int,
    "expensive_rate_limit_per_client_per_min": _positive_int,
    "shutdown_grace_s": _seconds,
    "smtp_url": _url("smtp://", "smtps://"),
    "smtp_from": _text,
    "store_dir": lambda _name, raw: Path(raw),
    "pip_index_url": _url("http://", "https://", "file://"),
    "wheelhouse": lambda _name, raw: Path(raw),
    "max_bundle_bytes": _positive_int,
    "rest_max_body_bytes": _positive_int,
    "build_timeout_s": _positive_int,
    "queue_name": _text,
    "scheduler": _choice("on", "off"),
    "run_wall_s": _positive_int,
    "run_cpu_s": _positive_int,
    "run_memory_mib": _positive_int,
    "billing_due_days": _positive_int,
    "billing_grace_days": _positive_int,
    "billing_auto_pay": _choice("on", "off"),
    "delayed_sample": _choice("on", "off"),
    "sample_delay_days": _positive_int,
    "entitlement_recheck_s": _seconds,
    "job_grace_s": _positive_int,
    "cron_timeout_s": _positive_int,
}


# Variables the test suite and the client CLI read for themselves.
_NOT_SERVER_SETTINGS = ("FORETELL_TEST_", "FORETELL_URL", "FORETELL_CONFIG_DIR")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Builds Settings from `FORETELL_*` variables (os.environ by default); an unknown
    `FORETELL_*` variable is an error too, since it is most likely a typo."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, raw in env.items():
        if not name.startswith("FORETELL_") or name.startswith(_NOT_SERVER_SETTINGS):
            continue
        field = name.removeprefix("FORETELL_").lower()
        parser = _PARSERS.get(field)
        if parser is None:
            raise SettingsError(f"{name}: unknown setting (see README, Configuration)")
        if raw != "":
            values[field] = parser(name, raw)
    return dataclasses.replace(Settings(), **values)  # type: ignore[arg-type]
