"""Operator commands: run the platform, run services, migrate, manage accounts.

They run on the server, so each imports the server stack inside the function: `foretell` on a
provider's machine (the base install) must load without it.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, cast

import click

if TYPE_CHECKING:
    from foretell.settings import Settings
    from foretell.worker import WorkerRole

SERVICE_CHOICES = ("all", "account", "registry", "subscription", "datafeed", "forecast")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.logs import configure_logging
    from foretell.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as error:
        _fail(str(error))
    configure_logging(settings)
    return settings


@click.command()
@click.option(
    "--demo/--no-demo",
    default=True,
    show_default=True,
    help="The demo: market data (real EURUSD and GOOG bars) at start, then three demo models "
    "with simulated records set up in the background (idempotent).",
)
@click.option(
    "--demo-models/--no-demo-models",
    default=True,
    show_default=True,
    help="With --demo: also set up the demo models (builds and replays; root needed).",
)
def up(demo: bool, demo_models: bool) -> None:
    """Run the whole platform: embedded PostgreSQL and Redis (unless FORETELL_DATABASE_URL and
    FORETELL_REDIS_URL are set), migrations, the demo data, the services, the worker and
    Envoy, and the web app on the same address. Ctrl-C stops it all.

    \b
    Examples:
      foretell up
      FORETELL_HTTP_ADDR=127.0.0.1:9080 foretell up
      FORETELL_TOPOLOGY=split foretell up --no-demo     # one process per service
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.up import AlreadyRunning, StartupError, run_up

    try:
        sys.exit(run_up(_settings(), demo=demo, demo_models=demo and demo_models))
    except (AlreadyRunning, StartupError) as error:
        _fail(str(error), 1)


@click.command()
@click.argument("service", type=click.Choice(SERVICE_CHOICES))
def serve(service: str) -> None:
    """Run one service (or `all`) in this process until SIGTERM.

    Listens on FORETELL_GRPC_ADDR and serves metrics on FORETELL_METRICS_ADDR.

    \b
    Examples:
      FORETELL_DATABASE_URL=postgresql://localhost/foretell \\
      FORETELL_REDIS_URL=redis://localhost:6379/0 foretell serve all
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.composition import SERVICES
    from foretell.composition import run_services as serve_services
    from foretell.runtime.server import PortInUse
    from foretell.settings import SettingsError

    settings = _settings()
    names = list(SERVICES) if service == "all" else [service]
    try:
        serve_services(settings, names)
    except (SettingsError, PortInUse, OSError) as error:
        _fail(str(error), 1)


_LANES = ("build", "live", "dry", "replay")
# sysexits.h: a temporary failure; the same command may succeed later.
EX_TEMPFAIL = 75


@click.command()
@click.option(
    "--lane",
    "lanes",
    type=click.Choice([*_LANES, "all"]),
    multiple=True,
    default=("all",),
    show_default=True,
    help="The lanes to serve (repeatable): each has its own queue and concurrency.",
)
@click.option(
    "--role",
    type=click.Choice(["all", "jobs", "cron"]),
    default="all",
    show_default=True,
    help="jobs: the lane's jobs only (scale these out); cron: the live lane's periodic jobs "
    "only (the scheduler, billing, ledger checkpoints, notices; run exactly one); all: both.",
)
@click.option(
    "--metrics/--no-metrics",
    default=False,
    show_default=True,
    help="Serve Prometheus metrics on FORETELL_METRICS_ADDR (runs, builds; with --role cron "
    "or all also the queues' depth and the business figures).",
)
def worker(lanes: tuple[str, ...], role: str, metrics: bool) -> None:
    """Run background jobs (builds, live runs, dry runs, replays) until SIGTERM.

    Each lane is a queue with its own workers: builds, live runs (with the scheduler, billing
    and ledger crons), dry runs and simulated replays. `foretell up` starts one worker per lane;
    beyond one machine, scale each lane on its own and run one `--role cron` worker.

    Needs FORETELL_DATABASE_URL and FORETELL_REDIS_URL; `foretell up` starts them for you.

    \b
    Example:
      FORETELL_DATABASE_URL=postgresql://localhost/foretell \\
      FORETELL_REDIS_URL=redis://localhost:6379/0 foretell worker --lane live
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from redis.exceptions import ConnectionError as RedisConnectionError

    from foretell.logs import get_logger
    from foretell.runtime.lanes import Lane, queue_name
    from foretell.worker import CRON_QUEUE_SUFFIX, close_worker, create_worker

    log = get_logger("foretell.worker")

    settings = _settings()
    if not settings.database_url or not settings.redis_url:
        _fail("FORETELL_DATABASE_URL and FORETELL_REDIS_URL must be set")
    chosen = [Lane(name) for name in (_LANES if "all" in lanes else dict.fromkeys(lanes))]
    if role == "cron":
        # The periodic jobs belong to the live lane.
        chosen = [Lane.LIVE]

    if metrics:
        from foretell.metrics import register_queues, serve_metrics

        try:
            serve_metrics(settings.metrics_addr)
        except OSError as error:
            _fail(str(error), 1)
        if role != "jobs":
            queues = [queue_name(settings, lane) for lane in Lane]
            register_queues(settings.redis_url, [*queues, settings.queue_name + CRON_QUEUE_SUFFIX])

    async def run() -> None:
        # arq's own signal handling stops one worker; several in one process stop together.
        alone = len(chosen) == 1
        running = [
            create_worker(settings, lane=lane, role=cast("WorkerRole", role), handle_signals=alone)
            for lane in chosen
        ]
        together = asyncio.gather(*(w.async_run() for w in running))
        if not alone:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, together.cancel)
        try:
            await together
        except asyncio.CancelledError:
            # arq cancels its main task on SIGTERM or SIGINT: that is a clean stop.
            pass
        finally:
            for each in running:
                try:
                    await close_worker(each)
                except RedisConnectionError:
                    # When the whole platform stops, Redis may go first: nothing left to tidy.
                    log.info("redis gone before the worker closed")

    _run_workers(run)


