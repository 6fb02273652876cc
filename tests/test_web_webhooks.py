"""The webhooks page in Chromium against the real stack, through an Envoy of its own in front of
services that allow endpoints on 127.0.0.1: a subscriber adds an endpoint (its secret shown
once), sends a test event that fails once and is retried, and reads the delivery log; axe and
screenshots at 390 and 1440 px (the page, browser and checks of tests/_web.py)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.composition import SERVICES
from foretell.runtime import Resources
from foretell.settings import Address, Settings
from foretell.subscription.v1 import subscription_service_pb2 as pb
from foretell.subscription.v1 import subscription_service_pb2_grpc as pb_grpc
from foretell.webhooks import verify
from tests import _envoy, _web
from tests._billing import sold_model
from tests._records import BASE, record
from tests._web import browser, check, page
from tests._webhooks import dispatching, lenient, lenient_services, receiving
from tests.conftest import MovableClock, SignUp

__all__ = ["browser", "page"]  # fixtures, imported to be shared

pytestmark = [*_web.NEEDS_BROWSER, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
async def hooks_stack(
    settings: Settings, session_clock: MovableClock
) -> AsyncIterator[tuple[Resources, int]]:
    async with lenient_services(settings, session_clock) as stack:
        yield stack


@pytest.fixture(scope="module")
async def envoy(
    settings: Settings, hooks_stack: tuple[Resources, int], tmp_root: Path
) -> AsyncIterator[_envoy.Envoy]:
    """Overrides the session's gateway for this module: the page's API calls reach services
    that accept a receiver on 127.0.0.1."""
    upstream = Address("127.0.0.1", hooks_stack[1])
    async with _envoy.running_envoy(
        lenient(settings), dict.fromkeys(SERVICES, upstream), tmp_root / "envoy-webhooks"
    ) as gateway:
        yield gateway


async def test_delivery_log_and_test_event(
    page: Any,
    channel: aio.Channel,
    hooks_stack: tuple[Resources, int],
    sign_up: SignUp,
    resources: Resources,
) -> None:
    model = await sold_model(channel, sign_up, resources, trial_days=14)
    reader = await sign_up(account_pb.ROLE_SUBSCRIBER)
    await pb_grpc.SubscriptionServiceStub(channel).Subscribe(
        pb.SubscribeRequest(model=model.name), metadata=reader.metadata
    )
    await page.goto("/subscriptions")
    await page.get_by_label("Email").fill(reader.email)
    await page.get_by_label("Password").fill(reader.password)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("link", name=f"Webhooks of {model.name}").click()
    # The heading names the model by its title, not its internal name.
    await page.get_by_role("heading", name="Webhooks · Test model").wait_for()
    await page.get_by_text("No endpoints yet.").wait_for()
    await check(page, "webhooks-empty")

    # A URL the platform refuses: the server's message, beside the field.
    await page.get_by_label("Endpoint URL (https)").fill("ftp://example.org/hook")
    await page.get_by_role("button", name="Add endpoint").click()
    await page.get_by_text("Please correct the fields marked below.").wait_for()
    described = await page.get_by_label("Endpoint URL (https)").get_attribute("aria-describedby")
    assert "http" in await page.locator(f"#{described}").inner_text()

    async with receiving(script=[500]) as receiver, dispatching(hooks_stack[0]):
        await page.get_by_label("Endpoint URL (https)").fill(receiver.url)
        await page.get_by_label("Description (optional)").fill("trading desk")
        await page.get_by_role("button", name="Add endpoint").click()
        secret = (await page.get_by_test_id("secret").inner_text()).strip()
        assert secret.startswith("whsec_")
        endpoint = page.locator(f'li[data-endpoint="{receiver.url}"]')
        await endpoint.get_by_role("button", name="Send a test event").click()
        await page.get_by_text("Test event queued").wait_for()
        # Failed once (500), retried, delivered: the log follows by itself.
        state = page.get_by_test_id("delivery-state").first
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=delivery-state]')?.textContent"
            ".trim() === 'delivered'"
        )
        assert await state.inner_text() == "delivered"
        codes = await page.get_by_test_id("attempt-status").all_inner_texts()
        assert codes == ["500", "200"]
        assert len(receiver.received) == 2
        for got in receiver.received:
            verify(secret, got.headers, got.body, time.time())

        # A recorded forecast arrives too, and is listed after a refresh.
        await record(resources, model, BASE, symbols=("EURUSD",))
        await receiver.wait_for(lambda got: len(got) == 3)
        await page.get_by_role("button", name="Refresh").click()
        await page.get_by_text(re.compile("EURUSD as of")).wait_for()
        await check(page, "webhooks")
