from __future__ import annotations

import sys

import click

from foretell.cli._server import admin, db, serve, up


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="foretell")
def cli() -> None:
    """Foretell: host forecasting models in a sandbox and sell their forecasts.

    \b
    Examples:
      foretell up                      # run the whole platform on this machine
      foretell serve account           # run one service (needs FORETELL_DATABASE_URL)
      foretell db upgrade              # migrate the database
      foretell admin create-user --email ops@example.com
    """


cli.add_command(up)
cli.add_command(serve)
cli.add_command(db)
cli.add_command(admin)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        sys.exit(130)
