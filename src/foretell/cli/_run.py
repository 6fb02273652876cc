"""`foretell run`: one dry run of a model's version on the platform, or of a local folder on
this machine (`--local`), in the same sandbox, printing the forecasts and the logs.

Server-side modules are imported inside the commands that use them, never at the top: the base
install (the CLI providers and subscribers use) has none of the server's dependencies, and every
other command must start without loading them."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from google.protobuf import timestamp_pb2

from foretell.cli._client import connect
from foretell.cli._data import CsvBars, fetch_bars, read_csv, time_option
from foretell.cli._exit import CliError, Exit
from foretell.cli._output import echo_json, echo_table, enum_label, json_option, message_dict
from foretell.cli._registry import _read_manifest
from foretell.cli._target import url_option
from foretell.datafeed.v1 import datafeed_service_pb2 as datafeed_pb
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.resolutions import STEP_S, TO_ENUM

# A dry run lasts as long as the model runs in the sandbox: far longer than a plain call.
DRY_RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class _Shown:
    outcome: str
    detail: str
    log: str
    # (symbol, direction, target time, predicted return, probability)
    forecasts: list[tuple[str, str, str, str, str]]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _opt(value: float | None, style: str) -> str:
    return "" if value is None else format(value, style)


def _show(shown: _Shown, heading: str) -> None:
    click.echo(heading)
    if shown.detail:
        click.echo(f"detail: {shown.detail}")
    if shown.forecasts:
        echo_table(("SYMBOL", "DIRECTION", "TARGET", "RETURN", "PROBABILITY"), shown.forecasts)
    else:
        click.echo("no forecasts")
    click.echo("--- log ---")
    click.echo(shown.log.rstrip("\n") or "(no output)")


def _as_of(text: str | None) -> datetime | None:
    stamp = time_option(text, "as-of")
    return None if stamp is None else stamp.ToDatetime(tzinfo=UTC)


@click.command(short_help="Try a model once in the sandbox: forecasts and logs.")
@click.argument("model", required=False)
@click.option(
    "--version", "number", type=click.IntRange(min=1), help="Version [default: live or latest]."
)
@click.option("--as-of", "as_of", metavar="TIME", help="Data cut-off, on the model's grid.")
@click.option(
    "--local",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Run this model folder on this machine instead (root, nsjail, foretell[server]).",
)
@click.option(
    "--data",
    "data_files",
    multiple=True,
    metavar="[SYMBOL=]FILE.csv",
    help="With --local: bars for a symbol (CSV as `foretell data import` reads); repeat per "
    "symbol. Without SYMBOL= the file is the model's first symbol's. Without --data, the "
    "platform's bars (signed in).",
)
@url_option
@json_option
def run(
    model: str | None,
    number: int | None,
    as_of: str | None,
    local: Path | None,
    data_files: tuple[str, ...],
    url: str,
    as_json: bool,
) -> None:
    """Run MODEL once, now, in the platform's sandbox on the platform's data, and print its
    forecasts and logs. The run is recorded as a dry run: never part of the track record.
    Running the same version at the same --as-of again shows the recorded run. Only the
    model's owner may. --as-of defaults to the latest closed bar of the model's resolution.

    With --local DIR, the model folder is packed, built and run on this machine, in the same
    sandbox, on the bars of --data files, or without --data on the platform's bars of the
    model's symbols (the latest `lookback` closed at --as-of; signed in); nothing is uploaded.
    --as-of then defaults to the close of the last bar. This needs root, nsjail and
    `pip install 'foretell[server]'`.

    Exit code 10 when the model's run did not end ok.

    \b
    Examples:
      foretell run eurusd-momentum
      foretell run eurusd-momentum --version 2 --as-of 2024-03-04T10:00Z
      sudo foretell run --local eurusd-momentum --data EURUSD.csv
      sudo foretell run --local eurusd-momentum --as-of 2018-02-01T10:00Z
    """
    cut = _as_of(as_of)
    if local is not None:
        if model is not None or number is not None:
            raise CliError("--local runs a folder: give no MODEL or --version", Exit.USAGE)
        shown = _run_local(local, data_files, cut, url, as_json)
    else:
        if model is None:
            raise CliError("give a MODEL, or --local DIR", Exit.USAGE)
        if data_files:
            raise CliError("--data goes with --local", Exit.USAGE)
        shown = _run_remote(model, number, cut, url, as_json)
    if shown.outcome != "ok":
        sys.exit(Exit.RUN_FAILED)


def _run_remote(
    model: str, number: int | None, as_of: datetime | None, url: str, as_json: bool
) -> _Shown:
    request = pb.DryRunRequest(model=model, version=number or 0)
    if as_of is not None:
        request.as_of.CopyFrom(timestamp_pb2.Timestamp(seconds=int(as_of.timestamp())))
    with connect(url) as client:
        response = client.unary(client.forecast.DryRun, request, timeout=DRY_RUN_TIMEOUT_S)
    r = response.run
    outcome = enum_label(pb.RunOutcome.Name(r.outcome), "RUN_OUTCOME_")
    shown = _Shown(
        outcome,
        r.detail,
        r.log,
        [
            (
                f.symbol,
                enum_label(pb.Direction.Name(f.direction), "DIRECTION_"),
                _iso(f.target_time.ToDatetime(tzinfo=UTC)),
                _opt(f.predicted_return if f.HasField("predicted_return") else None, "+.4%"),
                _opt(f.probability if f.HasField("probability") else None, ".2f"),
            )
            for f in response.forecasts
        ],
    )
    if as_json:
        echo_json(message_dict(response))
        return shown
    seconds = r.duration.ToTimedelta().total_seconds()
    again = "" if response.recorded else " (recorded earlier: not run again)"
    _show(
        shown,
        f"dry run {r.id} of {r.model} version {r.version} at "
        f"{_iso(r.as_of.ToDatetime(tzinfo=UTC))}: {outcome} in {seconds:.2f} s{again}",
    )
    return shown


def _bars_by_symbol(data_files: tuple[str, ...], symbols: tuple[str, ...]) -> dict[str, CsvBars]:
    found: dict[str, CsvBars] = {}
    for spec in data_files:
        symbol, sep, file = spec.partition("=")
        if not sep:
            symbol, file = symbols[0], spec
        if symbol not in symbols:
            raise CliError(
                f"--data {spec}: {symbol} is not one of the model's symbols ({', '.join(symbols)})",
                Exit.USAGE,
            )
        if symbol in found:
            raise CliError(f"--data: two files for {symbol}", Exit.USAGE)
        found[symbol] = read_csv(Path(file))
    return found


def _platform_bars(
    url: str, symbols: tuple[str, ...], resolution: str, lookback: int, as_of: datetime | None
) -> dict[str, CsvBars]:
    """The platform's bars a scheduled run at `as_of` would see: per symbol the latest
    `lookback` bars opening before as_of, which on the grid have all closed by then."""
    found: dict[str, CsvBars] = {}
    with connect(url) as client:
        for symbol in symbols:
            request = datafeed_pb.GetBarsRequest(
                symbol=symbol, resolution=TO_ENUM[resolution], limit=lookback, latest=True
            )
            if as_of is not None:
                request.end_time.FromDatetime(as_of)
            bars = fetch_bars(client, request)
            if not bars.times:
                raise CliError(
                    f"the platform has no {resolution} bars of {symbol}"
                    + (f" closed by {_iso(as_of)}" if as_of is not None else ""),
                    Exit.NOT_FOUND,
                )
            found[symbol] = bars
    return found


def _run_local(
    directory: Path,
    data_files: tuple[str, ...],
    as_of: datetime | None,
    url: str,
    as_json: bool,
) -> _Shown:
    manifest = _read_manifest(directory)
    step = STEP_S[manifest.resolution]
    if as_of is not None and int(as_of.timestamp()) % step:
        raise CliError(f"--as-of must be on the {manifest.resolution} grid", Exit.USAGE)
    if data_files:
        csv_bars = _bars_by_symbol(data_files, manifest.symbols)
    else:
        csv_bars = _platform_bars(
            url, manifest.symbols, manifest.resolution, manifest.lookback, as_of
        )
    if as_of is None:
        last = max(bars.times[-1] for bars in csv_bars.values())
        as_of = datetime.fromtimestamp(last + step, UTC)
    if int(as_of.timestamp()) % step:
        raise CliError(f"--as-of must be on the {manifest.resolution} grid", Exit.USAGE)
    if os.geteuid() != 0:
        raise CliError(
            "--local runs the sandbox (nsjail), which needs root: run it with sudo", Exit.ERROR
        )
    # The server parts run the model here; a client-only install says what is missing.
    try:
        from foretell.build import BuildFailed
        from foretell.marketdata import BarColumns
        from foretell.runs import run_folder
        from foretell.sandbox import SandboxError
    except ImportError as error:
        raise CliError(
            f"--local needs the server parts ({error}): pip install 'foretell[server]'",
            Exit.ERROR,
        ) from None
    bars = {
        symbol: BarColumns(b.times, b.opens, b.highs, b.lows, b.closes, b.volumes)
        for symbol, b in csv_bars.items()
    }
    try:
        result = asyncio.run(run_folder(directory, manifest, bars, as_of))
    except BuildFailed as error:
        raise CliError(f"the build failed: {error}", Exit.BUILD_FAILED) from None
    except SandboxError as error:
        raise CliError(f"the sandbox cannot run here: {error}", Exit.ERROR) from None
    except FileNotFoundError as error:
        raise CliError(f"the sandbox cannot run here: {error}", Exit.ERROR) from None
    lr = result.run
    shown = _Shown(
        lr.outcome,
        lr.detail,
        lr.log,
        [
            (
                f.symbol,
                f.direction,
                _iso(f.target_time),
                _opt(f.predicted_return, "+.4%"),
                _opt(f.probability, ".2f"),
            )
            for f in lr.forecasts
        ],
    )
    if as_json:
        document: dict[str, Any] = {
            "outcome": lr.outcome,
            "detail": lr.detail,
            "asOf": as_of.isoformat(),
            "durationS": lr.duration_s,
            "forecasts": [
                {
                    "symbol": f.symbol,
                    "direction": f.direction,
                    "targetTime": f.target_time.isoformat(),
                    "predictedReturn": f.predicted_return,
                    "probability": f.probability,
                }
                for f in lr.forecasts
            ],
            "log": lr.log,
        }
        echo_json(document)
        return shown
    _show(shown, f"local run of {directory} at {_iso(as_of)}: {lr.outcome} in "
                 f"{lr.duration_s:.2f} s (not recorded)")  # fmt: skip
    return shown