def _run_workers(run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # The server stack, loaded when the command runs (see the module docstring).
    from redis.exceptions import ConnectionError as RedisConnectionError

    from foretell.logs import get_logger
    from foretell.settings import SettingsError

    try:
        asyncio.run(run())
    except SettingsError as error:
        _fail(str(error), 1)
    except RedisConnectionError as error:
        # arq's worker does not outlive its Redis: say so in one line and exit, for the
        # supervisor (`foretell up`, Kubernetes) to start it again once Redis answers. The
        # jobs it had taken are delivered again (arq's in-progress keys expire).
        get_logger("foretell.worker").warning(
            "redis unavailable: the worker stops, to be restarted", error=str(error)
        )
        sys.exit(EX_TEMPFAIL)


@click.command("gateway-config")
@click.option(
    "--service-host",
    required=True,
    help="DNS name of each service, with {service} for its short name (account, registry, ...).",
)
@click.option("--grpc-port", type=int, default=50051, show_default=True)
@click.option("--listen", default=None, help="HOST:PORT of Envoy's listener [FORETELL_HTTP_ADDR].")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), default="-", help="File to write, or -."
)
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Check the config with `envoy --mode validate` (needs --output).",
)
def gateway_config(
    service_host: str, grpc_port: int, listen: str | None, output: str, validate: bool
) -> None:
    """Print the Envoy config (the one `foretell up` renders) for services found by DNS, one
    name each: the Kubernetes topology (deploy/kubernetes), where each name is a headless
    Service and Envoy balances each request over its pods.

    \b
    Example:
      foretell gateway-config --service-host 'foretell-{service}.foretell.svc.cluster.local' \\
        --listen 0.0.0.0:8080 -o /etc/envoy/envoy.yaml
    """
    from pathlib import Path

    from foretell.gateway import dns_upstreams, render_envoy_config, validate_envoy_config
    from foretell.settings import SettingsError, parse_address

    settings = _settings()
    try:
        http_addr = parse_address("--listen", listen) if listen else None
        text = render_envoy_config(
            settings, dns_upstreams(service_host, grpc_port), http_addr=http_addr
        )
    except (SettingsError, ValueError, OSError) as error:
        _fail(str(error))
    if output == "-":
        click.echo(text, nl=False)
        return
    path = Path(output)
    path.write_text(text)
    if validate:
        try:
            validate_envoy_config(path)
        except ValueError as error:
            _fail(str(error), 1)
    click.echo(f"wrote {path}", err=True)


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Migrate the database at FORETELL_DATABASE_URL to the latest schema."""
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.db.migrate import upgrade_sync

    settings = _settings()
    if not settings.database_url:
        _fail("FORETELL_DATABASE_URL is not set")
    upgrade_sync(settings.database_url, revision)
    click.echo(f"database at revision {revision}")


@click.group()
def admin() -> None:
    """Administration commands (run on the server, against its database)."""


@admin.command("create-user")
@click.option("--email", required=True)
@click.option("--display-name", default="Administrator", show_default=True)
@click.option(
    "--role",
    type=click.Choice(["admin", "provider", "subscriber"]),
    default="admin",
    show_default=True,
)
@click.password_option("--password", help="Prompted for when not given.")
def admin_create_user(email: str, display_name: str, role: str, password: str) -> None:
    """Create an account, including admin accounts (which the API never creates).

    \b
    Example:
      foretell admin create-user --email ops@example.com
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.services.account.admin import create_account

    settings = _settings()
    if not settings.database_url:
        _fail("FORETELL_DATABASE_URL is not set")
    try:
        user_id = asyncio.run(create_account(settings, email, password, display_name, role))
    except ValueError as error:
        _fail(str(error))
    click.echo(f"created {role} {email} ({user_id})")


