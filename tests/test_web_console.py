"""The provider console in Chromium against the real stack: a provider creates a model in the
browser, pushes its code with the `foretell` CLI, watches the build log arrive live, publishes
it, sets a plan, dry-runs it and reads the log; bad input shows the server's field messages;
a subscriber sees no console. axe on every page, screenshots at 390 and 1440 px."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from sqlalchemy import select

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.common.v1 import common_pb2
from foretell.db import Model, Version
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from foretell.settings import Settings
from foretell.subscription.v1 import subscription_service_pb2 as sub_pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as sub_grpc
from tests import _web
from tests._envoy import Envoy
from tests._records import HOUR, Made, make_model, record_run
from tests._registry import model_name, run_builds
from tests._web import browser, check, page
from tests.conftest import PASSWORD, SignedIn
from tests.test_cli import _ok, _run
from tests.test_runs import AS_OF, add_bars, symbols

__all__ = ["browser", "page"]  # fixtures, imported to be shared

pytestmark = [*_web.NEEDS_BROWSER, pytest.mark.timeout(300)]


@pytest.fixture(autouse=True)
def _dry_lane(dry_lane: None) -> None:
    """The console's dry runs run on the dry lane's workers."""


async def _sign_in(page: Any, who: SignedIn) -> None:
    await page.goto("/sign-in")
    await page.get_by_label("Email").fill(who.email)
    await page.get_by_label("Password").fill(who.password)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Catalog").wait_for()


async def _field_message(page: Any, label: str) -> str:
    """The message shown next to the field (the element its aria-describedby names)."""
    field = page.get_by_label(label, exact=True)
    await field.and_(page.locator("[aria-invalid='true']")).wait_for()
    described = await field.get_attribute("aria-describedby")
    assert described, label
    text: str = (await page.locator(f"#{described}").inner_text()).strip()
    return text


async def test_a_provider_runs_a_model_from_the_console(
    page: Any,
    channel: aio.Channel,
    envoy: Envoy,
    resources: Resources,
    settings: Settings,
    tmp_path: Path,
) -> None:
    provider = await _web.signed_up(account_grpc.AccountServiceStub(channel))
    symbol, _ = symbols()
    await add_bars(resources, symbol, rising=True)
    await _sign_in(page, provider)

    nav = page.get_by_role("navigation", name="Main")
    await nav.get_by_role("link", name="Console", exact=True).click()
    await page.get_by_role("heading", name="My models").wait_for()
    await page.get_by_role("heading", name="No models yet").wait_for()
    await check(page, "console-empty")

    # Bad input: the server's messages, next to the fields they name.
    name_label = "Name (permanent: 3 to 40 characters, a-z, 0-9 and '-')"
    symbols_label = "Symbols (comma-separated, e.g. EURUSD, GOOG; fixed once created)"
    horizon_label = "Horizon (bars ahead, 1 to 1000)"
    await page.get_by_role("link", name="Create a model").click()
    await page.get_by_label(name_label).fill("X!")
    await page.get_by_label(symbols_label).fill("eur usd!")
    await page.get_by_label(horizon_label).fill("0")
    await page.get_by_role("button", name="Create model").click()
    await page.get_by_text("Please correct the fields marked below.").wait_for()
    assert "lowercase letters" in await _field_message(page, name_label)
    assert "A-Z" in await _field_message(page, symbols_label)
    assert "1 to 1000" in await _field_message(page, horizon_label)
    assert await _field_message(page, "Title")
    await check(page, "console-create-errors")

    name = model_name()
    await page.get_by_label(name_label).fill(name)
    await page.get_by_label("Title").fill("Console momentum")
    await page.get_by_label("Description").fill("Made in the console, pushed with the CLI.")
    await page.get_by_label(symbols_label).fill(symbol)
    await page.get_by_label(horizon_label).fill("1")
    await page.get_by_role("button", name="Create model").click()
    await page.wait_for_url(re.compile(f"/console/models/{name}$"))
    await page.get_by_role("heading", name="Console momentum").wait_for()
    commands = await page.get_by_test_id("push-commands").inner_text()
    assert f"foretell push {name} --url {envoy.base_url}" in commands
    assert f"foretell init {name} --symbol {symbol} --resolution 1h --horizon 1" in commands
    await check(page, "console-model-new")

    # The CLI pushes; the page finds the version and follows its build log live.
    config = tmp_path / "config"
    url = envoy.base_url
    _ok(await _run(config, url, "login", "--email", provider.email, "--password-stdin",
                   stdin=f"{PASSWORD}\n"))  # fmt: skip
    folder = tmp_path / name
    _ok(await _run(config, url, "init", str(folder), "--symbol", symbol))
    model_py = folder / "model.py"
    model_py.write_text(
        model_py.read_text().replace(
            "def predict(ctx):\n", "def predict(ctx):\n    print('hello from the console')\n"
        )
    )
    pushing = asyncio.create_task(_run(config, url, "push", str(folder)))
    state = page.get_by_test_id("build-state")
    await state.filter(has_text="queued").wait_for(timeout=30_000)
    log = page.get_by_test_id("build-log")
    assert "imported model:predict" not in await log.inner_text()
    await run_builds(settings)
    await log.filter(has_text="imported model:predict").wait_for()
    await state.filter(has_text="ready").wait_for()
    pushed = _ok(await pushing)
    assert f"model {name} version 1" in pushed.stdout
    await check(page, "console-build-log")

    # Publish, after a confirmation that says what happens to subscribers.
    await page.get_by_role("button", name="Publish version 1").click()
    dialog = page.get_by_role("dialog", name="Publish version 1?")
    await dialog.get_by_text("its forecasts go to every subscriber").wait_for()
    await check(page, "console-publish-confirm")
    await dialog.get_by_role("button", name="Publish").click()
    await page.get_by_text("version 1 live").wait_for()
    await page.locator("tr[data-version='1']").get_by_text("live").wait_for()

    # The plan: a bad value shows its message; the rule is shown in the form.
    plan = page.locator("#plan")
    await plan.get_by_text("A change applies from each subscriber's next period").wait_for()
    await page.get_by_label("Price a month").fill("19.00")
    await page.get_by_label("Free trial days (0 to 30)").fill("45")
    await plan.get_by_role("button", name="Save plan").click()
    assert "0 to 30" in await _field_message(page, "Free trial days (0 to 30)")
    await page.get_by_label("Free trial days (0 to 30)").fill("7")
    await plan.get_by_role("button", name="Save plan").click()
    await plan.get_by_role("status").filter(has_text="Saved").wait_for()
    assert "7-day free trial, then $19.00 a month" in await plan.inner_text()

    # A dry run at an as_of: its forecasts and its log when it ends.
    await page.get_by_label("Version", exact=True).select_option("1")
    await page.get_by_label("As of (UTC, on a bar boundary; empty: the latest)").fill(
        AS_OF.strftime("%Y-%m-%dT%H:%M")
    )
    await page.get_by_role("button", name="Dry run").click()
    result = page.get_by_test_id("dry-result")
    await result.wait_for(timeout=60_000)
    assert "ok" in await result.locator("strong").inner_text()
    assert symbol in await result.locator("table").inner_text()
    assert "hello from the console" in await page.get_by_test_id("dry-log").inner_text()
    await page.get_by_label("Kind").select_option("RUN_KIND_DRY")
    await page.get_by_label("Outcome").select_option("RUN_OUTCOME_OK")
    await page.get_by_role("button", name=re.compile("Details of the run")).click()
    assert "hello from the console" in await page.get_by_test_id("run-detail").inner_text()
    await page.get_by_label("Outcome").select_option("RUN_OUTCOME_TIMEOUT")
    await page.get_by_text("No dry runs with this outcome.").wait_for()
    await check(page, "console-model")

    # Edit the details: public now, with tags.
    await page.get_by_label("Tags (comma-separated)").fill("fx, momentum")
    await page.get_by_label("Visibility", exact=True).select_option("VISIBILITY_PUBLIC")
    await page.get_by_role("button", name="Save details").click()
    await page.locator("#details").get_by_role("status").filter(has_text="Saved").wait_for()
    await page.get_by_role("link", name="public page").wait_for()

    # A subscriber starts the trial; two live runs are recorded (one failed).
    reader = await _web.signed_up(
        account_grpc.AccountServiceStub(channel), role=account_pb.ROLE_SUBSCRIBER
    )
    await sub_grpc.SubscriptionServiceStub(channel).Subscribe(
        sub_pb.SubscribeRequest(model=name), metadata=reader.metadata
    )
    async with resources.db.session() as session:
        model_id, version_id = (
            await session.execute(
                select(Model.id, Version.id)
                .join(Version, Version.model_id == Model.id)
                .where(Model.name == name)
            )
        ).one()
    made = Made(provider, name, model_id, {1: version_id}, (symbol,))
    await record_run(resources, made, AS_OF - HOUR, outcome="ok")
    await record_run(resources, made, AS_OF, outcome="model_error")

    # Back on My models: live version, visibility, subscribers, the last runs at a glance.
    await page.get_by_role("link", name="My models").click()
    row = page.locator(f"tr[data-model='{name}']")
    await row.wait_for()
    text = await row.inner_text()
    assert "v1" in text and "public" in text and "1 trialing" in text and "1 failed" in text
    assert await row.get_by_role("list", name="Last 2 live runs, newest first").count() == 1
    await check(page, "console")


async def test_a_subscriber_sees_no_console(page: Any, channel: aio.Channel) -> None:
    reader = await _web.signed_up(
        account_grpc.AccountServiceStub(channel), role=account_pb.ROLE_SUBSCRIBER
    )
    await _sign_in(page, reader)
    nav = page.get_by_role("navigation", name="Main")
    await nav.get_by_role("link", name="Catalog", exact=True).wait_for()
    assert await nav.get_by_role("link", name="Console", exact=True).count() == 0
    await page.goto("/console")
    await page.get_by_role("heading", name="You may not see this").wait_for()
    await page.goto(f"/console/models/{model_name()}")
    await page.get_by_role("heading", name="You may not see this").wait_for()
    await check(page, "console-forbidden")


async def test_take_offline_and_delete_say_what_happens(
    page: Any, channel: aio.Channel, resources: Resources
) -> None:
    account = account_grpc.AccountServiceStub(channel)
    registry = reg_grpc.RegistryServiceStub(channel)

    async def sign_up() -> SignedIn:
        return await _web.signed_up(account)

    published = await make_model(registry, sign_up, resources, public=False)
    await registry.PublishVersion(
        reg_pb.PublishVersionRequest(model=published.name, number=1),
        metadata=published.owner.metadata,
    )
    fresh = model_name()
    await registry.CreateModel(
        reg_pb.CreateModelRequest(
            model=reg_pb.Model(
                name=fresh, title="Never published", symbols=["EURUSD"],
                resolution=common_pb2.RESOLUTION_1H, horizon=1,
            )
        ),
        metadata=published.owner.metadata,
    )  # fmt: skip
    await _sign_in(page, published.owner)

    await page.goto(f"/console/models/{published.name}")
    await page.get_by_text("version 1 live").wait_for()
    await page.get_by_role("button", name="Take offline…").click()
    dialog = page.get_by_role("dialog", name="Take the model offline?")
    await dialog.get_by_text("Subscriptions go on and are billed as usual").wait_for()
    await dialog.get_by_label("Retire it for good").check()
    await dialog.get_by_text("Every subscription to the model ends now").wait_for()
    await check(page, "console-offline-confirm")
    await dialog.get_by_label("Retire it for good").uncheck()
    await dialog.get_by_role("button", name="Take offline").click()
    await page.get_by_text("private · offline").wait_for()

    # A track record is never deleted: the server says so, and the page shows it.
    await page.get_by_role("button", name="Delete model…").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete for good").click()
    await (
        page.locator("#details")
        .get_by_role("alert")
        .filter(has_text="has published versions")
        .wait_for()
    )

    await page.goto(f"/console/models/{fresh}")
    await page.get_by_role("button", name="Delete model…").click()
    await (
        page.get_by_role("dialog", name=f"Delete {fresh}?")
        .get_by_role("button", name="Delete for good")
        .click()
    )
    await page.wait_for_url(re.compile(r"/console$"))
    await page.locator(f"tr[data-model='{published.name}']").wait_for()
    assert await page.locator(f"tr[data-model='{fresh}']").count() == 0
