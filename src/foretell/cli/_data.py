"""Market data commands: `foretell data import`, `data symbols`, `data bars`. Client side: the
CSV is read with the standard library (no pandas), and bars go to DataFeedService as packed
columns."""

from __future__ import annotations

import csv
import dataclasses
import re
from array import array
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from foretell.cli._client import CALL_TIMEOUT_S, Client, connect, rpc_error, unpack_details
from foretell.cli._exit import CliError, Exit
from foretell.cli._output import echo_json, echo_table, json_option, message_dict
from foretell.cli._target import Target, url_option
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as pb_grpc
from foretell.resolutions import BY_ENUM, RESOLUTIONS, TO_ENUM

# The most IngestBars takes per message.
BATCH_BARS = 10_000
# Problems shown for a file that does not parse; the rest are counted.
MAX_SHOWN = 10
TIME_COLUMNS = ("datetime", "date", "time", "timestamp", "open_time", "opentime")
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
_FIELD = re.compile(r"batches\[(\d+)\]\.(\w+)\[(\d+)\]")
# IngestBars' field names, as the file's columns.
_COLUMN_OF = {
    "open_times_unix": "time",
    "opens": "Open",
    "highs": "High",
    "lows": "Low",
    "closes": "Close",
    "volumes": "Volume",
}

resolution_option = click.option(
    "--resolution", type=click.Choice(RESOLUTIONS), default="1h", show_default=True
)


@click.group()
def data() -> None:
    """Market data: the bars every model reads.

    \b
    Examples:
      foretell data symbols
      foretell data bars EURUSD --resolution 1h --last 10
      foretell data import EURUSD.csv --symbol EURUSD --resolution 1h    # admins
    """


# --- CSV --------------------------------------------------------------------------------------


@dataclasses.dataclass
class CsvBars:
    """Bars read from a CSV file, as columns, sorted by time, with each bar's line number."""

    times: array[int]
    opens: array[float]
    highs: array[float]
    lows: array[float]
    closes: array[float]
    volumes: array[float]
    lines: array[int]

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def empty(cls) -> CsvBars:
        o, h, low, c, v = (array("d") for _ in range(5))
        return cls(array("q"), o, h, low, c, v, array("q"))

    def columns(self) -> list[array[Any]]:
        prices = [self.opens, self.highs, self.lows, self.closes, self.volumes]
        return [self.times, *prices, self.lines]

    def slice(self, start: int, stop: int) -> CsvBars:
        return CsvBars(*(column[start:stop] for column in self.columns()))

    def batch(self, start: int) -> pb.Bars:
        end = start + BATCH_BARS
        return pb.Bars(
            open_times_unix=self.times[start:end],
            opens=self.opens[start:end],
            highs=self.highs[start:end],
            lows=self.lows[start:end],
            closes=self.closes[start:end],
            volumes=self.volumes[start:end],
        )


def _header_columns(header: list[str], path: Path | str) -> list[int]:
    """Positions of the time, open, high, low, close and volume columns."""
    names = [name.strip().lower() for name in header]
    missing = [name.title() for name in PRICE_COLUMNS if name not in names]
    if missing:
        raise CliError(
            f"{path}: no {', '.join(missing)} column in the header; expected a time column "
            "and Open, High, Low, Close, Volume (any case)",
            Exit.USAGE,
        )
    timed = [i for i, name in enumerate(names) if name in TIME_COLUMNS]
    # The backtesting package's files (pandas' to_csv) leave the index column unnamed.
    if not timed and names[0] not in PRICE_COLUMNS:
        timed = [0]
    if not timed:
        raise CliError(
            f"{path}: no time column; name one of {', '.join(TIME_COLUMNS)} or put it first",
            Exit.USAGE,
        )
    return [timed[0], *(names.index(name) for name in PRICE_COLUMNS)]


def parse_time(text: str) -> int:
    """ISO 8601 (`2017-04-19 09:00:00`, `2017-04-19T09:00Z`, `2004-08-19`, with or without an
    offset) to seconds since the epoch. Without an offset the time is UTC."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if value.microsecond:
        raise ValueError("not a whole second")
    return int(value.timestamp())


def time_option(text: str | None, name: str) -> timestamp_pb2.Timestamp | None:
    """The value of a --NAME TIME option, or a usage error naming the option."""
    if text is None:
        return None
    try:
        return timestamp_pb2.Timestamp(seconds=parse_time(text))
    except ValueError as error:
        raise CliError(f"--{name} {text!r}: not an ISO 8601 time ({error})", Exit.USAGE) from None


def read_csv(path: Path, *, headerless: bool = False) -> CsvBars:
    """Every row of a CSV file with a header (see `read_rows` for `headerless`), or a
    CliError listing the rows that fail."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as source:
            return read_rows(source, path, headerless=headerless)
    except OSError as error:
        raise CliError(f"cannot read {path}: {error}", Exit.USAGE) from None


