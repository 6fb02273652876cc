"""Live forecasts and the ledger check in the browser (Chromium, real stack): a subscriber sees
a forecast appear when a run is recorded (bars ingested with IngestBars, the scheduler and a
live worker run the model in its sandbox) and sees the stream stop when the subscription is
cancelled; the ledger badge verifies an honest record in the browser and names the first bad
entry after a row is changed in SQL."""

from __future__ import annotations

import dataclasses
import re
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from sqlalchemy import text, update

from foretell import calendars
from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.common.v1 import common_pb2
from foretell.datafeed.v1 import datafeed_service_pb2 as df_pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as df_grpc
from foretell.db.models import Model
from foretell.ledger import chain
from foretell.marketdata import set_calendar
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.runtime.lanes import Lane
from foretell.settings import Settings
from foretell.subscription.v1 import subscription_service_pb2 as sub_pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as sub_grpc
from tests import _web
from tests._billing import trial
from tests._records import HOUR, insert_bars, unique_symbol
from tests._registry import model_name, push, run_builds, running_worker, write_model
from tests._web import browser, check, page
from tests.conftest import PASSWORD, MovableClock, SignedIn, SignUp
from tests.test_datafeed import admin, ingest

__all__ = ["admin", "browser", "page"]  # fixtures, imported to be shared

pytestmark = [*_web.NEEDS_BROWSER, pytest.mark.timeout(240)]

MOMENTUM = """
from foretell.sdk import Forecast

def predict(ctx):
    out = []
    for symbol in ctx.symbols:
        bars = ctx.bars(symbol, lookback=5)
        up = bars.close[-1] >= bars.close[0]
        out.append(Forecast(symbol, ctx.target_time, "up" if up else "down", probability=0.6))
    return out
"""


async def sign_in_browser(page: Any, who: SignedIn, target: str) -> None:
    await page.goto(target)
    await page.wait_for_url(re.compile(r"/sign-in"))
    await page.get_by_label("Email").fill(who.email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(re.escape(target) + "$"))


@dataclasses.dataclass(frozen=True)
class LiveModel:
    owner: SignedIn
    name: str
    symbol: str
    slot: datetime


async def live_model(
    channel: aio.Channel,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
) -> LiveModel:
    """A public model, built from source and published so that its next slot is the current
    hour's close: bars of its own symbol up to the previous close; the bar that closes the
    current slot is what the test ingests."""
    registry = reg_grpc.RegistryServiceStub(channel)
    owner = await sign_up()
    symbol = unique_symbol("LV")
    slot = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await insert_bars(resources, symbol, [(slot - (48 - i) * HOUR, 100.0 + i) for i in range(47)])
    await set_calendar(resources.db, symbol, calendars.CRYPTO, by="tests", now=datetime.now(UTC))
    created = await registry.CreateModel(
        reg_pb.CreateModelRequest(
            model=reg_pb.Model(
                name=model_name(), title="Live test", symbols=[symbol],
                resolution=common_pb2.RESOLUTION_1H, horizon=1,
                visibility=reg_pb.VISIBILITY_PUBLIC,
            )
        ),
        metadata=owner.metadata,
    )  # fmt: skip
    name = created.model.name
    folder = write_model(tmp_path / "m", source=textwrap.dedent(MOMENTUM), symbols=(symbol,))
    await push(registry, owner.metadata, name, folder)
    await run_builds(settings)
    # Live from just before the slot (the previous slot's bar is in: it is not this model's).
    clock.offset = (slot - timedelta(seconds=30)) - datetime.now(UTC)
    try:
        await registry.PublishVersion(
            reg_pb.PublishVersionRequest(model=name, number=1), metadata=owner.metadata
        )
    finally:
        clock.offset = timedelta()
    return LiveModel(owner, name, symbol, slot)


@pytest.fixture
async def scheduler_and_worker(
    settings: Settings, resources: Resources, clock: MovableClock
) -> AsyncIterator[None]:
    """The scheduler and a live-lane worker, as `foretell worker` runs them. Only this test's
    model is live (a cycle would otherwise run every model other tests left live), and the
    data deadline is long enough for the current hour's slot whatever the minute."""
    async with resources.db.session.begin() as session:
        await session.execute(
            update(Model)
            .where(Model.live_version.is_not(None))
            .values(live_version=None, live_since=None)
        )
    patient = dataclasses.replace(settings, data_deadline_s=7200)
    async with running_worker(patient, Lane.LIVE, clock, scheduler=True):
        yield