@admin.group("invoices")
def admin_invoices() -> None:
    """Invoices of the built-in manual processor: list them, record payments, issue credits."""


def _invoice_row(line: object) -> dict[str, object]:
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.billing.admin import InvoiceLine
    from foretell.currencies import format_minor

    assert isinstance(line, InvoiceLine)
    invoice = line.status.invoice
    return {
        "id": str(invoice.id),
        "subscription_id": str(invoice.subscription_id),
        "model": line.model,
        "subscriber": line.subscriber_email,
        "amount_minor": invoice.amount_minor,
        "currency": invoice.currency,
        "amount": format_minor(invoice.amount_minor, invoice.currency),
        "amount_due_minor": line.status.amount_due_minor,
        "credited_minor": line.status.credited_minor,
        "state": line.status.state,
        "period_start": invoice.period_start.isoformat(),
        "period_end": invoice.period_end.isoformat(),
        "issued_at": invoice.issued_at.isoformat(),
        "due_at": invoice.due_at.isoformat(),
    }


def _database_settings() -> Settings:
    settings = _settings()
    if not settings.database_url:
        _fail("FORETELL_DATABASE_URL is not set")
    return settings


@admin_invoices.command("list")
@click.option("--open", "open_only", is_flag=True, help="Only invoices still waiting for money.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def admin_invoices_list(open_only: bool, limit: int, as_json: bool) -> None:
    """List invoices, newest first.

    \b
    Examples:
      foretell admin invoices list --open
      foretell admin invoices list --json
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.billing.admin import list_invoices

    lines = asyncio.run(list_invoices(_database_settings(), open_only=open_only, limit=limit))
    rows = [_invoice_row(line) for line in lines]
    if as_json:
        click.echo(json.dumps({"invoices": rows}, indent=2))
        return
    headers = ("ID", "MODEL", "SUBSCRIBER", "AMOUNT", "STATE", "DUE")
    table = [headers] + [
        (r["id"], r["model"], r["subscriber"], r["amount"], r["state"], str(r["due_at"])[:16])
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
    for row in table:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@admin_invoices.command("pay")
@click.argument("invoice_id")
@click.option("--reference", default="", help="The bank transfer or receipt it was paid by.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def admin_invoices_pay(invoice_id: str, reference: str, as_json: bool) -> None:
    """Record that an open invoice was paid in full (the manual processor). The subscription
    becomes ACTIVE again if it was waiting for this money.

    \b
    Example:
      foretell admin invoices pay 3f0c... --reference "wire 2026-11-30"
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.billing.admin import pay_invoice

    try:
        line = asyncio.run(pay_invoice(_database_settings(), invoice_id, reference))
    except ValueError as error:
        _fail(str(error))
    row = _invoice_row(line)
    if as_json:
        click.echo(json.dumps({"invoice": row}, indent=2))
    else:
        click.echo(f"invoice {row['id']} ({row['model']}, {row['subscriber']}): {row['state']}")


@admin_invoices.command("credit")
@click.argument("invoice_id")
@click.option("--amount-minor", type=click.IntRange(1), required=True, help="In minor units.")
@click.option("--reason", required=True, help="Why: shown with the invoice.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def admin_invoices_credit(invoice_id: str, amount_minor: int, reason: str, as_json: bool) -> None:
    """Correct an open invoice with a credit note (issued invoices never change).

    \b
    Example:
      foretell admin invoices credit 3f0c... --amount-minor 4900 --reason "goodwill"
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.billing.admin import credit_invoice

    try:
        line = asyncio.run(credit_invoice(_database_settings(), invoice_id, amount_minor, reason))
    except ValueError as error:
        _fail(str(error))
    row = _invoice_row(line)
    if as_json:
        click.echo(json.dumps({"invoice": row}, indent=2))
    else:
        click.echo(
            f"invoice {row['id']}: credited {row['credited_minor']}, due {row['amount_due_minor']}"
            f" ({row['state']})"
        )


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=pathlib.Path))
def backup(path: pathlib.Path) -> None:
    """Back up the platform into one archive file: the database (FORETELL_DATABASE_URL, or the
    embedded one in FORETELL_DATA_DIR), the artifact store objects it refers to and the token
    and ledger signing keys. Consistent while the platform runs. The file holds the keys:
    keep it as secret as the data directory.

    \b
    Example:
      foretell backup /var/backups/foretell-$(date +%F).tar.gz
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.backup import BackupError, create_backup

    settings = _settings()
    try:
        manifest = asyncio.run(create_backup(settings, path, _say))
    except BackupError as error:
        _fail(str(error), 1)
    click.echo(
        f"wrote {path}: database at schema {manifest.schema_revision}, "
        f"{len(manifest.bundles)} bundles, {len(manifest.images)} images, "
        f"{len(manifest.files)} files"
    )


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option(
    "--force",
    is_flag=True,
    help="Replace a database and keys that are not empty (the store keeps its objects).",
)
def restore(path: pathlib.Path, force: bool) -> None:
    """Restore a backup into FORETELL_DATABASE_URL (or a new embedded PostgreSQL in
    FORETELL_DATA_DIR), the artifact store and the data directory's keys. The archive is
    checked against its manifest before anything is written; a target that is not empty is
    refused unless --force. Stop the platform first.

    \b
    Example:
      FORETELL_DATA_DIR=/srv/foretell foretell restore foretell-2026-12-07.tar.gz
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.backup import BackupError, restore_backup

    settings = _settings()
    try:
        manifest = asyncio.run(restore_backup(settings, path, _say, force=force))
    except BackupError as error:
        _fail(str(error), 1)
    click.echo(
        f"restored {path} (made {manifest.created_at} by Foretell {manifest.foretell_version}): "
        f"{len(manifest.bundles)} bundles, {len(manifest.images)} images"
    )


def _say(message: str) -> None:
    click.echo(message, err=True)


@admin.group("feeders")
def admin_feeders() -> None:
    """Data feeders: accounts that may only push bars (IngestBars), for the symbols granted."""


def _symbols(text: tuple[str, ...]) -> list[str]:
    return [s for part in text for s in part.split(",") if s.strip()]


@admin_feeders.command("create")
@click.option("--email", required=True)
@click.option("--display-name", default="Data feed", show_default=True)
@click.option("--symbols", multiple=True, required=True, help="Symbols, comma-separated.")
def admin_feeders_create(email: str, display_name: str, symbols: tuple[str, ...]) -> None:
    """Create a data feeder granted --symbols, and print its API key (shown once): the vendor's
    script sends it as FORETELL_API_KEY to `foretell data push`.

    \b
    Example:
      foretell admin feeders create --email feed@vendor.example --symbols EURUSD,GBPUSD
    """
    # The server stack, loaded when the command runs (see the module docstring).
    from foretell.services.datafeed import admin as feeders

    try:
        made = asyncio.run(
            feeders.create(_database_settings(), email, display_name, _symbols(symbols))
        )
    except ValueError as error:
        _fail(str(error))
    click.echo(f"created data feeder {email} ({made.user_id})")
    click.echo(f"API key (shown once): {made.api_key}")


@admin_feeders.command("grant")
@click.argument("email")
@click.argument("symbols", nargs=-1, required=True)
def admin_feeders_grant(email: str, symbols: tuple[str, ...]) -> None:
    """Let the data feeder EMAIL push bars for SYMBOLS too."""
    from foretell.services.datafeed import admin as feeders

    try:
        granted = asyncio.run(feeders.grant(_database_settings(), email, _symbols(symbols)))
    except ValueError as error:
        _fail(str(error))
    click.echo(f"{email} may push {', '.join(granted)}")


@admin_feeders.command("revoke")
@click.argument("email")
@click.argument("symbols", nargs=-1, required=True)
def admin_feeders_revoke(email: str, symbols: tuple[str, ...]) -> None:
    """Take SYMBOLS from the data feeder EMAIL."""
    from foretell.services.datafeed import admin as feeders

    try:
        count = asyncio.run(feeders.revoke(_database_settings(), email, _symbols(symbols)))
    except ValueError as error:
        _fail(str(error))
    click.echo(f"{email}: {count} symbols revoked")


@admin_feeders.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def admin_feeders_list(as_json: bool) -> None:
    """List the data feeders and their symbols."""
    from foretell.services.datafeed import admin as feeders

    found = asyncio.run(feeders.list_all(_database_settings()))
    if as_json:
        rows = [{"id": str(f.user_id), "email": f.email, "symbols": f.symbols} for f in found]
        click.echo(json.dumps({"feeders": rows}, indent=2))
        return
    for f in found:
        click.echo(f"{f.email}\t{','.join(f.symbols) or '(none)'}")