_LABELS = ["time", *(name.title() for name in PRICE_COLUMNS)]


def read_rows(source: Iterable[str], path: Path | str, *, headerless: bool = False) -> CsvBars:
    """Every row of CSV text (`path` names it in messages), or a CliError listing the rows
    that fail. With `headerless`, a first row that is a bar (a time, then five numbers) is
    read as one, its columns time, Open, High, Low, Close, Volume."""
    bars = CsvBars.empty()
    problems: list[str] = []
    try:
        reader = csv.reader(source)
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise CliError(f"{path} is empty", Exit.USAGE)
        positions = list(range(len(_LABELS)))
        # Headerless: a first row that reads as a bar is one (and is kept); any other is the
        # header, and when it is not one either, both reasons are given: a feeder's one bad bar
        # is not reported as a missing header alone.
        first = _read_row(bars, header, positions, _LABELS, reader.line_num) if headerless else ""
        if first or not headerless:
            try:
                positions = _header_columns(header, path)
            except CliError as error:
                if not headerless:
                    raise
                header_problem = error.message.removeprefix(f"{path}: ")
                raise CliError(
                    f"{path}: line {reader.line_num} is neither a bar nor a header:\n"
                    f"  as a bar: {first}\n  as a header: {header_problem}",
                    Exit.USAGE,
                ) from None
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            problem = _read_row(bars, row, positions, _LABELS, reader.line_num)
            if problem:
                problems.append(f"line {reader.line_num}: {problem}")
    except (UnicodeDecodeError, csv.Error) as error:
        raise CliError(f"cannot read {path}: {error}", Exit.USAGE) from None
    if problems:
        shown = problems[:MAX_SHOWN]
        if len(problems) > MAX_SHOWN:
            shown.append(f"and {len(problems) - MAX_SHOWN} more")
        raise CliError("\n  ".join([f"{path}: rows that cannot be read:", *shown]), Exit.USAGE)
    if not bars:
        raise CliError(f"{path} has a header but no bars", Exit.USAGE)
    return _sorted(bars, path)


def _read_row(
    bars: CsvBars, row: list[str], positions: list[int], labels: list[str], line: int
) -> str:
    if len(row) <= max(positions):
        return f"{len(row)} columns, not the {max(positions) + 1} needed"
    cells = [row[i] for i in positions]
    try:
        time = parse_time(cells[0])
    except ValueError as error:
        return f"time {cells[0]!r}: {error}"
    values: list[float] = []
    for label, cell in zip(labels[1:], cells[1:], strict=True):
        try:
            values.append(float(cell))
        except ValueError:
            return f"{label} {cell!r} is not a number"
    bars.times.append(time)
    for column, value in zip(bars.columns()[1:6], values, strict=True):
        column.append(value)
    bars.lines.append(line)
    return ""


def _sorted(bars: CsvBars, path: Path | str) -> CsvBars:
    """Oldest first (files are often newest first); two rows for one time are an error."""
    order = sorted(range(len(bars)), key=bars.times.__getitem__)
    if order != list(range(len(bars))):
        bars = CsvBars(*(array(col.typecode, (col[i] for i in order)) for col in bars.columns()))
    for i in range(1, len(bars)):
        if bars.times[i] == bars.times[i - 1]:
            raise CliError(
                f"{path}: lines {bars.lines[i - 1]} and {bars.lines[i]} are both for "
                f"{when(bars.times[i])}",
                Exit.USAGE,
            )
    return bars


# --- import -----------------------------------------------------------------------------------


def ingest_requests(header: pb.IngestBarsHeader, bars: CsvBars) -> Iterator[pb.IngestBarsRequest]:
    yield pb.IngestBarsRequest(header=header)
    for start in range(0, len(bars), BATCH_BARS):
        yield pb.IngestBarsRequest(bars=bars.batch(start))


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    return [
        (v.field, v.description)
        for bad in unpack_details(error, error_details_pb2.BadRequest)
        for v in bad.field_violations
    ]


def _line_of(field: str, bars: CsvBars) -> str:
    """`batches[1].highs[17]` → `line 10019 (High)`: where the server's problem is in the file."""
    match = _FIELD.fullmatch(field)
    if not match:
        return field
    index = int(match[1]) * BATCH_BARS + int(match[3])
    if index >= len(bars):
        return field
    return f"line {bars.lines[index]} ({_COLUMN_OF.get(match[2], match[2])})"


