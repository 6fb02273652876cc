"""DataFeedService against the real stack: ingest (admins only), listing, streaming reads in
packed batches, REST through Envoy, the demo loader on the real EURUSD data, and the
`foretell data` and `foretell demo` commands."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import math
import subprocess
import sys
import uuid
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.auth.policy import Role
from foretell.cli._exit import Exit
from foretell.common.v1 import common_pb2
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as pb_grpc
from foretell.demo import load_demo_bars
from foretell.runtime import Resources
from foretell.services.account._queries import create_user
from foretell.settings import Settings
from tests._envoy import Envoy
from tests._errors import field_violations
from tests.conftest import FORETELL, PASSWORD, SignedIn, SignUp, foretell_env, unique_email
from tests.test_cli import _BLOCKING_MAIN, SERVER_ONLY, _fails, _foretell, _ok

H1 = common_pb2.RESOLUTION_1H
D1 = common_pb2.RESOLUTION_1D
HOUR = 3600
# A Monday, long closed.
T0 = int(datetime(2020, 1, 6, tzinfo=UTC).timestamp())
# The file behind backtesting.test.EURUSD, found without importing the package.
_BACKTESTING = importlib.util.find_spec("backtesting")
assert _BACKTESTING is not None and _BACKTESTING.submodule_search_locations
EURUSD_CSV = Path(_BACKTESTING.submodule_search_locations[0]) / "test" / "EURUSD.csv"

Metadata = tuple[tuple[str, str], ...]
if TYPE_CHECKING:
    # Only in the type stubs.
    Stub = pb_grpc.DataFeedServiceAsyncStub


# --- helpers ----------------------------------------------------------------------------------


def new_symbol() -> str:
    return f"T{uuid.uuid4().hex[:10].upper()}"


def hourly(n: int, start: int = T0, base: float = 1.1) -> pb.Bars:
    """n consistent hourly bars from `start`, prices drifting with i."""
    opens = [base + 0.001 * (i % 17) for i in range(n)]
    closes = [o + 0.0005 for o in opens]
    return pb.Bars(
        open_times_unix=[start + i * HOUR for i in range(n)],
        opens=opens,
        highs=[c + 0.001 for c in closes],
        lows=[o - 0.001 for o in opens],
        closes=closes,
        volumes=[float(100 + i) for i in range(n)],
    )


def part(bars: pb.Bars, start: int, stop: int) -> pb.Bars:
    return pb.Bars(
        open_times_unix=bars.open_times_unix[start:stop],
        opens=bars.opens[start:stop],
        highs=bars.highs[start:stop],
        lows=bars.lows[start:stop],
        closes=bars.closes[start:stop],
        volumes=bars.volumes[start:stop],
    )


def requests(
    symbol: str,
    batches: Sequence[pb.Bars],
    resolution: common_pb2.Resolution.ValueType = H1,
    on_conflict: pb.ConflictPolicy.ValueType = pb.CONFLICT_POLICY_REJECT,
) -> list[pb.IngestBarsRequest]:
    header = pb.IngestBarsHeader(symbol=symbol, resolution=resolution, on_conflict=on_conflict)
    return [
        pb.IngestBarsRequest(header=header),
        *(pb.IngestBarsRequest(bars=b) for b in batches),
    ]


async def ingest(
    stub: Stub, who: Metadata, symbol: str, *batches: pb.Bars, **options: int
) -> pb.IngestBarsResponse:
    return await stub.IngestBars(
        iter(requests(symbol, batches, **options)),  # type: ignore[arg-type]
        metadata=who,
    )


async def get_bars(stub: Stub, who: Metadata, **fields: object) -> list[pb.GetBarsResponse]:
    """GetBars, 1h unless told otherwise; datetimes become Timestamps."""
    values = {
        key: Timestamp(seconds=int(value.timestamp())) if isinstance(value, datetime) else value
        for key, value in fields.items()
    }
    request = pb.GetBarsRequest(**{"resolution": H1, **values})  # type: ignore[arg-type]
    return [response async for response in stub.GetBars(request, metadata=who)]


def joined(responses: Sequence[pb.GetBarsResponse]) -> pb.Bars:
    whole = pb.Bars()
    for response in responses:
        whole.MergeFrom(response.bars)
    return whole


async def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def datafeed(channel: aio.Channel) -> Stub:
    return pb_grpc.DataFeedServiceStub(channel)


@pytest.fixture
async def admin(resources: Resources, account: account_grpc.AccountServiceAsyncStub) -> SignedIn:
    email = unique_email("ops")
    await create_user(
        resources.db,
        email=email,
        password=PASSWORD,
        display_name="Ops",
        role=Role.ADMIN,
        now=resources.clock(),
    )
    login = await account.Login(account_pb.LoginRequest(email=email, password=PASSWORD))
    return SignedIn(login.user, login.tokens, email, PASSWORD)


# --- ingest and read --------------------------------------------------------------------------


async def test_ingested_bars_are_listed_and_streamed_back_in_packed_batches(
    datafeed: Stub, admin: SignedIn, sign_up: SignUp
) -> None:
    symbol, bars = new_symbol(), hourly(2500)
    done = await ingest(
        datafeed, admin.metadata, symbol, part(bars, 0, 1000), part(bars, 1000, 2500)
    )
    assert (done.symbol, done.resolution) == (symbol, H1)
    assert (done.received, done.inserted, done.updated, done.unchanged) == (2500, 2500, 0, 0)
    assert done.first_open_time.seconds == T0
    assert done.last_open_time.seconds == T0 + 2499 * HOUR

    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    listed = await datafeed.ListSymbols(pb.ListSymbolsRequest(), metadata=reader.metadata)
    [info] = [s for s in listed.symbols if s.symbol == symbol]
    [series] = info.series
    assert (series.resolution, series.bar_count) == (H1, 2500)
    assert series.first_open_time.seconds == T0
    assert series.last_open_time.seconds == T0 + 2499 * HOUR
    names = [s.symbol for s in listed.symbols]
    assert names == sorted(names)

    responses = await get_bars(datafeed, reader.metadata, symbol=symbol)
    assert [len(r.bars.open_times_unix) for r in responses] == [1000, 1000, 500]
    assert [r.last for r in responses] == [False, False, True]
    assert joined(responses) == bars


def unpacked(responses: Sequence[pb.GetBarsResponse]) -> pb.Bars:
    """The packed pages of a GetBars stream, decoded and joined (little-endian 8-byte values)."""
    whole = pb.Bars()
    for response in responses:
        assert not response.HasField("bars")
        p = response.packed_bars
        whole.open_times_unix.extend(array_of("q", p.open_times_unix))
        for name in ("opens", "highs", "lows", "closes", "volumes"):
            getattr(whole, name).extend(array_of("d", getattr(p, name)))
    return whole


def array_of(typecode: str, raw: bytes) -> array[Any]:
    values = array(typecode, raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


async def test_packed_reads_carry_the_same_bars_as_raw_columns_in_larger_pages(
    datafeed: Stub, admin: SignedIn
) -> None:
    symbol, bars = new_symbol(), hourly(12_500)
    await ingest(
        datafeed, admin.metadata, symbol, part(bars, 0, 10_000), part(bars, 10_000, 12_500)
    )
    packed = await get_bars(datafeed, admin.metadata, symbol=symbol, packed=True)
    assert [(len(r.packed_bars.closes) // 8, r.last) for r in packed] == [
        (10_000, False),
        (2_500, True),
    ]
    assert unpacked(packed) == bars
    latest = await get_bars(
        datafeed, admin.metadata, symbol=symbol, packed=True, limit=3, latest=True
    )
    assert unpacked(latest) == part(bars, 12_497, 12_500)
    # An empty range still ends with a `last` message, its columns empty.
    empty = await get_bars(
        datafeed,
        admin.metadata,
        symbol=symbol,
        packed=True,
        start_time=datetime(2040, 1, 1, tzinfo=UTC),
    )
    assert [(r.packed_bars.closes, r.last) for r in empty] == [(b"", True)]


async def test_a_series_at_two_resolutions_is_listed_finest_first(
    datafeed: Stub, admin: SignedIn
) -> None:
    symbol = new_symbol()
    daily = hourly(3)
    daily.open_times_unix[:] = [T0 + i * 86400 for i in range(3)]
    await ingest(datafeed, admin.metadata, symbol, daily, resolution=D1)
    await ingest(datafeed, admin.metadata, symbol, hourly(5))
    listed = await datafeed.ListSymbols(pb.ListSymbolsRequest(), metadata=admin.metadata)
    [info] = [s for s in listed.symbols if s.symbol == symbol]
    assert [(s.resolution, s.bar_count) for s in info.series] == [(H1, 5), (D1, 3)]


async def test_ranges_are_end_exclusive_and_limits_take_either_end(
    datafeed: Stub, admin: SignedIn
) -> None:
    symbol, bars = new_symbol(), hourly(48)
    await ingest(datafeed, admin.metadata, symbol, bars)
    who = admin.metadata

    def times(responses: list[pb.GetBarsResponse]) -> list[int]:
        return [(t - T0) // HOUR for t in joined(responses).open_times_unix]

    start, end = (
        datetime.fromtimestamp(T0 + 10 * HOUR, UTC),
        datetime.fromtimestamp(T0 + 20 * HOUR, UTC),
    )
    window = await get_bars(datafeed, who, symbol=symbol, start_time=start, end_time=end)
    assert times(window) == list(range(10, 20))
    assert times(await get_bars(datafeed, who, symbol=symbol, limit=5)) == [0, 1, 2, 3, 4]
    latest = await get_bars(datafeed, who, symbol=symbol, limit=5, latest=True)
    assert times(latest) == [43, 44, 45, 46, 47]
    before_end = await get_bars(datafeed, who, symbol=symbol, end_time=end, limit=3, latest=True)
    assert times(before_end) == [17, 18, 19]
    assert times(await get_bars(datafeed, who, symbol=symbol, limit=100, latest=True)) == list(
        range(48)
    )
    # A range with no bars still ends with a `last` message.
    empty = await get_bars(
        datafeed, who, symbol=symbol, start_time=datetime(2030, 1, 1, tzinfo=UTC)
    )
    assert [(len(r.bars.open_times_unix), r.last) for r in empty] == [(0, True)]


async def test_exactly_one_page_of_bars_is_one_message(datafeed: Stub, admin: SignedIn) -> None:
    symbol = new_symbol()
    await ingest(datafeed, admin.metadata, symbol, hourly(1000))
    responses = await get_bars(datafeed, admin.metadata, symbol=symbol)
    assert [(len(r.bars.opens), r.last) for r in responses] == [(1000, True)]
    limited = await get_bars(datafeed, admin.metadata, symbol=symbol, limit=1000)
    assert [(len(r.bars.opens), r.last) for r in limited] == [(1000, True)]


async def test_a_symbol_without_bars_is_not_found(datafeed: Stub, admin: SignedIn) -> None:
    symbol = new_symbol()
    error = await rpc_error(get_bars(datafeed, admin.metadata, symbol=symbol))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    await ingest(datafeed, admin.metadata, symbol, hourly(2))
    error = await rpc_error(get_bars(datafeed, admin.metadata, symbol=symbol, resolution=D1))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no 1d bars" in (error.details() or "")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"symbol": "eur/usd"}, "symbol"),
        ({"symbol": ""}, "symbol"),
        ({"resolution": common_pb2.RESOLUTION_UNSPECIFIED}, "resolution"),
        ({"limit": -1}, "limit"),
        (
            {
                "start_time": datetime(2020, 2, 1, tzinfo=UTC),
                "end_time": datetime(2020, 1, 1, tzinfo=UTC),
            },
            "end_time",
        ),
    ],
)
async def test_bad_reads_name_the_field(
    datafeed: Stub, admin: SignedIn, fields: dict[str, object], field: str
) -> None:
    error = await rpc_error(get_bars(datafeed, admin.metadata, **{"symbol": "EURUSD", **fields}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error)


# --- validation -------------------------------------------------------------------------------


# One value changed: (column, index, the new value computed from the good bars).
_BAD_VALUES: dict[str, tuple[str, int, Callable[[pb.Bars], float]]] = {
    "misaligned": ("open_times_unix", 3, lambda b: b.open_times_unix[3] + 60),
    "high_below_low": ("highs", 4, lambda b: b.lows[4] - 0.01),
    "high_below_close": ("highs", 4, lambda b: b.closes[4] - 0.0001),
    "low_above_open": ("lows", 5, lambda b: b.opens[5] + 0.0001),
    "nan": ("closes", 6, lambda b: math.nan),
    "infinite_volume": ("volumes", 2, lambda b: math.inf),
    "negative_volume": ("volumes", 2, lambda b: -1.0),
    "not_increasing": ("open_times_unix", 7, lambda b: b.open_times_unix[6]),
}


def _broken(change: str) -> list[pb.Bars]:
    """Batches with one problem; the field its violation names is in the test table."""
    bars = hourly(10)
    if change in _BAD_VALUES:
        column, index, value = _BAD_VALUES[change]
        getattr(bars, column)[index] = value(bars)
    elif change == "unequal":
        del bars.volumes[-1]
    elif change == "future":
        bars.open_times_unix[:] = [T0 + 100 * 365 * 86400 + i * HOUR for i in range(10)]
    elif change == "across_batches":
        return [part(bars, 0, 5), hourly(5, start=T0 + 2 * HOUR)]
    elif change == "too_big":
        return [hourly(10_001)]
    elif change == "empty_batch":
        return [pb.Bars()]
    return [bars]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ("misaligned", "batches[0].open_times_unix[3]", "not on the 1h grid"),
        ("high_below_low", "batches[0].highs[4]", "below max(open, close)"),
        ("high_below_close", "batches[0].highs[4]", "below max(open, close)"),
        ("low_above_open", "batches[0].lows[5]", "above min(open, close)"),
        ("nan", "batches[0].closes[6]", "finite"),
        ("infinite_volume", "batches[0].volumes[2]", "finite"),
        ("negative_volume", "batches[0].volumes[2]", "negative"),
        ("unequal", "batches[0].volumes", "9 values for 10 open times"),
        ("not_increasing", "batches[0].open_times_unix[7]", "strictly increase"),
        ("across_batches", "batches[1].open_times_unix[0]", "strictly increase"),
        ("future", "batches[0].open_times_unix[0]", "only closed bars"),
        ("too_big", "batches[0].open_times_unix", "1 to 10,000 bars"),
        ("empty_batch", "batches[0].open_times_unix", "1 to 10,000 bars"),
    ],
)
async def test_a_bad_bar_refuses_the_whole_ingest_with_a_field_violation(
    datafeed: Stub, admin: SignedIn, change: str, field: str, words: str
) -> None:
    symbol = new_symbol()
    error = await rpc_error(ingest(datafeed, admin.metadata, symbol, *_broken(change)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert field in violations, violations
    assert words in violations[field]
    missing = await rpc_error(get_bars(datafeed, admin.metadata, symbol=symbol))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_every_problem_is_listed_up_to_a_cap(datafeed: Stub, admin: SignedIn) -> None:
    bars = hourly(100)
    bars.volumes[:] = [-1.0] * 100
    error = await rpc_error(ingest(datafeed, admin.metadata, new_symbol(), bars))
    violations = field_violations(error)
    assert len(violations) == 21
    assert violations["bars"] == "80 more problems not listed"


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([pb.IngestBarsRequest(bars=hourly(1))], "header"),
        ([], "header"),
        (requests("lower", [hourly(1)]), "header.symbol"),
        (
            requests("X", [hourly(1)], resolution=common_pb2.RESOLUTION_UNSPECIFIED),
            "header.resolution",
        ),
        (requests("X", []), "batches"),
        ([*requests("X", [hourly(1)]), *requests("X", [])], "batches[1]"),
    ],
)
async def test_a_malformed_ingest_stream_names_the_problem(
    datafeed: Stub, admin: SignedIn, messages: list[pb.IngestBarsRequest], field: str
) -> None:
    error = await rpc_error(datafeed.IngestBars(iter(messages), metadata=admin.metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error)


# --- duplicates -------------------------------------------------------------------------------


async def test_duplicates_are_rejected_whole_or_upserted(datafeed: Stub, admin: SignedIn) -> None:
    symbol, who = new_symbol(), admin.metadata
    original = hourly(10)
    await ingest(datafeed, who, symbol, original)
    # Bars 8..12: two stored, three new.
    overlap = hourly(5, start=T0 + 8 * HOUR, base=1.2)

    for policy in (pb.CONFLICT_POLICY_REJECT, pb.CONFLICT_POLICY_UNSPECIFIED):
        error = await rpc_error(ingest(datafeed, who, symbol, overlap, on_conflict=policy))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "2020-01-06T08:00:00Z and 1 more" in (error.details() or "")
        assert "batches[0].open_times_unix[0]" in field_violations(error)
    # Nothing was written: neither the new bars nor new values.
    assert joined(await get_bars(datafeed, who, symbol=symbol)) == original

    # The first duplicate is located in the batch it came in.
    error = await rpc_error(
        ingest(
            datafeed,
            who,
            symbol,
            hourly(3, start=T0 - 3 * HOUR),
            hourly(2, start=T0 + 9 * HOUR),
        )
    )
    assert "batches[1].open_times_unix[0]" in field_violations(error)

    done = await ingest(datafeed, who, symbol, overlap, on_conflict=pb.CONFLICT_POLICY_UPSERT)
    assert (done.received, done.inserted, done.updated, done.unchanged) == (5, 3, 2, 0)
    stored = joined(await get_bars(datafeed, who, symbol=symbol))
    assert len(stored.open_times_unix) == 13
    assert list(stored.opens[8:]) == list(overlap.opens)

    again = await ingest(datafeed, who, symbol, overlap, on_conflict=pb.CONFLICT_POLICY_UPSERT)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 5)


async def test_concurrent_ingests_of_one_series_count_correctly(
    datafeed: Stub, admin: SignedIn
) -> None:
    symbol = new_symbol()
    upsert = pb.CONFLICT_POLICY_UPSERT
    results = await asyncio.gather(
        *(
            ingest(datafeed, admin.metadata, symbol, hourly(500), on_conflict=upsert)
            for _ in range(4)
        )
    )
    assert sorted(r.inserted for r in results) == [0, 0, 0, 500]
    assert sum(r.unchanged for r in results) == 1500


# --- access -----------------------------------------------------------------------------------


async def test_only_admins_ingest(datafeed: Stub, sign_up: SignUp) -> None:
    for role in (account_pb.ROLE_PROVIDER, account_pb.ROLE_SUBSCRIBER):
        who = await sign_up(role)
        error = await rpc_error(ingest(datafeed, who.metadata, new_symbol(), hourly(1)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await rpc_error(ingest(datafeed, (), new_symbol(), hourly(1)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_subscribers_and_api_keys_read(
    datafeed: Stub,
    admin: SignedIn,
    sign_up: SignUp,
    account: account_grpc.AccountServiceAsyncStub,
) -> None:
    symbol = new_symbol()
    await ingest(datafeed, admin.metadata, symbol, hourly(3))
    trader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    key = await account.CreateApiKey(
        account_pb.CreateApiKeyRequest(name="feed"), metadata=trader.metadata
    )
    with_key = (("authorization", f"Bearer {key.secret}"),)
    for who in (trader.metadata, with_key):
        listed = await datafeed.ListSymbols(pb.ListSymbolsRequest(), metadata=who)
        assert symbol in [s.symbol for s in listed.symbols]
        assert len(joined(await get_bars(datafeed, who, symbol=symbol)).opens) == 3
    error = await rpc_error(get_bars(datafeed, (), symbol=symbol))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    # An API key reads, but never writes, even an admin's.
    admin_key = await account.CreateApiKey(
        account_pb.CreateApiKeyRequest(name="ops"), metadata=admin.metadata
    )
    error = await rpc_error(
        ingest(datafeed, (("authorization", f"Bearer {admin_key.secret}"),), symbol, hourly(1))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


# --- REST -------------------------------------------------------------------------------------


@pytest.fixture
async def http(envoy: Envoy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=20) as client:
        yield client


async def test_symbols_and_bars_over_rest(
    http: httpx.AsyncClient, datafeed: Stub, admin: SignedIn
) -> None:
    symbol = new_symbol()
    await ingest(datafeed, admin.metadata, symbol, hourly(1500))
    auth = {"authorization": f"Bearer {admin.tokens.access_token}"}

    listed = await http.get("/v1/symbols", headers=auth)
    assert listed.status_code == 200, listed.text
    [info] = [s for s in listed.json()["symbols"] if s["symbol"] == symbol]
    assert info["series"] == [
        {
            "resolution": "RESOLUTION_1H",
            "barCount": "1500",
            "firstOpenTime": "2020-01-06T00:00:00Z",
            "lastOpenTime": f"{datetime.fromtimestamp(T0 + 1499 * HOUR, UTC):%Y-%m-%dT%H:%M:%SZ}",
        }
    ]

    whole = await http.get(
        f"/v1/symbols/{symbol}/bars", params={"resolution": "RESOLUTION_1H"}, headers=auth
    )
    assert whole.status_code == 200, whole.text
    batches = whole.json()
    assert [len(b["bars"]["opens"]) for b in batches] == [1000, 500]
    assert [b.get("last", False) for b in batches] == [False, True]
    assert batches[0]["bars"]["openTimesUnix"][0] == str(T0)

    window = await http.get(
        f"/v1/symbols/{symbol}/bars",
        params={
            "resolution": "RESOLUTION_1H",
            "startTime": "2020-01-06T10:00:00Z",
            "endTime": "2020-01-06T20:00:00Z",
            "limit": "4",
        },
        headers=auth,
    )
    assert window.status_code == 200, window.text
    [only] = window.json()
    assert only["bars"]["openTimesUnix"] == [str(T0 + h * HOUR) for h in range(10, 14)]
    assert only["last"] is True

    # Query parameters by their proto names work too.
    latest = await http.get(
        f"/v1/symbols/{symbol}/bars",
        params={
            "resolution": "RESOLUTION_1H",
            "limit": 2,
            "latest": "true",
            "end_time": "2099-01-01T00:00:00Z",
        },
        headers=auth,
    )
    assert latest.json()[0]["bars"]["openTimesUnix"] == [
        str(T0 + 1498 * HOUR),
        str(T0 + 1499 * HOUR),
    ]


async def test_rest_errors_are_plain_statuses(http: httpx.AsyncClient, admin: SignedIn) -> None:
    auth = {"authorization": f"Bearer {admin.tokens.access_token}"}
    assert (await http.get("/v1/symbols")).status_code == 401
    missing = await http.get(
        f"/v1/symbols/{new_symbol()}/bars", params={"resolution": "RESOLUTION_1H"}, headers=auth
    )
    assert missing.status_code == 404, missing.text
    bad = await http.get("/v1/symbols/EURUSD/bars", params={"limit": "-1"}, headers=auth)
    assert bad.status_code == 400
    fields = {v["field"] for v in bad.json()["details"][1]["fieldViolations"]}
    assert fields == {"resolution", "limit"}


# --- the demo ---------------------------------------------------------------------------------


async def test_the_demo_loads_the_real_eurusd_and_goog_bars_once(
    resources: Resources, datafeed: Stub, admin: SignedIn
) -> None:
    import backtesting.test as shipped  # type: ignore[import-untyped]

    await load_demo_bars(resources.db)
    again = await load_demo_bars(resources.db)
    by_symbol = {r.symbol: r for r in again}
    eurusd, goog = by_symbol["EURUSD"], by_symbol["GOOG"]
    assert (eurusd.resolution, eurusd.received, eurusd.inserted, eurusd.updated) == (
        "1h",
        5000,
        0,
        0,
    )
    assert eurusd.unchanged == 5000
    assert eurusd.first_open_time == datetime(2017, 4, 19, 9, tzinfo=UTC)
    assert eurusd.last_open_time == datetime(2018, 2, 7, 15, tzinfo=UTC)
    assert (goog.resolution, goog.received, goog.unchanged) == ("1d", 2148, 2148)

    stored = joined(await get_bars(datafeed, admin.metadata, symbol="EURUSD"))
    assert len(stored.open_times_unix) == 5000
    frame = shipped.EURUSD
    assert list(stored.closes) == frame["Close"].astype(float).tolist()
    assert list(stored.volumes) == frame["Volume"].astype(float).tolist()
    daily = joined(await get_bars(datafeed, admin.metadata, symbol="GOOG", resolution=D1))
    assert len(daily.opens) == 2148
    assert all(t % 86400 == 0 for t in daily.open_times_unix)


def _demo(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # The bars only matter here; tests/test_demo.py covers the model and its replay.
        [FORETELL, "demo", "--replay-slots", "0"],
        env=foretell_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_foretell_demo_prints_what_it_loaded(settings: Settings) -> None:
    first = await asyncio.to_thread(_demo, settings)
    assert first.returncode == 0, first.stderr
    second = await asyncio.to_thread(_demo, settings)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert lines[0] == "demo market data loaded (open times UTC):"
    assert lines[1].split() == [
        "SYMBOL",
        "RES",
        "BARS",
        "FIRST",
        "LAST",
        "NEW",
        "UPDATED",
        "UNCHANGED",
    ]
    assert lines[2].split() == [
        "EURUSD",
        "1h",
        "5000",
        "2017-04-19",
        "09:00Z",
        "2018-02-07",
        "15:00Z",
        "0",
        "0",
        "5000",
    ]
    assert lines[3].split()[:3] == ["GOOG", "1d", "2148"]


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_url(envoy: Envoy) -> str:
    return f"http://{envoy.grpc_target}"


async def _cli(
    config: Path, url: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_foretell, config, url, *args, stdin=stdin)


async def _cli_login(config: Path, url: str, who: SignedIn) -> None:
    _ok(
        await _cli(
            config,
            url,
            "login",
            "--email",
            who.email,
            "--password-stdin",
            stdin=f"{who.password}\n",
        )
    )


def _write_csv(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str]) -> Path:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _rows(bars: pb.Bars) -> list[tuple[str, float, float, float, float, float]]:
    return [
        (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S"), o, h, low, c, v)
        for t, o, h, low, c, v in zip(
            bars.open_times_unix,
            bars.opens,
            bars.highs,
            bars.lows,
            bars.closes,
            bars.volumes,
            strict=True,
        )
    ]


async def test_cli_imports_the_real_eurusd_csv_end_to_end(
    tmp_path: Path, cli_url: str, admin: SignedIn, datafeed: Stub
) -> None:
    source = EURUSD_CSV
    symbol = f"EURUSD-{uuid.uuid4().hex[:6].upper()}"
    config = tmp_path / "config"
    await _cli_login(config, cli_url, admin)
    args = ("data", "import", str(source), "--symbol", symbol.lower(), "--resolution", "1h")
    done = _ok(await _cli(config, cli_url, *args))
    assert done.stdout.strip() == (
        f"{symbol} 1h: 5000 bars from {source} (2017-04-19 09:00Z to 2018-02-07 15:00Z): "
        "5000 new, 0 updated, 0 unchanged"
    )
    # Again: refused whole, pointing at the first line of the file.
    again = _fails(await _cli(config, cli_url, *args), Exit.CONFLICT)
    assert again.stderr == (
        f"error: {source} line 2: {symbol} 1h already has a bar opening at 2017-04-19T09:00:00Z "
        "and 4999 more of the 5000 sent; nothing was written; to overwrite stored bars, use "
        "--on-conflict upsert\n"
    )
    upserted = _ok(await _cli(config, cli_url, *args, "--on-conflict", "upsert", "--json"))
    document = json.loads(upserted.stdout)
    assert document["unchanged"] == "5000"
    assert document["symbol"] == symbol

    listed = _ok(await _cli(config, cli_url, "data", "symbols"))
    assert [symbol, "1h", "5000", "2017-04-19", "09:00Z", "2018-02-07", "15:00Z"] in [
        line.split() for line in listed.stdout.splitlines()
    ]
    as_json = json.loads(_ok(await _cli(config, cli_url, "data", "symbols", "--json")).stdout)
    assert symbol in [s["symbol"] for s in as_json["symbols"]]

    last = _ok(await _cli(config, cli_url, "data", "bars", symbol, "--last", "2"))
    assert last.stdout.splitlines() == [
        "OPEN TIME          OPEN     HIGH     LOW      CLOSE    VOLUME",
        "2018-02-07 14:00Z  1.23374  1.23452  1.23238  1.23426  4065",
        "2018-02-07 15:00Z  1.23427  1.23444  1.22904  1.22904  6143",
    ]
    first = json.loads(
        _ok(await _cli(config, cli_url, "data", "bars", symbol, "--first", "1", "--json")).stdout
    )
    assert first["bars"] == [
        {
            "openTime": "2017-04-19T09:00:00Z",
            "open": 1.0716,
            "high": 1.0722,
            "low": 1.07083,
            "close": 1.07219,
            "volume": 1413.0,
        }
    ]


async def test_cli_import_reads_headers_in_any_case_and_order_and_sorts_rows(
    tmp_path: Path, cli_url: str, admin: SignedIn, datafeed: Stub
) -> None:
    bars = hourly(30)
    rows = [[r[0] + "Z", r[5], r[4], r[3], r[2], r[1]] for r in _rows(bars)]
    rows.reverse()
    path = _write_csv(tmp_path / "x.csv", rows, ["Date", "volume", "CLOSE", "low", "High", "open"])
    config, symbol = tmp_path / "config", new_symbol()
    await _cli_login(config, cli_url, admin)
    _ok(
        await _cli(
            config, cli_url, "data", "import", str(path), "--symbol", symbol, "--resolution", "1h"
        )
    )
    assert joined(await get_bars(datafeed, admin.metadata, symbol=symbol)) == bars


async def test_cli_import_points_at_the_lines_with_problems(
    tmp_path: Path, cli_url: str, admin: SignedIn
) -> None:
    config, symbol = tmp_path / "config", new_symbol()
    await _cli_login(config, cli_url, admin)
    header = ["", "Open", "High", "Low", "Close", "Volume"]
    unreadable = _write_csv(
        tmp_path / "bad.csv",
        [
            ["2020-01-06 00:00:00", 1, 2, 0.5, 1.5, 10],
            ["yesterday", 1, 2, 0.5, 1.5, 10],
            ["2020-01-06 02:00:00", "x", 2, 0.5, 1.5, 10],
        ],
        header,
    )
    result = _fails(
        await _cli(
            config,
            cli_url,
            "data",
            "import",
            str(unreadable),
            "--symbol",
            symbol,
            "--resolution",
            "1h",
        ),
        Exit.USAGE,
    )
    assert "line 3: time 'yesterday'" in result.stderr
    assert "line 4: Open 'x' is not a number" in result.stderr

    bars = hourly(12_000)
    bars.highs[10_005] = bars.lows[10_005] - 1
    refused = _write_csv(tmp_path / "refused.csv", _rows(bars), header)
    result = _fails(
        await _cli(
            config,
            cli_url,
            "data",
            "import",
            str(refused),
            "--symbol",
            symbol,
            "--resolution",
            "1h",
        ),
        Exit.USAGE,
    )
    # Bar 10,005 is in the second batch; the file has a header line.
    assert "line 10007 (High): high" in result.stderr
    missing = _write_csv(tmp_path / "m.csv", [], ["time", "open", "high", "low", "close"])
    result = _fails(
        await _cli(
            config,
            cli_url,
            "data",
            "import",
            str(missing),
            "--symbol",
            symbol,
            "--resolution",
            "1h",
        ),
        Exit.USAGE,
    )
    assert "no Volume column" in result.stderr


async def test_cli_import_by_a_provider_is_denied(
    tmp_path: Path, cli_url: str, sign_up: SignUp
) -> None:
    provider = await sign_up()
    config = tmp_path / "config"
    await _cli_login(config, cli_url, provider)
    path = _write_csv(
        tmp_path / "x.csv", _rows(hourly(2)), ["datetime", "open", "high", "low", "close", "volume"]
    )
    result = _fails(
        await _cli(
            config, cli_url, "data", "import", str(path), "--symbol", "X", "--resolution", "1h"
        ),
        Exit.DENIED,
    )
    assert "may not call this method" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["data", "symbols", "--url", "127.0.0.1:1"],
        ["data", "bars", "EURUSD", "--url", "127.0.0.1:1"],
        ["data", "import", "{csv}", "--symbol", "X", "--resolution", "1h", "--url", "127.0.0.1:1"],
    ],
)
def test_data_commands_run_without_the_server_stack_or_pandas(
    tmp_path: Path, args: list[str]
) -> None:
    path = _write_csv(
        tmp_path / "x.csv", _rows(hourly(2)), ["datetime", "open", "high", "low", "close", "volume"]
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _BLOCKING_MAIN,
            f"{SERVER_ONLY} pandas numpy backtesting",
            *(a.format(csv=path) for a in args),
        ],
        env={"FORETELL_CONFIG_DIR": str(tmp_path / "config"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "the client imported" not in result.stderr
    assert "Traceback" not in result.stderr
    # They get as far as wanting a session: everything they import has been imported.
    assert result.returncode == Exit.AUTH, result.stderr
