"""The forecast ledger: every live run (missed and failed ones too) is a link of its model's
hash chain; any edit, deletion or insertion made directly in SQL is found by the verifier
(`foretell verify`'s check); signatures verify and a forged one does not; concurrent appends
stay one chain; the REST route and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from grpc import aio
from sqlalchemy import text

from foretell.cli._verify import Ledger, check_ledger
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from foretell.ledger import chain
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.scheduler import _record_missed
from foretell.settings import Settings
from tests._envoy import Envoy
from tests._records import HOUR, F, Made, make_model, record_run, unique_symbol
from tests.conftest import SignUp, status_code

BASE = datetime(2024, 3, 4, 9, tzinfo=UTC)
FORETELL = str(Path(sys.executable).parent / "foretell")


@pytest.fixture(scope="module")
def forecasts(channel: aio.Channel) -> pb_grpc.ForecastServiceAsyncStub:
    return pb_grpc.ForecastServiceStub(channel)


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> reg_grpc.RegistryServiceAsyncStub:
    return reg_grpc.RegistryServiceStub(channel)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "ledger-keys"


async def ledgered_model(
    registry: reg_grpc.RegistryServiceAsyncStub, sign_up: SignUp, resources: Resources
) -> tuple[Made, list[uuid.UUID]]:
    """Runs at 09:00 (ok, two forecasts), 10:00 (ok), 11:00 (model error), 12:00 (ok), and a
    simulated run (not ledgered)."""
    made = await make_model(registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),))
    other = F("down", -0.001, 0.7, horizon=2)
    runs = [
        await record_run(resources, made, BASE, [F("up", 0.002, 0.6), other]),
        await record_run(resources, made, BASE + HOUR, [F("down", None, 0.55)]),
        await record_run(
            resources, made, BASE + 2 * HOUR, outcome="model_error", detail="Traceback: boom"
        ),
        await record_run(resources, made, BASE + 3 * HOUR, [F("flat", 0.0, None)]),
    ]
    await record_run(resources, made, BASE, [F("up")], kind="simulated")
    return made, runs


async def read_ledger(
    forecasts: pb_grpc.ForecastServiceAsyncStub, made: Made, page_size: int = 0
) -> Ledger:
    ledger, token = Ledger(), ""
    while True:
        page = await forecasts.GetLedger(
            pb.GetLedgerRequest(model=made.name, page_size=page_size, page_token=token),
            metadata=made.owner.metadata,
        )
        ledger.add(page)
        token = page.next_page_token
        if not token:
            return ledger


async def listed(
    forecasts: pb_grpc.ForecastServiceAsyncStub, made: Made
) -> list[pb.ForecastRecord]:
    page = await forecasts.ListForecasts(
        pb.ListForecastsRequest(model=made.name, page_size=1000), metadata=made.owner.metadata
    )
    return list(page.forecasts)


async def verdict(
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    made: Made,
    remembered: dict[int, str] | None = None,
) -> Any:
    return check_ledger(
        made.name, await read_ledger(forecasts, made), await listed(forecasts, made), remembered
    )


async def sql(resources: Resources, statement: str, **params: Any) -> None:
    async with resources.db.session.begin() as session:
        await session.execute(text(statement), params)


async def test_a_recorded_history_verifies_with_its_signed_checkpoint(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    keys_dir: Path,
) -> None:
    made, runs = await ledgered_model(registry, sign_up, resources)
    # Missed slots recorded by the scheduler are links too.
    await _record_missed(
        resources, made.model_id, made.versions[1], [BASE + 4 * HOUR, BASE + 5 * HOUR], 2,
        datetime.now(UTC),
    )  # fmt: skip
    assert await chain.checkpoint(resources.db, keys_dir, resources.clock) >= 1
    ledger = await read_ledger(forecasts, made, page_size=2)  # three pages
    assert [e.sequence for e in ledger.entries] == [1, 2, 3, 4, 5, 6]
    assert [e.run_id for e in ledger.entries[:4]] == [str(r) for r in runs]
    assert ledger.entries[0].prev_hash == bytes(32)
    assert '"outcome":"missed"' in ledger.entries[5].payload
    assert "boom" not in ledger.entries[2].payload  # the detail enters as its hash only
    assert [c.sequence for c in ledger.checkpoints] == [6]
    assert len(ledger.keys) == 1 and len(ledger.keys[0].public_key) == 32
    result = check_ledger(made.name, ledger, await listed(forecasts, made))
    assert result.ok, result.problem
    assert result.forecasts_checked == 4
    assert result.head_hash == ledger.entries[-1].entry_hash.hex()


# A payload from before entries were built by column name: its bytes must never change, or
# every chain recorded so far stops verifying.
_PINNED_RUN = uuid.UUID("7d2c7b0e-51f4-4a3e-9c1e-2b8f0e4d6a10")
_PINNED_PAYLOAD = (
    b'{"as_of":"2024-03-04T09:00:00.000000Z","detail_sha256":"56c19408359ab45ef6d34d8912afe4b9'
    b'68317d4e23b5a3ca0140658aef8ee3d7","duration_s":"3ff4000000000000","forecasts":[{"as_of":'
    b'"2024-03-04T09:00:00.000000Z","direction":"flat","kind":"point","predicted_return":null,'
    b'"probability":"3fe0000000000000","recorded_at":"2024-03-04T09:00:09.000000Z","symbol":"AA'
    b'PL","target_time":"2024-03-04T10:00:00.000000Z"},{"as_of":"2024-03-04T09:00:00.000000Z","'
    b'direction":"up","kind":"point","predicted_return":"3f60624dd2f1a9fc","probability":null,'
    b'"recorded_at":"2024-03-04T09:00:09.000000Z","symbol":"EURUSD","target_time":"2024-03-04T'
    b'10:00:00.000000Z"},{"as_of":"2024-03-04T09:00:00.000000Z","direction":"down","kind":"poin'
    b't","predicted_return":"bf50624dd2f1a9fc","probability":"3fe6666666666666","recorded_at":'
    b'"2024-03-04T09:00:09.000000Z","symbol":"EURUSD","target_time":"2024-03-04T11:00:00.00000'
    b'0Z"}],"kind":"live","log_sha256":"8e722e34af271ba626bdbdf618ebf1386eaad27b073b6421d329bf'
    b'5ffca22637","model":"eurusd-momentum","outcome":"ok","recorded_at":"2024-03-04T09:00:01.2'
    b'50000Z","run_id":"7d2c7b0e-51f4-4a3e-9c1e-2b8f0e4d6a10","v":1,"version":3,"version_diges'
    b't":"sha256:abababababababababababababababababababababababababababababababab"}'
)


def test_the_payload_encoding_is_pinned() -> None:
    # Distinct values in every field, a recording time in another zone with microseconds, and
    # forecasts out of order, so a field taken from the wrong column changes the bytes.
    recorded = datetime(2024, 3, 4, 11, 0, 1, 250000, tzinfo=timezone(timedelta(hours=2)))
    run = chain.RunRow(
        run_id=_PINNED_RUN, model="eurusd-momentum", version=3,
        version_digest="sha256:" + "ab" * 32, kind="live", as_of=BASE, recorded_at=recorded,
        outcome="ok", duration_s=1.25, detail="détail ✓", log="log line\n",
    )  # fmt: skip
    later = BASE + timedelta(seconds=9)
    forecasts = [
        chain.ForecastRow(_PINNED_RUN, "EURUSD", BASE, BASE + 2 * HOUR, "point", "down", -0.001,
                          0.7, later),
        chain.ForecastRow(_PINNED_RUN, "EURUSD", BASE, BASE + HOUR, "point", "up", 0.002, None,
                          later),
        chain.ForecastRow(_PINNED_RUN, "AAPL", BASE, BASE + HOUR, "point", "flat", None, 0.5,
                          later),
    ]  # fmt: skip
    assert chain.payload(run, forecasts) == _PINNED_PAYLOAD


async def test_payloads_take_each_field_from_its_column(
    registry: reg_grpc.RegistryServiceAsyncStub, sign_up: SignUp, resources: Resources
) -> None:
    made = await make_model(registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),))
    recorded = BASE + timedelta(minutes=7, microseconds=5)
    run_id = await record_run(
        resources, made, BASE, [F("up", 0.002, 0.6), F("down", -0.001, None, horizon=2)],
        outcome="model_error", detail="Traceback: boom", log="the log", recorded_at=recorded,
    )  # fmt: skip
    async with resources.db.session.begin() as session:
        built = await chain.payloads(session, [run_id])
        digest = await session.scalar(
            text("SELECT digest FROM versions WHERE id = :id"), {"id": made.versions[1]}
        )
    run = chain.RunRow(
        run_id=run_id, model=made.name, version=1, version_digest=digest, kind="live",
        as_of=BASE, recorded_at=recorded, outcome="model_error", duration_s=0.25,
        detail="Traceback: boom", log="the log",
    )  # fmt: skip
    forecasts = [
        chain.ForecastRow(run_id, made.symbol, BASE, BASE + HOUR, "live", "up", 0.002, 0.6,
                          recorded),
        chain.ForecastRow(run_id, made.symbol, BASE, BASE + 2 * HOUR, "live", "down", -0.001,
                          None, recorded),
    ]  # fmt: skip
    assert built == {run_id: chain.payload(run, forecasts)}


TAMPERING: dict[str, tuple[str, str]] = {
    # name: (SQL, what the verifier says); :run is the second run, :model the model id.
    "forecast edited": (
        "UPDATE forecasts SET probability = 0.99 WHERE run_id = :run",
        "entry 2 (run",
    ),
    "forecast deleted": ("DELETE FROM forecasts WHERE run_id = :run", "entry 2 (run"),
    "forecast inserted": (
        "INSERT INTO forecasts (run_id, model_id, version_id, kind, symbol, as_of, target_time,"
        " direction, recorded_at) SELECT id, model_id, version_id, kind, 'GOOG', as_of,"
        " as_of + interval '1 hour', 'up', created_at FROM runs WHERE id = :run",
        "entry 2 (run",
    ),
    "forecast moved to a simulated run's kind": (
        "UPDATE forecasts SET kind = 'simulated' WHERE run_id = :run",
        "entry 2 (run",
    ),
    "run outcome edited": ("UPDATE runs SET outcome = 'timeout' WHERE id = :run", "entry 2 (run"),
    "run recording time edited": (
        "UPDATE runs SET created_at = created_at - interval '1 day' WHERE id = :run",
        "entry 2 (run",
    ),
    "run log edited": ("UPDATE runs SET log = 'nothing to see' WHERE id = :run", "entry 2 (run"),
    "run deleted": ("DELETE FROM runs WHERE id = :run", "deleted"),
    "run inserted": (
        "INSERT INTO runs (id, model_id, version_id, as_of, kind, outcome, duration_s, detail,"
        " log, created_at) SELECT gen_random_uuid(), model_id, version_id,"
        " as_of - interval '1 day', 'live', 'ok', 1, '', '', created_at FROM runs"
        " WHERE id = :run",
        "has no ledger entry",
    ),
    "entry hash edited": (
        "UPDATE ledger_entries SET entry_hash = sha256(entry_hash) WHERE run_id = :run",
        "entry 2 (run",
    ),
    "entry deleted": ("DELETE FROM ledger_entries WHERE run_id = :run", "entry 2 is missing"),
    "last run and entry deleted, head moved back": (
        "DELETE FROM runs WHERE model_id = :model AND as_of = (SELECT max(as_of) FROM runs "
        "WHERE model_id = :model AND kind = 'live'); DELETE FROM ledger_entries WHERE "
        "model_id = :model AND sequence = 4",
        "checkpoint at entry 4",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
async def test_any_edit_deletion_or_insertion_in_sql_is_found(
    case: str,
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    keys_dir: Path,
) -> None:
    made, runs = await ledgered_model(registry, sign_up, resources)
    await chain.checkpoint(resources.db, keys_dir, resources.clock)
    assert (await verdict(forecasts, made)).ok
    statements, problem = TAMPERING[case]
    for statement in statements.split("; "):
        await sql(resources, statement, run=runs[1], model=made.model_id)
    result = await verdict(forecasts, made)
    assert not result.ok
    assert problem in result.problem, result.problem


async def test_signatures_verify_and_a_forged_one_fails(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    keys_dir: Path,
) -> None:
    made, _runs = await ledgered_model(registry, sign_up, resources)
    await chain.checkpoint(resources.db, keys_dir, resources.clock)
    assert (await verdict(forecasts, made)).ok
    # Nothing new: no second checkpoint for the same head.
    async with resources.db.session() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM ledger_checkpoints WHERE model_id = :m"),
            {"m": made.model_id},
        )
    assert count == 1
    await sql(
        resources,
        "UPDATE ledger_checkpoints SET signature = overlay(signature placing '\\x00'::bytea "
        "from 1 for 1) WHERE model_id = :model",
        model=made.model_id,
    )
    result = await verdict(forecasts, made)
    assert not result.ok and "signature does not verify" in result.problem


async def test_a_history_rewritten_and_resigned_is_flagged_by_remembered_checkpoints(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    keys_dir: Path,
) -> None:
    made, runs = await ledgered_model(registry, sign_up, resources)
    await chain.checkpoint(resources.db, keys_dir, resources.clock)
    first = await read_ledger(forecasts, made)
    seen = {c.sequence: c.head_hash.hex() for c in first.checkpoints}
    # An operator with the key rewrites everything: deletes the chain, edits a forecast,
    # re-appends every run and signs a new checkpoint.
    await sql(resources, "DELETE FROM ledger_checkpoints WHERE model_id = :model",
              model=made.model_id)  # fmt: skip
    await sql(resources, "DELETE FROM ledger_entries WHERE model_id = :model", model=made.model_id)
    await sql(resources, "DELETE FROM ledger_heads WHERE model_id = :model", model=made.model_id)
    await sql(resources, "UPDATE forecasts SET direction = 'up' WHERE run_id = :run", run=runs[1])
    async with resources.db.session.begin() as session:
        await chain.append(session, made.model_id, runs, datetime.now(UTC))
    await chain.checkpoint(resources.db, keys_dir, resources.clock)
    assert (await verdict(forecasts, made)).ok  # consistent on its own
    result = await verdict(forecasts, made, seen)
    assert not result.ok and "history rewritten" in result.problem


async def test_missed_slots_are_ledgered_once_in_slot_order(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    made, runs = await ledgered_model(registry, sign_up, resources)
    slots = [BASE + 3 * HOUR, BASE + 4 * HOUR, BASE + 5 * HOUR]
    # 12:00 already has a run: only 13:00 and 14:00 become missed runs and entries.
    await _record_missed(resources, made.model_id, made.versions[1], slots, 3, datetime.now(UTC))
    ledger = await read_ledger(forecasts, made)
    assert [e.sequence for e in ledger.entries] == [1, 2, 3, 4, 5, 6]
    assert [e.run_id for e in ledger.entries[:4]] == [str(r) for r in runs]
    appended = [json.loads(e.payload) for e in ledger.entries[4:]]
    assert [(p["as_of"], p["outcome"]) for p in appended] == [
        ("2024-03-04T13:00:00.000000Z", "missed"),
        ("2024-03-04T14:00:00.000000Z", "missed"),
    ]
    assert check_ledger(made.name, ledger, await listed(forecasts, made)).ok


async def test_concurrent_appends_stay_one_chain(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    made = await make_model(registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),))
    jobs: list[Awaitable[uuid.UUID]] = [
        record_run(resources, made, BASE + i * HOUR, [F("up", 0.001 * i, 0.5)]) for i in range(24)
    ]
    await asyncio.gather(*jobs)
    ledger = await read_ledger(forecasts, made)
    assert [e.sequence for e in ledger.entries] == list(range(1, 25))
    result = check_ledger(made.name, ledger, await listed(forecasts, made))
    assert result.ok, result.problem


async def test_rest_and_the_cli(
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    settings: Settings,
    envoy: Envoy,
    tmp_path: Path,
) -> None:
    made, runs = await ledgered_model(registry, sign_up, resources)
    await chain.checkpoint(resources.db, settings.ledger_keys_dir, resources.clock)
    headers = {"authorization": f"Bearer {made.owner.tokens.access_token}"}
    async with httpx.AsyncClient(base_url=envoy.base_url) as http:
        ledger = await http.get(f"/v1/models/{made.name}/ledger", headers=headers)
        performance = await http.get(
            f"/v1/models/{made.name}/performance", params={"costBps": "2"}, headers=headers
        )
    assert ledger.status_code == 200, ledger.text
    assert [e["sequence"] for e in ledger.json()["entries"]] == ["1", "2", "3", "4"]
    assert performance.status_code == 200, performance.text
    assert performance.json()["overall"]["forecasts"]["total"] == "4"

    env = {k: v for k, v in os.environ.items() if not k.startswith("FORETELL_")}
    env.update(FORETELL_CONFIG_DIR=str(tmp_path / "cli"), FORETELL_URL=envoy.base_url)

    async def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        # In a thread: the gRPC server answering the command runs on this event loop.
        return await asyncio.to_thread(
            subprocess.run, [FORETELL, *args], env=env, input=stdin, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip

    login = await cli("login", "--email", made.owner.email, "--password-stdin",
                      stdin=made.owner.password)  # fmt: skip
    assert login.returncode == 0, login.stderr
    ok = await cli("verify", made.name)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK: {made.name}: 4 entries"), ok.stdout
    shown = await cli("performance", made.name)
    assert shown.returncode == 0, shown.stderr
    assert "always up" in shown.stdout and "persistence" in shown.stdout
    await sql(resources, "UPDATE forecasts SET probability = 0.1 WHERE run_id = :run", run=runs[0])
    bad = await cli("verify", made.name)
    assert bad.returncode == 11
    assert f"entry 1 (run {runs[0]})" in bad.stdout


async def test_a_reader_without_a_subscription_sees_payloads_only_of_the_delayed_sample(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    made = await make_model(registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),))
    old = datetime.now(UTC) - timedelta(days=30)
    for i in range(2):
        await record_run(resources, made, BASE + i * HOUR, [F("up", 0.001, 0.6)], recorded_at=old)
    recent = [
        await record_run(resources, made, BASE + (2 + i) * HOUR, [F("down")]) for i in range(2)
    ]
    stranger = await sign_up()
    page = await forecasts.GetLedger(
        pb.GetLedgerRequest(model=made.name), metadata=stranger.metadata
    )
    assert [e.withheld for e in page.entries] == [False, False, True, True]
    assert [e.run_id for e in page.entries if e.withheld] == [str(r) for r in recent]
    assert all(e.payload for e in page.entries[:2]) and not any(e.payload for e in page.entries[2:])
    sample = await forecasts.ListForecasts(
        pb.ListForecastsRequest(model=made.name), metadata=stranger.metadata
    )
    ledger = Ledger()
    ledger.add(page)
    result = check_ledger(made.name, ledger, list(sample.forecasts))
    assert result.ok, result.problem
    assert (result.withheld, result.forecasts_checked) == (2, 2)
    # What the stranger can read is still checked: an edit of a sampled forecast is found.
    await sql(
        resources,
        "UPDATE forecasts SET probability = 0.99 WHERE model_id = :model AND as_of = :as_of",
        model=made.model_id,
        as_of=BASE,
    )
    page = await forecasts.GetLedger(
        pb.GetLedgerRequest(model=made.name), metadata=stranger.metadata
    )
    tampered = Ledger()
    tampered.add(page)
    result = check_ledger(made.name, tampered, None)
    assert not result.ok and "entry 1 (run" in result.problem
    # The owner gets every payload.
    owned = await read_ledger(forecasts, made)
    assert not any(e.withheld for e in owned.entries)
    # A private model's ledger is not there for others at all.
    hidden = await make_model(
        registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),), public=False
    )
    with pytest.raises(aio.AioRpcError) as missing:
        await forecasts.GetLedger(
            pb.GetLedgerRequest(model=hidden.name), metadata=stranger.metadata
        )
    assert status_code(missing.value).name == "NOT_FOUND"


async def test_a_ledger_page_token_serves_only_its_own_model(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    made, _runs = await ledgered_model(registry, sign_up, resources)
    other, _ = await ledgered_model(registry, sign_up, resources)
    first = await forecasts.GetLedger(
        pb.GetLedgerRequest(model=made.name, page_size=1), metadata=made.owner.metadata
    )
    assert first.next_page_token
    for model, token in ((other.name, first.next_page_token), (made.name, "seq:1")):
        with pytest.raises(aio.AioRpcError) as refused:
            await forecasts.GetLedger(
                pb.GetLedgerRequest(model=model, page_token=token), metadata=made.owner.metadata
            )
        assert status_code(refused.value).name == "INVALID_ARGUMENT"
        assert "page_token" in (refused.value.details() or "")
    for size in (-1, 1001):
        with pytest.raises(aio.AioRpcError) as bad:
            await forecasts.GetLedger(
                pb.GetLedgerRequest(model=made.name, page_size=size), metadata=made.owner.metadata
            )
        assert status_code(bad.value).name == "INVALID_ARGUMENT"
