from __future__ import annotations

import sys

import click

from foretell.cli._account import login, logout, whoami
from foretell.cli._billing import cancel, invoices, plan, resume, subscribe, subscriptions
from foretell.cli._data import data
from foretell.cli._demo import demo
from foretell.cli._exit import EXIT_CODES_HELP
from foretell.cli._feed import correct as correct_bar
from foretell.cli._feed import push as push_bars
from foretell.cli._forecasts import forecasts, runs
from foretell.cli._performance import performance
from foretell.cli._registry import (
    create,
    init,
    logs,
    models,
    offline,
    publish,
    push,
    versions,
    visibility,
)
from foretell.cli._run import run
from foretell.cli._server import admin, backup, db, gateway_config, restore, serve, up, worker
from foretell.cli._verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="foretell")
def cli() -> None:
    """Foretell: host forecasting models in a sandbox and sell their forecasts.

    \b
    Providers:
      foretell login                   # sign in to localhost:8080 (or --url, FORETELL_URL)
      foretell init eurusd-momentum    # a model folder that works as generated
      foretell push eurusd-momentum --create
      foretell publish eurusd-momentum 1
      foretell run eurusd-momentum     # a dry run: forecasts and logs, not recorded live
      foretell runs eurusd-momentum    # how the runs ended; runs MODEL RUN_ID for one's log

    \b
    Subscribers:
      foretell plan eurusd-momentum    # price and trial (providers: --price 49.00 --trial-days 14)
      foretell subscribe eurusd-momentum
      foretell forecasts eurusd-momentum --follow   # the newest, then new ones live
      foretell subscriptions           # cancel ID [--now], resume ID
      foretell invoices
      foretell performance eurusd-momentum   # measured by the platform, against baselines
      foretell verify eurusd-momentum        # recompute the forecast ledger: OK or a mismatch

    \b
    Market data:
      foretell data symbols            # what there is: symbols, resolutions, time spans
      foretell data bars EURUSD --last 10
      foretell data import EURUSD.csv --symbol EURUSD --resolution 1h   # admins
      foretell data push - --symbol EURUSD --resolution 1h < latest.csv  # data feeders

    \b
    Operators:
      foretell up                      # run the whole platform on this machine
      foretell serve account           # run one service (needs FORETELL_DATABASE_URL)
      foretell worker                  # background jobs: builds, runs, billing, checkpoints
      foretell db upgrade              # migrate the database
      foretell gateway-config --service-host 'foretell-{service}.ns.svc.cluster.local'
      foretell admin create-user --email ops@example.com
      foretell admin invoices list --open   # then: foretell admin invoices pay ID
      foretell admin feeders create --email feed@vendor.example --symbols EURUSD,GOOG
      foretell demo                    # demo bars, provider and model; a simulated replay
    """


cli.add_command(up)
cli.add_command(serve)
cli.add_command(worker)
cli.add_command(gateway_config)
cli.add_command(db)
cli.add_command(admin)
cli.add_command(backup)
cli.add_command(restore)
data.add_command(push_bars)
data.add_command(correct_bar)
cli.add_command(demo)
# Provider commands: client side only, against a running Foretell (--url / FORETELL_URL).
for command in (
    login,
    logout,
    whoami,
    init,
    create,
    push,
    models,
    versions,
    publish,
    offline,
    visibility,
    logs,
    run,
    runs,
    data,
    plan,
    subscribe,
    subscriptions,
    cancel,
    resume,
    invoices,
    forecasts,
    performance,
    verify,
):
    cli.add_command(command)
cli.epilog = EXIT_CODES_HELP


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        sys.exit(130)
