"""A catalog for the web app's tests: public models with plans and a record long enough to
judge (or not), on synthetic hourly bars, recorded the way `execute_run` records them; and a
Chromium driven by Playwright (Debian's package: no browser download here)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from sqlalchemy import select

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.auth.policy import Role
from foretell.calendars import CRYPTO
from foretell.common.v1 import common_pb2
from foretell.datafeed.v1 import datafeed_service_pb2 as feed_pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as feed_grpc
from foretell.db.models import Version
from foretell.marketdata import set_calendar
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.runtime.lanes import Lane, queue_name
from foretell.scheduler import run_job_id
from foretell.services.account._queries import create_user
from foretell.subscription.v1 import subscription_service_pb2 as sub_pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as sub_grpc
from foretell.worker import close_worker, create_worker
from tests._envoy import Envoy
from tests._records import HOUR, F, Made, insert_bars, make_model, record_run, unique_symbol
from tests._registry import push, run_builds, write_model
from tests.conftest import PASSWORD, SignedIn, unique_email

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FORETELL_TEST_ARTIFACTS", ROOT / ".build" / "test-artifacts"))
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ARTIFACTS / "web"
WIDTHS = (390, 1440)


def chromium_path() -> str | None:
    return os.environ.get("FORETELL_CHROMIUM") or shutil.which("chromium")


@dataclass(frozen=True)
class WebModel:
    made: Made
    title: str
    scored: int


async def signed_up(
    account: account_grpc.AccountServiceAsyncStub,
    role: account_pb.Role.ValueType = account_pb.ROLE_PROVIDER,
) -> SignedIn:
    email = unique_email("web")
    await account.CreateUser(
        account_pb.CreateUserRequest(
            email=email, password=PASSWORD, display_name="Web Provider", role=role
        )
    )
    login = await account.Login(account_pb.LoginRequest(email=email, password=PASSWORD))
    return SignedIn(login.user, login.tokens, email, PASSWORD)


async def seed_model(
    channel: aio.Channel,
    resources: Resources,
    *,
    title: str,
    runs: int,
    price_minor: int,
    trial_days: int,
    seed: int,
) -> WebModel:
    """A public, published model of a new provider: hourly bars of its own symbol from 40 days
    ago, `runs` live runs (one forecast each, with a probability and a predicted return),
    most recorded long enough ago to be in the delayed sample; and its plan."""
    account = account_grpc.AccountServiceStub(channel)
    registry = reg_grpc.RegistryServiceStub(channel)

    async def owner() -> SignedIn:
        return await signed_up(account)

    symbol = unique_symbol("FX")
    made = await make_model(registry, owner, resources, symbols=(symbol,))
    meta = made.owner.metadata
    await registry.UpdateModel(
        reg_pb.UpdateModelRequest(
            model=reg_pb.Model(name=made.name, title=title, description=f"{title}: a test model."),
            update_mask=field_mask_pb2.FieldMask(paths=["title", "description"]),
        ),
        metadata=meta,
    )
    await registry.PublishVersion(
        reg_pb.PublishVersionRequest(model=made.name, number=1), metadata=meta
    )
    await sub_grpc.SubscriptionServiceStub(channel).UpdatePlan(
        sub_pb.UpdatePlanRequest(
            model=made.name,
            plan=sub_pb.Plan(price_minor=price_minor, currency="USD", trial_days=trial_days),
        ),
        metadata=meta,
    )
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=40)
    closes = [1.1]
    for _ in range(runs + 40):
        closes.append(closes[-1] * math.exp(rng.gauss(0.0002, 0.002)))
    await insert_bars(resources, symbol, [(start + i * HOUR, c) for i, c in enumerate(closes)])
    # Round the clock, weekends too: every synthetic bar is a bar of the symbol's calendar.
    await set_calendar(resources.db, symbol, CRYPTO, by="tests", now=datetime.now(UTC))
    for i in range(runs):
        as_of = start + (i + 11) * HOUR
        up = rng.random() < 0.55
        probability = round(0.5 + rng.random() * 0.4, 3)
        forecast = F("up" if up else "down", (0.002 if up else -0.002), probability)
        await record_run(resources, made, as_of, [forecast], recorded_at=as_of + HOUR)
    return WebModel(made, title, runs)


# The browser tests' marks: each module adds its own timeout to these.
NEEDS_BROWSER = [
    pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)"),
    pytest.mark.skipif(
        not (ROOT / "web/dist/index.html").exists(), reason="web app not built (make web)"
    ),
]


# The fixtures `browser` and `page`, for the browser tests to import (with `__all__` naming
# them, so that the import counts as used).
@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        opened = await playwright.chromium.launch(executable_path=chromium_path())
        yield opened
        await opened.close()


@pytest.fixture
async def page(browser: Any, envoy: Envoy) -> AsyncIterator[Any]:
    """A page on the gateway with axe-core loaded; fails the test on a page error or a CSP
    refusal, and photographs the last page."""
    context = await browser.new_context(
        base_url=envoy.base_url, viewport={"width": 1440, "height": 900}
    )
    # Injected through the DevTools protocol, so the page's CSP (no inline scripts) holds.
    await context.add_init_script(path=str(AXE))
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    opened = await context.new_page()
    problems: list[str] = []

    def on_console(message: Any) -> None:
        # The API reference renderer (Scalar) tries its own servers (fonts, its agent) even when
        # told not to; the CSP refusing them is the point: nothing leaves the site.
        text = message.text
        refused = message.type == "error" and "Content Security Policy" in text
        if refused and ".scalar.com" not in text:
            problems.append(text)

    opened.on("console", on_console)
    opened.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    yield opened
    SHOTS.mkdir(parents=True, exist_ok=True)
    await opened.screenshot(path=str(SHOTS / "last-page.png"))
    await context.close()
    assert problems == [], problems


async def _axe(page: Any, label: str) -> None:
    result = await page.evaluate(
        "() => axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
    )
    violations = [
        {"id": v["id"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
    ]
    assert violations == [], f"{label}: {json.dumps(violations)}"


# After a resize or a change of theme: the resize observers and media-query listeners run
# before the next frame, and the charts they tell draw in the frame after it.
NEXT_FRAMES = (
    "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => "
    "requestAnimationFrame(done))))"
)


async def check(page: Any, name: str, *, network_idle: bool = True) -> None:
    """axe-core finds no WCAG 2.1 AA violation at 390 and 1440 px, in the light and the dark
    theme, and nothing is wider than the phone's screen; screenshots of each. A page with an
    open stream is never network-idle: the caller waits for what it shows instead
    (`network_idle=False`)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    if network_idle:
        await page.wait_for_load_state("networkidle")
    for scheme, suffix in (("light", ""), ("dark", "-dark")):
        await page.emulate_media(color_scheme=scheme)
        for width in WIDTHS:
            await page.set_viewport_size({"width": width, "height": 900})
            await page.evaluate(NEXT_FRAMES)
            await _axe(page, f"{name} at {width}px, {scheme}")
            if width == WIDTHS[0]:
                wider = await page.evaluate("document.documentElement.scrollWidth")
                assert wider <= width, f"{name}: the page is {wider}px wide at {width}px"
            await page.screenshot(path=str(SHOTS / f"{name}-{width}{suffix}.png"), full_page=True)
    await page.set_viewport_size({"width": 1440, "height": 900})
    await page.emulate_media(color_scheme="light")