def ingest_error(error: grpc.RpcError, target: Target, bars: CsvBars, path: Path | str) -> CliError:
    code = error.code()
    violations = _violations(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT and violations:
        lines = [f"{_line_of(field, bars)}: {text}" for field, text in violations]
        return CliError("\n  ".join([f"{path}: bars the server refused:", *lines]), Exit.USAGE)
    if code == grpc.StatusCode.ALREADY_EXISTS and violations:
        where = _line_of(violations[0][0], bars).split(" (")[0]
        text = (error.details() or "").replace(
            "ingest with CONFLICT_POLICY_UPSERT", "use --on-conflict upsert"
        )
        return CliError(f"{path} {where}: {text}", Exit.CONFLICT)
    return rpc_error(error, target)


def when(seconds: int | timestamp_pb2.Timestamp, style: str = "%Y-%m-%d %H:%MZ") -> str:
    if isinstance(seconds, timestamp_pb2.Timestamp):
        seconds = seconds.seconds
    return datetime.fromtimestamp(seconds, UTC).strftime(style)


@data.command("import", short_help="Import bars from a CSV file (admins).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--symbol", required=True, help="The symbol, e.g. EURUSD.")
@click.option("--resolution", type=click.Choice(RESOLUTIONS), required=True)
@click.option(
    "--on-conflict",
    type=click.Choice(["reject", "upsert"]),
    default="reject",
    show_default=True,
    help="Bars already stored: refuse the whole import, or overwrite them.",
)
@click.option(
    "--calendar",
    default="",
    metavar="NAME",
    help="The symbol's trading calendar, for its first bars (FX, CRYPTO, XNYS, ...) "
    "[default: by asset class].",
)
@url_option
@json_option
def import_bars(
    file: Path,
    symbol: str,
    resolution: str,
    on_conflict: str,
    calendar: str,
    url: str,
    as_json: bool,
) -> None:
    """Import the bars in FILE, a CSV file with a header: a time column (named datetime, date,
    time or timestamp, or unnamed and first) and Open, High, Low, Close, Volume, in any case
    and order. Times are ISO 8601; without an offset they are UTC. Rows may come in any order.

    The server checks every bar (finite numbers, high and low around open and close, volume
    0 or more, open time on the resolution's grid and in the past) and stores all of them or
    none. Problems are shown with their line in FILE.

    \b
    Examples:
      foretell data import EURUSD.csv --symbol EURUSD --resolution 1h
      foretell data import goog-daily.csv --symbol GOOG --resolution 1d --on-conflict upsert
    """
    bars = read_csv(file)
    header = pb.IngestBarsHeader(
        symbol=symbol.upper(),
        resolution=TO_ENUM[resolution],
        on_conflict=(
            pb.CONFLICT_POLICY_UPSERT if on_conflict == "upsert" else pb.CONFLICT_POLICY_REJECT
        ),
        calendar=calendar.upper(),
    )
    timeout = 2 * CALL_TIMEOUT_S + len(bars) / 5000
    with connect(url) as client:
        stub = pb_grpc.DataFeedServiceStub(client.channel)
        try:
            # A fresh request stream per attempt: a retry after a token refresh resends it all.
            response = client.call(
                lambda metadata: stub.IngestBars(
                    ingest_requests(header, bars), metadata=metadata, timeout=timeout
                )
            )
        except grpc.RpcError as error:
            raise ingest_error(error, client.target, bars, file) from None
    if as_json:
        echo_json(message_dict(response))
        return
    click.echo(
        f"{response.symbol} {resolution}: {response.received} bars from {file} "
        f"({when(response.first_open_time)} to {when(response.last_open_time)}): "
        f"{response.inserted} new, {response.updated} updated, {response.unchanged} unchanged"
    )


# --- symbols and bars -------------------------------------------------------------------------


@data.command("symbols", short_help="List the symbols with bars.")
@url_option
@json_option
def symbols(url: str, as_json: bool) -> None:
    """List every symbol with bars: per resolution, how many and from when to when (open
    times, UTC).

    \b
    Examples:
      foretell data symbols
      foretell data symbols --json
    """
    with connect(url) as client:
        stub = pb_grpc.DataFeedServiceStub(client.channel)
        response = client.unary(stub.ListSymbols, pb.ListSymbolsRequest())
    if as_json:
        echo_json(message_dict(response))
        return
    if not response.symbols:
        click.echo("no market data yet: an admin loads it with `foretell data import`")
        return
    rows = [
        (
            info.symbol,
            info.calendar,
            BY_ENUM.get(s.resolution, "?"),
            s.bar_count,
            when(s.first_open_time),
            when(s.last_open_time),
        )
        for info in response.symbols
        for s in info.series
    ]
    echo_table(["SYMBOL", "CALENDAR", "RES", "BARS", "FIRST", "LAST"], rows)


@data.command("calendar", short_help="Set a symbol's trading calendar (admins).")
@click.argument("symbol")
@click.argument("calendar")
@url_option
@json_option
def set_calendar(symbol: str, calendar: str, url: str, as_json: bool) -> None:
    """Set SYMBOL's trading calendar: FX (24/5, Sunday 17:00 to Friday 17:00 New York), CRYPTO
    (24/7), or an exchange code such as XNYS, XLON, XETR. The calendar decides which bars
    exist, when live models run and how performance is measured.

    \b
    Examples:
      foretell data calendar GOOG XNYS
      foretell data calendar BTCUSD CRYPTO
    """
    request = pb.SetSymbolCalendarRequest(symbol=symbol.upper(), calendar=calendar.upper())
    with connect(url) as client:
        stub = pb_grpc.DataFeedServiceStub(client.channel)
        response = client.unary(stub.SetSymbolCalendar, request)
    if as_json:
        echo_json(message_dict(response))
        return
    state = "set" if response.changed else "unchanged"
    click.echo(f"{response.symbol}: calendar {response.calendar} ({state})")


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def fetch_bars(client: Client, request: pb.GetBarsRequest) -> CsvBars:
    """Every bar GetBars streams for `request`, or an error if the stream ends early."""
    stub = pb_grpc.DataFeedServiceStub(client.channel)
    got = CsvBars.empty()
    complete = False
    for response in client.stream(stub.GetBars, request):
        b = response.bars
        got.times.extend(b.open_times_unix)
        for column, values in zip(
            got.columns()[1:6], (b.opens, b.highs, b.lows, b.closes, b.volumes), strict=True
        ):
            column.extend(values)
        complete = response.last
    if not complete:
        raise CliError("the bars stopped arriving before the last one: try again", Exit.ERROR)
    return got


@data.command("bars", short_help="Show the bars of a symbol.")
@click.argument("symbol")
@resolution_option
@click.option("--start", metavar="TIME", help="Bars opening at or after TIME (ISO 8601, UTC).")
@click.option("--end", metavar="TIME", help="Bars opening before TIME.")
@click.option("--last", type=click.IntRange(min=1), help="The latest N bars [default: 20].")
@click.option("--first", type=click.IntRange(min=1), help="The earliest N bars instead.")
@click.option("--all", "every", is_flag=True, help="Every bar in the range.")
@url_option
@json_option
def bars(
    symbol: str,
    resolution: str,
    start: str | None,
    end: str | None,
    last: int | None,
    first: int | None,
    every: bool,
    url: str,
    as_json: bool,
) -> None:
    """Show the bars of SYMBOL, oldest first: by default the latest 20.

    \b
    Examples:
      foretell data bars EURUSD --last 10
      foretell data bars GOOG --resolution 1d --start 2013-01-01 --end 2013-02-01 --all
      foretell data bars EURUSD --first 5 --json
    """
    chosen = [name for name, on in (("--last", last), ("--first", first), ("--all", every)) if on]
    if len(chosen) > 1:
        raise CliError(f"use one of {' and '.join(chosen)}", Exit.USAGE)
    request = pb.GetBarsRequest(
        symbol=symbol.upper(),
        resolution=TO_ENUM[resolution],
        start_time=time_option(start, "start"),
        end_time=time_option(end, "end"),
        limit=0 if every else first or last or 20,
        latest=not first,
    )
    with connect(url) as client:
        got = fetch_bars(client, request)
    rows = list(zip(*got.columns()[:6], strict=True))
    if as_json:
        keys = ("openTime", "open", "high", "low", "close", "volume")
        echo_json(
            {
                "symbol": request.symbol,
                "resolution": resolution,
                "bars": [
                    dict(zip(keys, (when(row[0], "%Y-%m-%dT%H:%M:%SZ"), *row[1:]), strict=True))
                    for row in rows
                ],
            }
        )
        return
    if not rows:
        click.echo(f"no {resolution} bars of {request.symbol} in that range")
        return
    echo_table(
        ["OPEN TIME", "OPEN", "HIGH", "LOW", "CLOSE", "VOLUME"],
        [(when(row[0]), *(_number(x) for x in row[1:])) for row in rows],
    )
