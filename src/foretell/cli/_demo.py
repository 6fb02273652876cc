"""`foretell demo`: an operator command, run on the server against its database."""

from __future__ import annotations

import asyncio

import click

from foretell.cli._client import echo_table
from foretell.cli._server import _fail, _settings

_MISSING_TABLE = "42P01"


@click.command()
def demo() -> None:
    """Load the demo market data into the database at FORETELL_DATABASE_URL: the real hourly
    EUR/USD bars (5,000, April 2017 to February 2018) and daily Alphabet bars (GOOG, 2,148,
    2004 to 2013) that the backtesting package ships, with open times taken as UTC.
    Idempotent: running it again changes nothing.

    \b
    Example:
      FORETELL_DATABASE_URL=postgresql://localhost/foretell foretell demo
    """
    from sqlalchemy.exc import DBAPIError

    from foretell.demo import DemoDataMissing, run_demo

    settings = _settings()
    if not settings.database_url:
        _fail("FORETELL_DATABASE_URL is not set (`foretell up` prints the URL it uses)")
    try:
        results = asyncio.run(run_demo(settings.database_url))
    except DemoDataMissing as error:
        _fail(str(error), 1)
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == _MISSING_TABLE:
            _fail("the database has no bars table yet: run `foretell db upgrade` first", 1)
        raise
    except OSError as error:
        _fail(f"cannot reach the database: {error}", 1)
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
