"""`foretell demo`: an operator command, run on the server against its database.

Server-side modules are imported inside the commands that use them, never at the top: the base
install (the CLI providers and subscribers use) has none of the server's dependencies, and every
other command must start without loading them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click

from foretell.cli._output import echo_table
from foretell.cli._server import _fail, _settings

if TYPE_CHECKING:
    from foretell.demo import DemoSummary
    from foretell.marketdata import IngestResult
    from foretell.settings import Settings

_MISSING_TABLE = "42P01"
# foretell.demo.DEFAULT_REPLAY_SLOTS, not imported: the CLI imports server code only when used.
_DEFAULT_REPLAY = 200


@click.command()
@click.option(
    "--replay-slots",
    type=click.IntRange(min=0),
    default=_DEFAULT_REPLAY,
    show_default=True,
    metavar="N",
    help="Replay the demo model at the last N hourly EURUSD slots (0: none).",
)
@click.option("--replay-all", is_flag=True, help="Replay every slot of the EURUSD history.")
def demo(replay_slots: int, replay_all: bool) -> None:
    """Set up a demo platform in the database at FORETELL_DATABASE_URL (and the data directory
    at FORETELL_DATA_DIR). It loads the real hourly EUR/USD bars (5,000, April 2017 to
    February 2018) and daily Alphabet bars (GOOG, 2,148, 2004 to 2013) that the backtesting
    package ships, open times taken as UTC; creates the provider demo@foretell.local (its
    password is printed once, when it is created) and its public model demo-eurusd-momentum
    (the `foretell init` template), builds and publishes it; then replays the model at the
    last N hourly EURUSD slots through the scheduler's slot computation with a simulated
    clock, its runs and forecasts recorded as simulated (never live).

    Idempotent: running it again creates nothing (a larger N replays only the extra slots).
    Building and running models needs the sandbox, i.e. root, like `foretell worker`: without
    root the bars, the provider and the model are still created, and the rest is skipped.

    \b
    Example:
      FORETELL_DATABASE_URL=postgresql://localhost/foretell foretell demo --replay-slots 50
    """
    # Server code, imported only when the command runs: the client install does not have it.
    from sqlalchemy.exc import DBAPIError

    from foretell.demo import DemoDataMissing

    settings = _settings()
    if not settings.database_url:
        _fail("FORETELL_DATABASE_URL is not set (`foretell up` prints the URL it uses)")
    try:
        summary = asyncio.run(_run(settings, None if replay_all else replay_slots))
    except DemoDataMissing as error:
        _fail(str(error), 1)
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == _MISSING_TABLE:
            _fail("the database has no bars table yet: run `foretell db upgrade` first", 1)
        raise
    except OSError as error:
        _fail(f"cannot reach the database: {error}", 1)
    _echo_summary(summary)


async def _run(settings: Settings, replay: int | None) -> DemoSummary:
    # Server code, imported only when the command runs: the client install does not have it.
    from foretell.db import connect
    from foretell.demo import ensure_demo, load_demo_bars

    assert settings.database_url
    db = connect(settings.database_url, pool_size=1)
    try:
        _echo_bars(await load_demo_bars(db))
        return await ensure_demo(db, settings, replay=replay, say=click.echo)
    finally:
        await db.close()


def _echo_bars(results: list[IngestResult]) -> None:
    click.echo("demo market data loaded (open times UTC):")
    echo_table(
        ["SYMBOL", "RES", "BARS", "FIRST", "LAST", "NEW", "UPDATED", "UNCHANGED"],
        [
            (
                r.symbol,
                r.resolution,
                r.received,
                f"{r.first_open_time:%Y-%m-%d %H:%MZ}",
                f"{r.last_open_time:%Y-%m-%d %H:%MZ}",
                r.inserted,
                r.updated,
                r.unchanged,
            )
            for r in results
        ],
    )


def _echo_summary(s: DemoSummary) -> None:
    if s.skipped:
        click.echo(f"skipped: {s.skipped}")
        return
    if not s.slots:
        click.echo("replay: none (--replay-slots 0)")
        return
    new = sum(s.outcomes.values())
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items()))
    click.echo(
        f"replay: {s.slots} slots, {new} new runs"
        + (f" ({outcomes})" if outcomes else "")
        + f", {s.already_recorded} already recorded; {s.forecasts} forecasts recorded, "
        "all labelled simulated"
    )
