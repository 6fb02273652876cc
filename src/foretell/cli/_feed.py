"""`foretell data push`: a vendor's script pushes bars as they close, from a CSV file or
standard input, to IngestBars; `foretell data correct`: an admin changes a stored bar, with the
reason. Client side, like every client module: the standard library reads the CSV."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import click
import grpc

from foretell.cli._client import CALL_TIMEOUT_S, Metadata, connect
from foretell.cli._data import (
    BATCH_BARS,
    CsvBars,
    ingest_error,
    ingest_requests,
    read_csv,
    read_rows,
    time_option,
    when,
)
from foretell.cli._exit import CliError, Exit
from foretell.cli._output import echo_json, json_option, message_dict
from foretell.cli._target import url_option
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as pb_grpc
from foretell.resolutions import RESOLUTIONS, TO_ENUM

STDIN = "-"


def _read(source: str) -> tuple[CsvBars, str]:
    if source == STDIN:
        text = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
        return read_rows(text, "stdin", headerless=True), "stdin"
    path = Path(source)
    if not path.is_file():
        raise CliError(f"{source}: no such file (use - for standard input)", Exit.USAGE)
    return read_csv(path, headerless=True), str(path)


@click.command("push", short_help="Push bars from a CSV file or stdin (data feeders).")
@click.argument("source", metavar="FILE|-")
@click.option("--symbol", required=True, help="The symbol, e.g. EURUSD.")
@click.option("--resolution", type=click.Choice(RESOLUTIONS), required=True)
@click.option(
    "--batch",
    "batch_size",
    type=click.IntRange(1, BATCH_BARS),
    default=1000,
    show_default=True,
    help="Bars per IngestBars call; each call is stored whole or not at all.",
)
@url_option
@json_option
def push(
    source: str, symbol: str, resolution: str, batch_size: int, url: str, as_json: bool
) -> None:
    """Push the bars in FILE (or standard input, -) to Foretell, as a data feeder's script
    does when bars close. The CSV is what `data import` reads; a first line that is already
    a bar means there is no header and the columns are time, Open, High, Low, Close, Volume.

    Bars go in calls of --batch bars, oldest first; each call is checked and stored whole.
    Sending a stored bar again with the same values is harmless (a retry); a stored bar with
    other values is updated unless a run already read it, which only an admin's correction
    changes. Bars of a closed market and bars not closed yet are refused. On a refusal,
    earlier calls stay stored and nothing later is sent; the message names the input's lines.

    Sign in with `foretell login`, or give the feeder's API key in FORETELL_API_KEY.

    \b
    Examples:
      foretell data push eurusd-latest.csv --symbol EURUSD --resolution 1h
      echo "2026-12-07T09:00Z,1.0523,1.0531,1.0519,1.0527,1840" \\
        | foretell data push - --symbol EURUSD --resolution 1h
    """
    bars, name = _read(source)
    header = pb.IngestBarsHeader(
        symbol=symbol.upper(),
        resolution=TO_ENUM[resolution],
        on_conflict=pb.CONFLICT_POLICY_UPSERT,
    )
    totals = {"received": 0, "inserted": 0, "updated": 0, "unchanged": 0}
    with connect(url) as client:
        stub = pb_grpc.DataFeedServiceStub(client.channel)
        for start in range(0, len(bars), batch_size):
            part = bars.slice(start, start + batch_size)

            def send(metadata: Metadata, part: CsvBars = part) -> pb.IngestBarsResponse:
                return stub.IngestBars(
                    ingest_requests(header, part), metadata=metadata, timeout=CALL_TIMEOUT_S
                )

            try:
                response = client.call(send)
            except grpc.RpcError as error:
                failed = ingest_error(error, client.target, part, name)
                if totals["received"]:
                    stored = f"the {totals['received']} bars before line {part.lines[0]} are stored"
                    failed = CliError(f"{failed.message}\n  ({stored})", failed.code)
                raise failed from None
            for key in totals:
                totals[key] += getattr(response, key)
    if as_json:
        echo_json({"symbol": header.symbol, "resolution": resolution, **totals})
        return
    click.echo(
        f"{header.symbol} {resolution}: {totals['received']} bars from {name} "
        f"({when(bars.times[0])} to {when(bars.times[-1])}): {totals['inserted']} new, "
        f"{totals['updated']} updated, {totals['unchanged']} unchanged"
    )


@click.command("correct", short_help="Correct a stored bar, with the reason (admins).")
@click.argument("symbol")
@click.option("--resolution", type=click.Choice(RESOLUTIONS), required=True)
@click.option("--at", "open_time", required=True, metavar="TIME", help="The bar's open time.")
@click.option("--open", "open_", type=float, required=True)
@click.option("--high", type=float, required=True)
@click.option("--low", type=float, required=True)
@click.option("--close", type=float, required=True)
@click.option("--volume", type=float, required=True)
@click.option("--reason", required=True, help="Why the bar changes: kept with the correction.")
@url_option
@json_option
def correct(
    symbol: str,
    resolution: str,
    open_time: str,
    open_: float,
    high: float,
    low: float,
    close: float,
    volume: float,
    reason: str,
    url: str,
    as_json: bool,
) -> None:
    """Correct SYMBOL's bar opening at --at: the only way to change a bar that a run already
    read. The old and new values, who, when and why are recorded, and every performance
    report that used the bar is recomputed.

    \b
    Example:
      foretell data correct EURUSD --resolution 1h --at 2026-12-07T09:00Z \\
        --open 1.0523 --high 1.0531 --low 1.0519 --close 1.0528 --volume 1840 \\
        --reason "vendor re-issued the 09:00 bar"
    """
    request = pb.CorrectBarRequest(
        symbol=symbol.upper(),
        resolution=TO_ENUM[resolution],
        open_time=time_option(open_time, "at"),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        reason=reason,
    )
    with connect(url) as client:
        stub = pb_grpc.DataFeedServiceStub(client.channel)
        response = client.unary(stub.CorrectBar, request)
    if as_json:
        echo_json(message_dict(response))
        return
    old, new = response.old_values, response.new_values
    click.echo(
        f"{response.symbol} {resolution} {when(response.open_time)} corrected "
        f"(correction {response.id}): close {old.close:g} -> {new.close:g}, "
        f"open {old.open:g} -> {new.open:g}, high {old.high:g} -> {new.high:g}, "
        f"low {old.low:g} -> {new.low:g}, volume {old.volume:g} -> {new.volume:g}"
    )
