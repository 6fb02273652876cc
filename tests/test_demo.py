"""`foretell demo` beyond the bars: the demo provider, its public model built from the
`foretell init` template, and the replay of the EURUSD history through the scheduler's slot
computation into simulated runs, once, in-process and as the command."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from foretell import calendars
from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.auth.passwords import verify_password
from foretell.db.models import Forecast, Model, Run, User, Version
from foretell.demo import DEMO_EMAIL, DEMO_MODEL, ensure_demo, load_demo_bars, replay_slots
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.runtime import Resources
from foretell.settings import Settings
from tests.conftest import FORETELL, SignUp, foretell_env

if TYPE_CHECKING:
    from grpc import aio

# The EURUSD history's last bar opens 2018-02-07 15:00Z: its close is the last slot.
LAST_SLOT = datetime(2018, 2, 7, 16, tzinfo=UTC)


@pytest.fixture(scope="module")
def forecasts(channel: aio.Channel) -> fc_grpc.ForecastServiceAsyncStub:
    return fc_grpc.ForecastServiceStub(channel)


async def _counts(resources: Resources) -> list[int]:
    counts = []
    async with resources.db.session() as session:
        for table in (User, Model, Version, Run, Forecast):
            counts.append(int(await session.scalar(select(func.count()).select_from(table)) or 0))
    return counts


def test_replay_slots_are_the_calendars_slots() -> None:
    fx = calendars.get(calendars.FX)
    first, last = datetime(2018, 2, 1, tzinfo=UTC), LAST_SLOT
    assert replay_slots(fx, first, last, 3) == [LAST_SLOT - timedelta(hours=h) for h in (2, 1, 0)]
    assert replay_slots(fx, first, last, 0) == []
    every = replay_slots(fx, first, last, None)
    # Every slot after the first bar opened, up to the last close: the FX weekend (Friday
    # 22:00 to Sunday 22:00 UTC in winter) has none.
    assert every[0] == first + timedelta(hours=1) and every[-1] == LAST_SLOT
    assert len(every) == 6 * 24 + 16 - 48
    assert datetime(2018, 2, 3, 12, tzinfo=UTC) not in every


async def test_ensure_demo_creates_the_provider_model_and_simulated_runs_once(
    resources: Resources,
    settings: Settings,
    account: account_grpc.AccountServiceAsyncStub,
    forecasts: fc_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
) -> None:
    await load_demo_bars(resources.db)
    first = await ensure_demo(resources.db, settings, replay=3)
    async with resources.db.session() as session:
        user = await session.scalar(select(User).where(User.email == DEMO_EMAIL))
        model = await session.scalar(select(Model).where(Model.name == DEMO_MODEL))
        assert user is not None and model is not None
        versions = list(await session.scalars(select(Version).where(Version.model_id == model.id)))
        runs = list(
            await session.scalars(select(Run).where(Run.model_id == model.id).order_by(Run.as_of))
        )
        rows = list(await session.scalars(select(Forecast).where(Forecast.model_id == model.id)))
    assert (user.display_name, user.role) == ("Demo Provider", "provider")
    if first.password is not None:
        # Created by this call (not by an earlier `foretell demo` of the session): the printed
        # password is the one stored, as a hash only, and it signs in.
        assert user.password_hash != first.password
        assert await verify_password(user.password_hash, first.password)
        login = await account.Login(
            account_pb.LoginRequest(email=DEMO_EMAIL, password=first.password)
        )
        assert login.user.email == DEMO_EMAIL
    assert model.owner_id == user.id and model.visibility == "public"
    assert (model.symbols, model.resolution, model.horizon) == (["EURUSD"], "1h", 1)
    assert "demo" in model.description
    assert len(versions) == 1
    version = versions[0]
    assert version.build_state == "ready" and version.image_digest
    assert model.live_version == version.number and version.published_at is not None

    # The last three slots, run in order, labelled simulated; recorded at the real time of
    # recording (their simulated time is as_of), so they are never a delayed sample.
    assert first.slots == 3
    assert [r.as_of for r in runs] == [LAST_SLOT - timedelta(hours=h) for h in (2, 1, 0)]
    assert {r.kind for r in runs} == {"simulated"}
    assert all(r.created_at > LAST_SLOT + timedelta(days=365) for r in runs)
    assert [r.outcome for r in runs] == ["ok"] * 3, [(r.outcome, r.detail, r.log) for r in runs]
    assert len(rows) == 3 and {f.kind for f in rows} == {"simulated"}
    assert {f.symbol for f in rows} == {"EURUSD"}
    assert all(f.target_time == f.as_of + timedelta(hours=1) for f in rows)
    assert all(f.recorded_at > LAST_SLOT + timedelta(days=365) for f in rows)
    assert sum(first.outcomes.values()) + first.already_recorded == 3

    # Not part of a live track record: the default (live) listing has none of them.
    reader = await sign_up()
    live = await forecasts.ListForecasts(
        fc_pb.ListForecastsRequest(model=DEMO_MODEL), metadata=reader.metadata
    )
    assert list(live.forecasts) == []

    # Again: nothing new anywhere.
    before = await _counts(resources)
    second = await ensure_demo(resources.db, settings, replay=3)
    assert await _counts(resources) == before
    assert second.password is None and not second.provider_created
    assert not (second.model_created or second.version_created)
    assert not (second.built or second.published)
    assert not second.outcomes and second.already_recorded == 3 and second.forecasts == 0


def _demo(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FORETELL, "demo", *args],
        env=foretell_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_foretell_demo_replays_and_reports(resources: Resources, settings: Settings) -> None:
    first = await asyncio.to_thread(_demo, settings, "--replay-slots", "2")
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert out.startswith("demo market data loaded (open times UTC):\n"), out
    # Created here, or by an earlier test of the session: either way the output says which.
    assert (
        f"demo provider created: {DEMO_EMAIL}, password " in out
        or f"demo provider {DEMO_EMAIL} exists" in out
    ), out
    assert f"demo model {DEMO_MODEL} (public): " in out
    assert f"  plan: 49.00 USD a month, 14-day trial (`foretell subscribe {DEMO_MODEL}`)" in out, (
        out
    )
    assert "replay: 2 slots, " in out and "labelled simulated" in out, out

    before = await _counts(resources)
    second = await asyncio.to_thread(_demo, settings, "--replay-slots", "2")
    assert second.returncode == 0, second.stderr
    assert await _counts(resources) == before
    lines = second.stdout.splitlines()
    assert f"demo provider {DEMO_EMAIL} exists (its password was printed when created)" in lines
    assert f"demo model {DEMO_MODEL} (public): exists" in lines
    assert "  version 1: ready and live" in lines
    assert (
        "replay: 2 slots, 0 new runs, 2 already recorded; 0 forecasts recorded, "
        "all labelled simulated"
    ) in lines, lines


async def test_without_root_the_replay_is_skipped_with_a_reason(
    resources: Resources, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await load_demo_bars(resources.db)
    before = await _counts(resources)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    summary = await ensure_demo(resources.db, settings, replay=5)
    assert "not root" in summary.skipped and summary.slots == 0
    # The provider and model exist (created now or before); no run was attempted.
    counts = await _counts(resources)
    assert counts[3:] == before[3:]
    async with resources.db.session() as session:
        assert await session.scalar(select(Model.id).where(Model.name == DEMO_MODEL))