# Version 2 of a seeded model: a real bundle, built and run by the platform.
FRESH_MODEL = """
from foretell.sdk import Forecast


def predict(ctx):
    return [
        Forecast(s, ctx.target_time, "up", predicted_return=0.003, probability=0.77)
        for s in ctx.symbols
    ]
"""


async def fresh_run(
    channel: aio.Channel, resources: Resources, model: WebModel, tmp: Path
) -> datetime:
    """A fresh forecast the way the platform makes one: the provider uploads a model, the build
    lane builds it and the provider publishes it (version 2, live); an admin ingests the bar
    that closes this hour's slot through DataFeedService.IngestBars; the live lane's worker
    runs the version for that slot in the sandbox and records it. The job is the one the
    scheduler enqueues for a due slot (a whole scheduler cycle would also run or mark missed
    every other live model of the test session). Returns the slot (the forecast's as_of)."""
    settings = resources.settings
    made = model.made
    registry = reg_grpc.RegistryServiceStub(channel)
    folder = write_model(tmp / "fresh", source=FRESH_MODEL, symbols=(made.symbol,))
    await push(registry, made.owner.metadata, made.name, folder)
    await run_builds(settings)
    await registry.PublishVersion(
        reg_pb.PublishVersionRequest(model=made.name, number=2), metadata=made.owner.metadata
    )
    email = unique_email("ops")
    await create_user(
        resources.db, email=email, password=PASSWORD, display_name="Ops", role=Role.ADMIN,
        now=resources.clock(),
    )  # fmt: skip
    login = await account_grpc.AccountServiceStub(channel).Login(
        account_pb.LoginRequest(email=email, password=PASSWORD)
    )
    slot = resources.clock().replace(minute=0, second=0, microsecond=0)
    header = feed_pb.IngestBarsHeader(symbol=made.symbol, resolution=common_pb2.RESOLUTION_1H)
    bar = feed_pb.Bars(
        open_times_unix=[int((slot - HOUR).timestamp())],
        opens=[1.1], highs=[1.101], lows=[1.099], closes=[1.1005], volumes=[10.0],
    )  # fmt: skip
    await feed_grpc.DataFeedServiceStub(channel).IngestBars(
        iter([feed_pb.IngestBarsRequest(header=header), feed_pb.IngestBarsRequest(bars=bar)]),
        metadata=(("authorization", f"Bearer {login.tokens.access_token}"),),
    )
    async with resources.db.session() as session:
        version = await session.scalar(
            select(Version).where(Version.model_id == made.model_id, Version.number == 2)
        )
    assert version is not None and version.build_state == "ready", version
    await resources.redis.enqueue_job(
        "run_version", str(version.id), slot.isoformat(),
        _job_id=run_job_id(version.id, slot), _queue_name=queue_name(settings, Lane.LIVE),
    )  # fmt: skip
    worker = create_worker(settings, lane=Lane.LIVE, burst=True, clock=resources.clock)
    try:
        await worker.async_run()
    finally:
        await close_worker(worker)
    return slot
