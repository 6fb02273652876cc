"""`foretell forecasts` (a model's recorded forecasts, listed and followed live) and
`foretell runs` (a model's runs, for its owner)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import click
import grpc
from google.protobuf import timestamp_pb2

from foretell.cli._client import Client, Metadata, connect, pages
from foretell.cli._data import time_option
from foretell.cli._exit import CliError, Exit
from foretell.cli._output import (
    echo_json,
    echo_table,
    enum_label,
    json_option,
    message_dict,
    short_time,
)
from foretell.cli._target import url_option
from foretell.forecast.v1 import forecast_service_pb2 as pb

DEFAULT_LAST = 20
DETAIL_WIDTH = 40
_FORECAST_HEADERS = (
    "AS OF", "SYMBOL", "DIRECTION", "TARGET", "RETURN", "PROBABILITY", "VERSION", "RECORDED",
)  # fmt: skip


def _kind(simulated: bool, dry: bool) -> pb.RunKind.ValueType:
    if simulated and dry:
        raise CliError("use one of --simulated and --dry", Exit.USAGE)
    if simulated:
        return pb.RUN_KIND_SIMULATED
    return pb.RUN_KIND_DRY if dry else pb.RUN_KIND_LIVE


def _row(f: pb.ForecastRecord) -> tuple[str, ...]:
    return (
        short_time(f.as_of),
        f.symbol,
        enum_label(pb.Direction.Name(f.direction), "DIRECTION_"),
        short_time(f.target_time),
        format(f.predicted_return, "+.4%") if f.HasField("predicted_return") else "-",
        format(f.probability, ".2f") if f.HasField("probability") else "-",
        f"v{f.version}",
        short_time(f.recorded_time),
    )


def _json_line(f: pb.ForecastRecord) -> str:
    return json.dumps(message_dict(f), separators=(",", ":"))


@dataclass(frozen=True)
class _Filters:
    """What --version, --since and --until keep; the stream filters only by symbol and kind,
    so streamed forecasts are checked here the same way the listing is on the server."""

    version: int
    since: timestamp_pb2.Timestamp | None
    until: timestamp_pb2.Timestamp | None

    def keep(self, f: pb.ForecastRecord) -> bool:
        seconds = f.as_of.seconds
        return (
            (not self.version or f.version == self.version)
            and (self.since is None or seconds >= self.since.seconds)
            and (self.until is None or seconds < self.until.seconds)
        )


@dataclass
class _Listed:
    forecasts: list[pb.ForecastRecord]
    # The server served only the delayed sample: the caller is not entitled to the rest.
    sample: bool = False


def _list_forecasts(client: Client, request: pb.ListForecastsRequest, limit: int | None) -> _Listed:
    """Pages of ListForecasts until `limit` forecasts (None: every page)."""
    listed = _Listed([])
    for page in pages(
        client, client.forecast.ListForecasts, request, lambda p: len(p.forecasts), limit
    ):
        listed.forecasts.extend(page.forecasts)
        listed.sample = listed.sample or page.delayed_sample
    return listed


def _open_stream(
    client: Client, request: pb.StreamForecastsRequest
) -> Iterator[pb.StreamForecastsResponse]:
    """Opens StreamForecasts and waits for its headers: the server sends them once it listens,
    so every run recorded from then on is delivered. A call refused at once (not entitled)
    usually raises here, before anything is listed; otherwise with its first read."""

    def send(metadata: Metadata) -> Iterator[pb.StreamForecastsResponse]:
        call = client.forecast.StreamForecasts(request, metadata=metadata)
        call.initial_metadata()
        if isinstance(call, grpc.Future) and call.done():
            next(call, None)  # an ended call: raises its error (refreshed on UNAUTHENTICATED)
        return call

    return client.call(send)


def _stream_error(error: grpc.RpcError, model: str, opened: bool) -> CliError | None:
    """The error of a followed stream; None where the usual mapping says it best."""
    code = error.code()
    text = error.details() or code.name.lower()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return CliError(f"cannot follow {model}: {text}", Exit.DENIED)
    if opened and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return CliError(
            f"the stream of {model}'s forecasts was interrupted ({text}): run the command again "
            "(its listing fills the gap)",
            Exit.UNREACHABLE,
        )
    return None


@click.command(short_help="A model's recorded forecasts; --follow for new ones live.")
@click.argument("model")
@click.option("--symbol", help="Only this symbol, e.g. EURUSD.")
@click.option("--version", "number", type=click.IntRange(min=1), help="Only this version.")
@click.option("--since", metavar="TIME", help="as_of at or after TIME (ISO 8601, UTC).")
@click.option("--until", metavar="TIME", help="as_of before TIME.")
@click.option(
    "--last", type=click.IntRange(min=1), help=f"The newest N forecasts [default: {DEFAULT_LAST}]."
)
@click.option("--all", "every", is_flag=True, help="Every forecast in the range (every page).")
@click.option("--simulated", is_flag=True, help="Forecasts of simulated replays, not live runs.")
@click.option("--dry", is_flag=True, help="Forecasts of dry runs, not live runs.")
@click.option("--follow", is_flag=True, help="Then print new runs' forecasts until Ctrl-C.")
@url_option
@json_option
def forecasts(
    model: str,
    symbol: str | None,
    number: int | None,
    since: str | None,
    until: str | None,
    last: int | None,
    every: bool,
    simulated: bool,
    dry: bool,
    follow: bool,
    url: str,
    as_json: bool,
) -> None:
    """List MODEL's recorded forecasts, newest as_of first: by default the newest 20 of its
    live runs. --since and --until bound the as_of (since inclusive, until exclusive).

    Reading a model's forecasts needs a subscription (trialing, active, or past due within
    grace) unless it is yours; anyone else signed in sees only the delayed sample of older
    forecasts, and a note says so.

    With --follow the listing is printed oldest first, like `tail -f`, and each run recorded
    afterwards prints its forecasts as it arrives, until Ctrl-C (exit 0). Following needs the
    subscription (exit 4 without it, or when it lapses while following). --json prints one
    JSON document; with --follow, one JSON object per forecast per line.

    \b
    Examples:
      foretell forecasts eurusd-momentum
      foretell forecasts eurusd-momentum --symbol EURUSD --since 2026-11-01 --all
      foretell forecasts eurusd-momentum --version 2 --last 100 --json
      foretell forecasts eurusd-momentum --follow
      foretell forecasts demo-eurusd-momentum --simulated --last 5
    """
    if last is not None and every:
        raise CliError("use one of --last and --all", Exit.USAGE)
    kind = _kind(simulated, dry)
    filters = _Filters(number or 0, time_option(since, "since"), time_option(until, "until"))
    request = pb.ListForecastsRequest(
        model=model,
        symbol=symbol or "",
        version=filters.version,
        start_time=filters.since,
        end_time=filters.until,
        kind=kind,
    )
    limit = None if every else last or DEFAULT_LAST
    if follow:
        _follow(model, request, limit, filters, url, as_json)
        return
    with connect(url) as client:
        listed = _list_forecasts(client, request, limit)
    found = listed.forecasts
    if as_json:
        echo_json(message_dict(pb.ListForecastsResponse(forecasts=found)) or {"forecasts": []})
    elif found:
        echo_table(_FORECAST_HEADERS, [_row(f) for f in found])
    else:
        click.echo(f"no {enum_label(pb.RunKind.Name(kind), 'RUN_KIND_')} forecasts of {model}")
    if listed.sample:
        click.echo(
            f"note: you are not subscribed to {model}: only its delayed sample of older "
            f"forecasts is shown (`foretell subscribe {model}` for the rest)",
            err=True,
        )


def _follow(
    model: str,
    request: pb.ListForecastsRequest,
    limit: int | None,
    filters: _Filters,
    url: str,
    as_json: bool,
) -> None:
    stream_request = pb.StreamForecastsRequest(
        model=model, symbol=request.symbol, kind=request.kind
    )
    opened = False
    try:
        with connect(url) as client:
            try:
                # The stream opens first, the listing follows: a run recorded in between is
                # in both (shown once, by run id) rather than in neither.
                stream = _open_stream(client, stream_request)
                opened = True
                listed = _list_forecasts(client, request, limit).forecasts
                _follow_stream(model, stream, listed, filters, as_json)
            except grpc.RpcError as error:
                mapped = _stream_error(error, model, opened)
                if mapped is None:
                    raise
                raise mapped from None
    except KeyboardInterrupt:
        return  # Ctrl-C is how following ends


def _follow_stream(
    model: str,
    stream: Iterator[pb.StreamForecastsResponse],
    listed: list[pb.ForecastRecord],
    filters: _Filters,
    as_json: bool,
) -> None:
    shown = {f.run_id for f in listed}
    if as_json:
        for f in reversed(listed):
            click.echo(_json_line(f))
    else:
        echo_table(_FORECAST_HEADERS, [_row(f) for f in reversed(listed)])
    click.echo(
        f"following {model}: new runs appear as they are recorded (Ctrl-C to stop)", err=True
    )
    for message in stream:
        for f in message.forecasts:
            if f.run_id not in shown and filters.keep(f):
                click.echo(_json_line(f) if as_json else "  ".join(_row(f)))
    raise CliError(
        f"the stream of {model}'s forecasts ended: run the command again", Exit.UNREACHABLE
    )


@click.command(short_help="A model's runs, or one run with its log (the model's owner).")
@click.argument("model")
@click.argument("run_id", required=False)
@click.option("--version", "number", type=click.IntRange(min=1), help="Only this version.")
@click.option(
    "--last", type=click.IntRange(min=1), help=f"The newest N runs [default: {DEFAULT_LAST}]."
)
@click.option("--simulated", is_flag=True, help="Simulated replays, not live runs.")
@click.option("--dry", is_flag=True, help="Dry runs, not live runs.")
@url_option
@json_option
def runs(
    model: str,
    run_id: str | None,
    number: int | None,
    last: int | None,
    simulated: bool,
    dry: bool,
    url: str,
    as_json: bool,
) -> None:
    """List MODEL's runs, newest as_of first (live runs by default): how each ended, how long
    it took and how many forecasts it recorded. With RUN_ID, show that run with its detail
    and its captured output. Only the model's owner (and admins) may.

    \b
    Examples:
      foretell runs eurusd-momentum
      foretell runs eurusd-momentum --version 2 --last 50
      foretell runs eurusd-momentum --dry --json
      foretell runs eurusd-momentum 0b7c3f6e-2d1a-4c55-9a0e-5f4e1c2b3a49
    """
    kind = _kind(simulated, dry)
    if run_id is not None:
        if number is not None or last is not None or simulated or dry:
            raise CliError(
                "with a RUN_ID, give no --version, --last, --simulated or --dry", Exit.USAGE
            )
        _show_run(model, run_id, url, as_json)
        return
    limit = last or DEFAULT_LAST
    request = pb.ListRunsRequest(model=model, version=number or 0, kind=kind)
    with connect(url) as client:
        listed = pages(client, client.forecast.ListRuns, request, lambda p: len(p.runs), limit)
        found = [r for page in listed for r in page.runs]
    if as_json:
        echo_json(message_dict(pb.ListRunsResponse(runs=found)) or {"runs": []})
        return
    if not found:
        click.echo(f"no {enum_label(pb.RunKind.Name(kind), 'RUN_KIND_')} runs of {model}")
        return
    echo_table(
        ("AS OF", "VERSION", "OUTCOME", "DURATION", "FORECASTS", "DETAIL", "ID"),
        [
            (
                short_time(r.as_of),
                f"v{r.version}",
                _outcome(r),
                _duration(r),
                r.forecast_count,
                _truncate(r.detail),
                r.id,
            )
            for r in found
        ],
    )


def _outcome(r: pb.Run) -> str:
    return enum_label(pb.RunOutcome.Name(r.outcome), "RUN_OUTCOME_").replace("_", " ")


def _duration(r: pb.Run) -> str:
    return f"{r.duration.ToTimedelta().total_seconds():.2f} s"


def _truncate(text: str) -> str:
    line = " ".join(text.split())  # one line, whatever the detail holds
    return line if len(line) <= DETAIL_WIDTH else line[: DETAIL_WIDTH - 1] + "…"


def _show_run(model: str, run_id: str, url: str, as_json: bool) -> None:
    with connect(url) as client:
        r = client.unary(client.forecast.GetRun, pb.GetRunRequest(model=model, run_id=run_id)).run
    if as_json:
        echo_json(message_dict(r))
        return
    rows = [
        ("run", r.id),
        ("model", f"{r.model} version {r.version}"),
        ("kind", enum_label(pb.RunKind.Name(r.kind), "RUN_KIND_")),
        ("as of", short_time(r.as_of)),
        ("outcome", _outcome(r)),
        ("duration", _duration(r)),
        ("forecasts", str(r.forecast_count)),
        ("recorded", short_time(r.create_time)),
    ]
    for label, value in rows:
        click.echo(f"{label + ':':11}{value}")
    if r.detail:
        click.echo(f"detail:    {r.detail}")
    click.echo("--- log ---")
    click.echo(r.log.rstrip("\n") or "(no output)")
