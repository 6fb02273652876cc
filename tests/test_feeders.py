"""Data feeders: accounts that may only push bars (IngestBars) for the symbols an admin granted
them; the bars IngestBars refuses (not closed, off the calendar, changing what a run read);
an admin's recorded correction; `foretell data push` and `foretell admin feeders`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.cli._exit import Exit
from foretell.datafeed.v1 import datafeed_service_pb2 as pb
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.marketdata import set_calendar
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.services.datafeed import admin as feeder_admin
from foretell.settings import Settings
from tests._envoy import Envoy
from tests._errors import field_violations
from tests._records import make_model, record_run
from tests.conftest import FORETELL, SignedIn, SignUp, foretell_env, status_code, unique_email
from tests.test_cli import _fails, _foretell, _ok
from tests.test_datafeed import (
    H1,
    HOUR,
    T0,
    admin,  # noqa: F401 - a fixture
    datafeed,  # noqa: F401 - a fixture
    get_bars,
    hourly,
    ingest,
    joined,
    new_symbol,
    rpc_error,
)

if TYPE_CHECKING:
    from tests.test_datafeed import Stub

Metadata = tuple[tuple[str, str], ...]
DENIED = grpc.StatusCode.PERMISSION_DENIED
# 2020-01-06 is a Monday: New York is open 14:30 to 21:00 UTC; the 11th is a Saturday.
NY_OPEN_HOUR = T0 + 15 * HOUR
SATURDAY_NOON = T0 + 5 * 24 * HOUR + 12 * HOUR


@dataclasses.dataclass(frozen=True)
class Feeder:
    email: str
    user_id: uuid.UUID
    api_key: str
    symbol: str

    @property
    def metadata(self) -> Metadata:
        return (("authorization", f"Bearer {self.api_key}"),)


async def new_feeder(settings: Settings, resources: Resources, calendar: str = "CRYPTO") -> Feeder:
    """A feeder granted one new symbol, whose calendar an admin set."""
    symbol = new_symbol()
    await set_calendar(resources.db, symbol, calendar, by="tests", now=datetime.now(UTC))
    email = unique_email("feed")
    made = await feeder_admin.create(settings, email, "Vendor feed", [symbol.lower()])
    return Feeder(email, made.user_id, made.api_key, symbol)


@pytest.fixture
async def feeder(settings: Settings, resources: Resources) -> Feeder:
    return await new_feeder(settings, resources)


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> reg_grpc.RegistryServiceAsyncStub:
    return reg_grpc.RegistryServiceStub(channel)


@pytest.fixture
async def http(envoy: Envoy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        yield client


async def stream_first(call: object) -> None:
    async for _ in call:  # type: ignore[attr-defined]
        return


# --- least privilege --------------------------------------------------------------------------


async def test_a_feeder_pushes_its_symbols_and_may_call_nothing_else(
    feeder: Feeder,
    datafeed: Stub,  # noqa: F811
    admin: SignedIn,  # noqa: F811
    channel: aio.Channel,
    registry: reg_grpc.RegistryServiceAsyncStub,
    settings: Settings,
    resources: Resources,
) -> None:
    pushed = await ingest(datafeed, feeder.metadata, feeder.symbol, hourly(3))
    assert (pushed.received, pushed.inserted) == (3, 3)

    # Another symbol, even one with bars: refused before any bar is read, nothing stored.
    other = new_symbol()
    await ingest(datafeed, admin.metadata, other, hourly(1), calendar="CRYPTO")
    error = await rpc_error(ingest(datafeed, feeder.metadata, other, hourly(2, start=T0 + HOUR)))
    assert status_code(error) == DENIED
    assert error.details() == f"this data feeder was not granted {other}"
    assert len(joined(await get_bars(datafeed, admin.metadata, symbol=other)).opens) == 1

    # Model RPCs, reads, key management, admin RPCs: all refused.
    forecasts = fc_grpc.ForecastServiceStub(channel)
    account = account_grpc.AccountServiceStub(channel)
    who = feeder.metadata
    calls = {
        "ListModels": registry.ListModels(reg_pb.ListModelsRequest(), metadata=who),
        "GetModel": registry.GetModel(reg_pb.GetModelRequest(name="anything"), metadata=who),
        "CreateModel": registry.CreateModel(reg_pb.CreateModelRequest(), metadata=who),
        "GetPerformance": forecasts.GetPerformance(
            fc_pb.GetPerformanceRequest(model="anything"), metadata=who
        ),
        "StreamForecasts": stream_first(
            forecasts.StreamForecasts(fc_pb.StreamForecastsRequest(model="m"), metadata=who)
        ),
        "ListSymbols": datafeed.ListSymbols(pb.ListSymbolsRequest(), metadata=who),
        "GetBars": get_bars(datafeed, who, symbol=feeder.symbol),
        "GetMe": account.GetMe(account_pb.GetMeRequest(), metadata=who),
        "CreateApiKey": account.CreateApiKey(
            account_pb.CreateApiKeyRequest(name="x"), metadata=who
        ),
        "SetSymbolCalendar": datafeed.SetSymbolCalendar(
            pb.SetSymbolCalendarRequest(symbol=feeder.symbol, calendar="FX"), metadata=who
        ),
        "CorrectBar": datafeed.CorrectBar(correction(feeder.symbol, T0), metadata=who),
    }
    for name, call in calls.items():
        assert status_code(await rpc_error(call)) == DENIED, name

    # Nor does it choose a symbol's calendar.
    chosen = await rpc_error(
        ingest(datafeed, who, feeder.symbol, hourly(1, start=T0 + 3 * HOUR), calendar="FX")
    )
    assert status_code(chosen) == DENIED
    assert "an admin sets it" in (chosen.details() or "")

    # Revoked: refused from then on.
    assert await feeder_admin.revoke(settings, feeder.email, [feeder.symbol]) == 1
    revoked = await rpc_error(ingest(datafeed, who, feeder.symbol, hourly(1, start=T0 + 3 * HOUR)))
    assert status_code(revoked) == DENIED


async def test_api_keys_of_other_roles_still_cannot_ingest(
    datafeed: Stub,  # noqa: F811
    admin: SignedIn,  # noqa: F811
    account: account_grpc.AccountServiceAsyncStub,
) -> None:
    key = await account.CreateApiKey(
        account_pb.CreateApiKeyRequest(name="ops script"), metadata=admin.metadata
    )
    keyed = (("authorization", f"Bearer {key.secret}"),)
    error = await rpc_error(ingest(datafeed, keyed, new_symbol(), hourly(1)))
    assert status_code(error) == DENIED


async def test_a_feeders_key_is_refused_over_rest(feeder: Feeder, http: httpx.AsyncClient) -> None:
    auth = {"authorization": f"Bearer {feeder.api_key}"}
    answers = {
        "models": await http.get("/v1/models", headers=auth),
        "symbols": await http.get("/v1/symbols", headers=auth),
        "bars": await http.get(
            f"/v1/symbols/{feeder.symbol}/bars",
            params={"resolution": "RESOLUTION_1H"},
            headers=auth,
        ),
        "calendar": await http.post(
            f"/v1/symbols/{feeder.symbol}:setCalendar",
            json={"calendar": "FX"},
            headers=auth,
        ),
        "correct": await http.post(
            f"/v1/symbols/{feeder.symbol}/bars:correct",
            json={
                "resolution": "RESOLUTION_1H",
                "openTime": "2020-01-06T00:00:00Z",
                "open": 1,
                "high": 1,
                "low": 1,
                "close": 1,
                "volume": 1,
                "reason": "no",
            },
            headers=auth,
        ),
    }
    for name, answer in answers.items():
        assert answer.status_code == 403, (name, answer.text)
        assert answer.json()["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0], name


# --- what IngestBars refuses ------------------------------------------------------------------


async def test_a_bar_not_closed_yet_is_refused_with_the_reason(
    feeder: Feeder,
    datafeed: Stub,  # noqa: F811
) -> None:
    now = int(datetime.now(UTC).timestamp())
    open_now = now - now % HOUR
    bars = hourly(2, start=open_now - HOUR)
    error = await rpc_error(ingest(datafeed, feeder.metadata, feeder.symbol, bars))
    assert status_code(error) == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert list(violations) == ["batches[0].open_times_unix[1]"]
    assert "after now: only closed bars are data" in violations["batches[0].open_times_unix[1]"]


async def test_a_bar_off_the_symbols_calendar_is_refused_with_the_reason(
    settings: Settings,
    resources: Resources,
    datafeed: Stub,  # noqa: F811
) -> None:
    stock = await new_feeder(settings, resources, calendar="XNYS")
    good = hourly(2, start=NY_OPEN_HOUR)
    saturday = hourly(1, start=SATURDAY_NOON)
    error = await rpc_error(ingest(datafeed, stock.metadata, stock.symbol, good, saturday))
    assert status_code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == {
        "batches[1].open_times_unix[0]": (
            "the 1h bar at 2020-01-11T12:00:00Z (closing 2020-01-11T13:00:00Z) is not a bar of "
            f"{stock.symbol}'s XNYS calendar: its market is closed then"
        )
    }
    # Nothing was written; the bars of the open market alone are.
    assert (await ingest(datafeed, stock.metadata, stock.symbol, good)).inserted == 2


async def test_a_bar_a_run_read_is_refused_unless_it_is_unchanged(
    feeder: Feeder,
    datafeed: Stub,  # noqa: F811
    admin: SignedIn,  # noqa: F811
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    symbol, who = feeder.symbol, feeder.metadata
    bars = hourly(6)
    await ingest(datafeed, who, symbol, bars)
    made = await make_model(registry, sign_up, resources, symbols=(symbol,))
    # A run at T0+3h read the bars closing at or before it: those opening at T0 .. T0+2h. A
    # later slot that was missed read nothing.
    await record_run(resources, made, datetime.fromtimestamp(T0 + 3 * HOUR, UTC))
    await record_run(resources, made, datetime.fromtimestamp(T0 + 5 * HOUR, UTC), outcome="missed")

    changed = hourly(6, base=1.2)
    upsert = {"on_conflict": pb.CONFLICT_POLICY_UPSERT}
    for sender in (who, admin.metadata):
        error = await rpc_error(ingest(datafeed, sender, symbol, changed, **upsert))
        assert status_code(error) == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == {
            "batches[0].open_times_unix[0]": (
                "changes the stored bar at 2020-01-06T00:00:00Z (and 2 more bars sent), which "
                "runs already read (a run read bars up to 2020-01-06T03:00:00Z): nothing was "
                "written; an admin changes a read bar with CorrectBar, giving the reason"
            )
        }
    # A retry of the same bars is harmless; bars no run read may still change.
    again = await ingest(datafeed, who, symbol, bars, **upsert)
    assert (again.unchanged, again.updated) == (6, 0)
    tail = hourly(6, base=1.2)
    del tail.open_times_unix[:3], tail.opens[:3], tail.highs[:3]
    del tail.lows[:3], tail.closes[:3], tail.volumes[:3]
    later = await ingest(datafeed, who, symbol, tail, **upsert)
    assert (later.updated, later.unchanged) == (3, 0)


# --- corrections ------------------------------------------------------------------------------


def correction(
    symbol: str, open_time: int, close: float = 1.5, reason: str = "re-issued"
) -> pb.CorrectBarRequest:
    return pb.CorrectBarRequest(
        symbol=symbol,
        resolution=H1,
        open_time=Timestamp(seconds=open_time),
        open=1.1,
        high=max(close, 1.1) + 0.01,
        low=min(close, 1.1) - 0.01,
        close=close,
        volume=10,
        reason=reason,
    )


async def _revision(resources: Resources) -> int:
    async with resources.db.read.connect() as conn:
        found = await conn.scalar(text("SELECT revision FROM data_revisions WHERE name = 'bars'"))
    return int(found)


async def test_an_admins_correction_is_recorded_and_invalidates_performance(
    feeder: Feeder,
    datafeed: Stub,  # noqa: F811
    admin: SignedIn,  # noqa: F811
    resources: Resources,
) -> None:
    await ingest(datafeed, feeder.metadata, feeder.symbol, hourly(3))
    before = joined(await get_bars(datafeed, admin.metadata, symbol=feeder.symbol))
    revision = await _revision(resources)

    done = await datafeed.CorrectBar(
        correction(feeder.symbol, T0 + HOUR, reason="vendor re-issued the 01:00 bar"),
        metadata=admin.metadata,
    )
    assert (done.old_values.close, done.new_values.close) == (before.closes[1], 1.5)
    assert done.corrected_by == admin.user.id
    assert done.reason == "vendor re-issued the 01:00 bar"
    after = joined(await get_bars(datafeed, admin.metadata, symbol=feeder.symbol))
    assert list(after.closes) == [before.closes[0], 1.5, before.closes[2]]
    # The performance caches key on the data revision: it moved.
    assert await _revision(resources) > revision

    async with resources.db.read.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT symbol, resolution, open_time, old_close, new_close, reason, "
                    "corrected_by FROM bar_corrections WHERE id = :id"
                ),
                {"id": done.id},
            )
        ).one()
    assert tuple(row) == (
        feeder.symbol,
        "1h",
        datetime.fromtimestamp(T0 + HOUR, UTC),
        before.closes[1],
        1.5,
        "vendor re-issued the 01:00 bar",
        uuid.UUID(admin.user.id),
    )
    # The record is history: it never changes.
    with pytest.raises(DBAPIError, match="never changed"):
        async with resources.db.session.begin() as session:
            await session.execute(
                text("DELETE FROM bar_corrections WHERE id = :id"), {"id": done.id}
            )


async def test_bad_corrections_name_the_field(
    feeder: Feeder,
    datafeed: Stub,  # noqa: F811
    admin: SignedIn,  # noqa: F811
    sign_up: SignUp,
) -> None:
    await ingest(datafeed, feeder.metadata, feeder.symbol, hourly(1))
    bad = correction(feeder.symbol, T0 + 1800, reason=" ")
    bad.high = 0.5
    error = await rpc_error(datafeed.CorrectBar(bad, metadata=admin.metadata))
    assert status_code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"open_time", "reason", "high"}
    missing = await rpc_error(
        datafeed.CorrectBar(correction(feeder.symbol, T0 + 9 * HOUR), metadata=admin.metadata)
    )
    assert status_code(missing) == grpc.StatusCode.NOT_FOUND
    provider = await sign_up()
    denied = await rpc_error(
        datafeed.CorrectBar(correction(feeder.symbol, T0), metadata=provider.metadata)
    )
    assert status_code(denied) == DENIED


# --- the command line -------------------------------------------------------------------------


def _admin_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FORETELL, "admin", "feeders", *args],
        env=foretell_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_foretell_data_push_from_a_file_and_stdin(
    tmp_path: Path,
    envoy: Envoy,
    settings: Settings,
    resources: Resources,
    datafeed: Stub,  # noqa: F811
    admin: SignedIn,  # noqa: F811
) -> None:
    symbol = new_symbol()
    await set_calendar(resources.db, symbol, "CRYPTO", by="tests", now=datetime.now(UTC))
    email = unique_email("feed")
    created = _ok(
        await asyncio.to_thread(
            _admin_cli, settings, "create", "--email", email, "--symbols", symbol
        )
    )
    key = created.stdout.split("API key (shown once): ")[1].strip()
    listed = json.loads(_ok(await asyncio.to_thread(_admin_cli, settings, "list", "--json")).stdout)
    assert {"email": email, "symbols": [symbol]} in [
        {"email": f["email"], "symbols": f["symbols"]} for f in listed["feeders"]
    ]

    url = f"http://{envoy.grpc_target}"
    config = tmp_path / "config"
    push = ("data", "push")
    opts = ("--symbol", symbol, "--resolution", "1h", "--batch", "2")

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return _foretell(config, url, *args, stdin=stdin, env={"FORETELL_API_KEY": key})

    source = tmp_path / "bars.csv"
    source.write_text(
        "time,Open,High,Low,Close,Volume\n"
        "2020-01-06T00:00:00Z,1.1,1.2,1.0,1.15,10\n"
        "2020-01-06T01:00:00Z,1.15,1.2,1.1,1.18,11\n"
        "2020-01-06T02:00:00Z,1.18,1.3,1.1,1.2,12\n"
    )
    done = _ok(await asyncio.to_thread(cli, *push, str(source), *opts))
    assert done.stdout == (
        f"{symbol} 1h: 3 bars from {source} (2020-01-06 00:00Z to 2020-01-06 02:00Z): "
        "3 new, 0 updated, 0 unchanged\n"
    )
    # Standard input, headerless, as a script pipes the bar that just closed.
    piped = _ok(
        await asyncio.to_thread(
            cli, *push, "-", *opts, "--json", stdin="2020-01-06T03:00:00Z,1.2,1.3,1.1,1.25,13\n"
        )
    )
    assert json.loads(piped.stdout)["inserted"] == 1
    stored = joined(await get_bars(datafeed, admin.metadata, symbol=symbol))
    assert list(stored.closes) == [1.15, 1.18, 1.2, 1.25]

    # A bar refused: the message names the line; earlier calls stay stored.
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    lines = [f"{(now - timedelta(hours=h)):%Y-%m-%dT%H:%M:%SZ},1,1,1,1,1" for h in (2, 1, 0)]
    refused = _fails(
        await asyncio.to_thread(cli, *push, "-", *opts, stdin="\n".join(lines) + "\n"),
        Exit.USAGE,
    )
    assert "stdin: bars the server refused:\n  line 3 (time): " in refused.stderr
    assert "only closed bars are data" in refused.stderr
    assert "(the 2 bars before line 3 are stored)" in refused.stderr
    # Another symbol: permission denied; no key: not signed in.
    other = _fails(
        await asyncio.to_thread(cli, *push, str(source), "--symbol", "OTHER", "--resolution", "1h"),
        Exit.DENIED,
    )
    assert "not granted OTHER" in other.stderr
    _fails(await asyncio.to_thread(_foretell, config, url, *push, str(source), *opts), Exit.AUTH)
    _fails(await asyncio.to_thread(cli, *push, str(tmp_path / "none.csv"), *opts), Exit.USAGE)


async def test_admin_feeders_refuse_bad_input_plainly(settings: Settings) -> None:
    bad = await asyncio.to_thread(
        _admin_cli, settings, "create", "--email", unique_email("f"), "--symbols", "no way"
    )
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr
    nobody = await asyncio.to_thread(_admin_cli, settings, "grant", unique_email("x"), "EURUSD")
    assert nobody.returncode == 2
    assert "no feeder account" in nobody.stderr


async def test_foretell_data_correct_records_the_change(
    tmp_path: Path,
    envoy: Envoy,
    feeder: Feeder,
    datafeed: Stub,  # noqa: F811
    admin: SignedIn,  # noqa: F811
) -> None:
    await ingest(datafeed, feeder.metadata, feeder.symbol, hourly(2))
    url, config = f"http://{envoy.grpc_target}", tmp_path / "config"
    _ok(await asyncio.to_thread(
        _foretell, config, url, "login", "--email", admin.email, "--password-stdin",
        stdin=f"{admin.password}\n",
    ))  # fmt: skip
    args = (
        "data", "correct", feeder.symbol.lower(), "--resolution", "1h",
        "--at", "2020-01-06T01:00:00Z", "--open", "1.1", "--high", "1.3", "--low", "1.0",
        "--close", "1.25", "--volume", "7", "--reason", "vendor re-issued it",
    )  # fmt: skip
    done = _ok(await asyncio.to_thread(_foretell, config, url, *args, "--json"))
    document = json.loads(done.stdout)
    assert document["newValues"]["close"] == 1.25
    assert document["reason"] == "vendor re-issued it"
    assert document["correctedBy"] == admin.user.id
    stored = joined(await get_bars(datafeed, admin.metadata, symbol=feeder.symbol))
    assert stored.closes[1] == 1.25
    # Bad values: the server's field violations, exit 2.
    bad = _fails(
        await asyncio.to_thread(_foretell, config, url, *args[:-2], "--reason", " "), Exit.USAGE
    )
    assert "reason" in bad.stderr
