"""Operator commands: run the platform, run services, migrate, manage accounts."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from foretell.settings import Settings

SERVICE_CHOICES = ("all", "account", "registry", "subscription", "datafeed", "forecast")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
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
    help="Load the demo market data (real EURUSD and GOOG bars; idempotent).",
)
def up(demo: bool) -> None:
    """Run the whole platform: embedded PostgreSQL and Redis (unless FORETELL_DATABASE_URL and
    FORETELL_REDIS_URL are set), migrations, the demo data, the services, the worker and
    Envoy. Ctrl-C stops it all.

    \b
    Examples:
      foretell up
      FORETELL_HTTP_ADDR=127.0.0.1:9080 foretell up
      FORETELL_TOPOLOGY=split foretell up --no-demo     # one process per service
    """
    from foretell.up import AlreadyRunning, StartupError, run_up

    try:
        sys.exit(run_up(_settings(), demo=demo))
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
    from foretell.runtime import run_services as serve_services
    from foretell.runtime.server import PortInUse
    from foretell.services import SERVICES
    from foretell.settings import SettingsError

    settings = _settings()
    names = list(SERVICES) if service == "all" else [service]
    try:
        serve_services(settings, names)
    except (SettingsError, PortInUse, OSError) as error:
        _fail(str(error), 1)


@click.command()
def worker() -> None:
    """Run background jobs (version builds, scheduled runs) until SIGTERM.

    Needs FORETELL_DATABASE_URL and FORETELL_REDIS_URL; `foretell up` starts one for you.

    \b
    Example:
      FORETELL_DATABASE_URL=postgresql://localhost/foretell \\
      FORETELL_REDIS_URL=redis://localhost:6379/0 foretell worker
    """
    from redis.exceptions import ConnectionError as RedisConnectionError

    from foretell.logs import get_logger
    from foretell.settings import SettingsError
    from foretell.worker import create_worker

    log = get_logger("foretell.worker")

    settings = _settings()
    if not settings.database_url or not settings.redis_url:
        _fail("FORETELL_DATABASE_URL and FORETELL_REDIS_URL must be set")

    async def run() -> None:
        running = create_worker(settings)
        try:
            await running.async_run()
        except asyncio.CancelledError:
            # arq cancels its main task on SIGTERM or SIGINT: that is a clean stop.
            pass
        finally:
            try:
                await running.close()
            except RedisConnectionError:
                # When the whole platform stops, Redis may go first: nothing left to tidy.
                log.info("redis gone before the worker closed")

    try:
        asyncio.run(run())
    except SettingsError as error:
        _fail(str(error), 1)


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Migrate the database at FORETELL_DATABASE_URL to the latest schema."""
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
    from foretell.services.account.admin import create_account

    settings = _settings()
    if not settings.database_url:
        _fail("FORETELL_DATABASE_URL is not set")
    try:
        user_id = asyncio.run(create_account(settings, email, password, display_name, role))
    except ValueError as error:
        _fail(str(error))
    click.echo(f"created {role} {email} ({user_id})")