async def test_a_subscriber_sees_a_forecast_arrive_live_and_the_stream_stop_on_cancel(
    page: Any,
    channel: aio.Channel,
    sign_up: SignUp,
    settings: Settings,
    resources: Resources,
    clock: MovableClock,
    tmp_path: Path,
    admin: SignedIn,
    scheduler_and_worker: None,
) -> None:
    m = await live_model(channel, sign_up, settings, resources, clock, tmp_path)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    subscription = await trial(channel, m.owner, reader, m.name)
    await sign_in_browser(page, reader, f"/models/{m.name}")
    live = page.get_by_test_id("live-forecasts")
    await page.locator('[data-testid="live-forecasts"][data-state="live"]').wait_for()
    assert await page.get_by_test_id("live-forecast").count() == 0
    await page.get_by_test_id("ledger-badge").get_by_text("Nothing recorded yet").wait_for()
    # The playback, in a second tab: nothing to play yet, and following too.
    playback = await page.context.new_page()
    await playback.goto(f"/models/{m.name}/playback")
    await playback.locator('[data-testid="live-forecasts"][data-state="live"]').wait_for()
    await playback.get_by_text("No forecasts to play back here.").wait_for()

    # The bar closing the slot lands through the platform: the scheduler starts the run, the
    # worker runs the model in its jail and records it; the page shows it without a reload.
    bar = df_pb.Bars(
        open_times_unix=[int((m.slot - HOUR).timestamp())],
        opens=[150.0], highs=[151.0], lows=[149.0], closes=[150.0], volumes=[10.0],
    )  # fmt: skip
    await ingest(df_grpc.DataFeedServiceStub(channel), admin.metadata, m.symbol, bar)
    arrived = page.get_by_test_id("live-forecast")
    await arrived.first.wait_for(timeout=60_000)
    assert await arrived.count() == 1
    assert m.symbol in await arrived.first.inner_text()
    assert "up" in await arrived.first.inner_text()
    # The live run grew the chain: the badge checks it again rather than stay "nothing yet".
    detail = page.get_by_test_id("ledger-badge").get_by_test_id("ledger-detail")
    await detail.wait_for()
    assert "1 entry recomputed" in await detail.inner_text()
    await check(page, "live-forecast-arrived", network_idle=False)
    # The playback extends: the new forecast is drawn and counted at the cursor (the end).
    await playback.locator('.controls[data-ready="true"]').wait_for()
    assert await playback.get_by_test_id("made").inner_text() == "1"
    await check(playback, "live-playback-extended", network_idle=False)

    # Cancelled at once: the open stream ends and the page says why.
    await sub_grpc.SubscriptionServiceStub(channel).CancelSubscription(
        sub_pb.CancelSubscriptionRequest(id=subscription.id, immediately=True),
        metadata=reader.metadata,
    )
    await page.locator('[data-testid="live-forecasts"][data-state="stopped"]').wait_for(
        timeout=20_000
    )
    status = await live.get_by_test_id("live-status").inner_text()
    assert "stopped" in status.lower(), status
    stopped = playback.locator('[data-testid="live-forecasts"][data-state="stopped"]')
    await stopped.wait_for(timeout=20_000)
    await playback.close()
    await check(page, "live-forecast-stopped")


async def test_the_ledger_badge_verifies_in_the_browser_and_names_the_first_bad_entry(
    page: Any, channel: aio.Channel, resources: Resources, sign_up: SignUp, settings: Settings
) -> None:
    seeded = await _web.seed_model(
        channel, resources, title="Ledger check", runs=40, price_minor=900, trial_days=7, seed=7
    )
    await chain.checkpoint(resources.db, settings.ledger_keys_dir, resources.clock)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await trial(channel, seeded.made.owner, reader, seeded.made.name)
    target = f"/models/{seeded.made.name}"
    await sign_in_browser(page, reader, target)
    badge = page.get_by_test_id("ledger-badge")
    await page.locator('[data-testid="ledger-badge"][data-state="verified"]').wait_for()
    detail = await badge.get_by_test_id("ledger-detail").inner_text()
    assert "40 entries recomputed" in detail, detail
    assert "40 forecasts cross-checked" in detail, detail
    assert "foretell verify" in await badge.inner_text()
    await check(page, "ledger-verified", network_idle=False)

    # One forecast changed behind the platform's back: the 12th run's.
    async with resources.db.session.begin() as session:
        run_id = await session.scalar(
            text("SELECT run_id FROM ledger_entries WHERE model_id = :model AND sequence = 12"),
            {"model": seeded.made.model_id},
        )
        assert isinstance(run_id, uuid.UUID)
        await session.execute(
            text("UPDATE forecasts SET probability = 0.99 WHERE run_id = :run"), {"run": run_id}
        )
    await page.reload()
    await page.locator('[data-testid="ledger-badge"][data-state="mismatch"]').wait_for()
    problem = await badge.get_by_test_id("ledger-problem").inner_text()
    assert "First failing entry: 12" in problem, problem
    assert "hash mismatch" in problem, problem
    await check(page, "ledger-mismatch", network_idle=False)
