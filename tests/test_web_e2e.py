"""The web app end to end in Chromium (Debian's package, driven by Playwright) against the real
stack: Envoy serving the built app and the API, the in-process services, PostgreSQL and Redis.
Every page is checked with axe-core (WCAG 2.1 AA) and photographed at 390 and 1440 px wide
(under .build/test-artifacts/web, or $FORETELL_TEST_ARTIFACTS)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from grpc import aio

from foretell.runtime import Resources
from tests import _web
from tests._envoy import Envoy
from tests._web import SHOTS, browser, check, page
from tests.conftest import PASSWORD, unique_email

__all__ = ["browser", "page"]  # fixtures, imported to be shared

pytestmark = [*_web.NEEDS_BROWSER, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
async def catalog(channel: aio.Channel, resources: Resources) -> list[_web.WebModel]:
    judged = await _web.seed_model(
        channel, resources, title="Web momentum", runs=150, price_minor=4900, trial_days=14, seed=1
    )
    short = await _web.seed_model(
        channel, resources, title="Web newcomer", runs=20, price_minor=1500, trial_days=0, seed=2
    )
    return [judged, short]


async def sign_up_in_browser(page: Any, next_path: str = "/") -> str:
    email = unique_email("browser")
    await page.goto(next_path)
    await page.wait_for_url(re.compile(r"/sign-in"))
    await page.get_by_role("link", name="Create an account").click()
    await page.get_by_label("Name shown to others").fill("Trader Tess")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password (at least 10 characters)").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await page.get_by_role("heading", name="Catalog").wait_for()
    return email


async def test_bad_input_shows_the_servers_field_messages(page: Any) -> None:
    await page.goto("/sign-up")
    await page.get_by_label("Name shown to others").fill("   ")
    await page.get_by_label("Email").fill("not-an-email")
    await page.get_by_label("Password (at least 10 characters)").fill("short")
    await page.get_by_role("button", name="Create account").click()
    await page.get_by_text("Please correct the fields marked below.").wait_for()
    for field in ("Email", "Password (at least 10 characters)", "Name shown to others"):
        described = await page.get_by_label(field).get_attribute("aria-describedby")
        assert described, field
        assert (await page.locator(f"#{described}").inner_text()).strip()
    assert await page.get_by_label("Email").get_attribute("aria-invalid") == "true"
    await check(page, "sign-up-errors")
    await page.goto("/sign-in")
    await check(page, "sign-in")


async def test_subscriber_journey(
    page: Any,
    envoy: Envoy,
    channel: aio.Channel,
    catalog: list[_web.WebModel],
    resources: Resources,
    tmp_path: Path,
) -> None:
    judged, short = catalog
    await sign_up_in_browser(page)
    # The catalog: both models, the short record labelled and listed after the judged ones.
    card = page.locator(f'li[data-model="{judged.made.name}"]')
    await card.wait_for()
    short_card = page.locator(f'li[data-model="{short.made.name}"]')
    await short_card.get_by_text("Too short to judge").wait_for()
    await page.get_by_label("Sort by").select_option("price")
    names = await page.locator("li[data-model]").evaluate_all(
        "cards => cards.map(c => c.dataset.model)"
    )
    assert names.index(judged.made.name) < names.index(short.made.name), await card.inner_text()
    await page.get_by_label("Symbol").select_option(short.made.symbol)
    assert await page.locator("li[data-model]").count() == 1
    await page.get_by_label("Symbol").select_option("")
    await check(page, "catalog")

    # The model page: the measures shown are the REST response's.
    await card.get_by_role("link", name=judged.title).click()
    await page.get_by_test_id("offer").wait_for()
    offer = await page.get_by_test_id("offer").inner_text()
    assert "14-day free trial, then" in offer
    assert "49.00" in offer
    access = await page.evaluate("JSON.parse(localStorage.getItem('foretell.session')).accessToken")
    async with httpx.AsyncClient(
        base_url=envoy.base_url, headers={"authorization": f"Bearer {access}"}
    ) as client:
        body = (await client.get(f"/v1/models/{judged.made.name}/performance")).json()
    measures = body["overall"]["model"]
    hit_rate = await page.locator(
        '[data-testid="measures"] td[data-measure="hitRate"]'
    ).inner_text()
    assert hit_rate.strip() == f"{measures['hitRate'] * 100:.1f}%"
    sharpe = await page.locator('[data-testid="measures"] td[data-measure="sharpe"]').inner_text()
    assert sharpe.strip() == f"{measures['sharpe']:.2f}".replace("-", "-")
    # The report's conventions, as the REST response states them.
    await page.get_by_test_id("conventions").locator("summary").click()
    per_year = await page.get_by_test_id("periods-per-year").inner_text()
    assert per_year.startswith(f"{body['conventions']['periodsPerYear']:,.1f}"), per_year
    assert body["conventions"]["realized"] in await page.get_by_test_id("conventions").inner_text()
    await page.get_by_role("button", name="Show the reliability diagram").click()
    await page.get_by_role("img", name=re.compile("Reliability diagram")).wait_for()
    await check(page, "model")

    # Playback before subscribing: the delayed sample, and the page says so.
    await page.get_by_role("link", name="Play back the record").click()
    await page.get_by_test_id("delayed").wait_for()
    await page.locator('[data-ready="true"]').wait_for()
    made_before = int(await page.get_by_test_id("made").inner_text())
    await page.get_by_role("button", name="Step forward").click()
    await page.get_by_role("button", name="Step forward").click()
    made_after = int(await page.get_by_test_id("made").inner_text())
    assert made_after >= made_before
    await page.get_by_role("button", name="Step back").click()
    scrubber = page.get_by_label(re.compile("^Cursor"))
    maximum = int(await scrubber.get_attribute("max"))
    await scrubber.fill(str(maximum))
    scored_calls = int(await page.get_by_test_id("calls").inner_text())
    assert scored_calls > 0
    await scrubber.fill("0")
    assert int(await page.get_by_test_id("calls").inner_text()) == 0
    await page.get_by_label("Speed").select_option("64")
    await page.get_by_role("button", name="▶ Play").click()
    await page.get_by_role("button", name="▶ Play").wait_for()  # it ran to the end
    assert int(await page.get_by_test_id("calls").inner_text()) == scored_calls
    await check(page, "playback-sample")

    # Start the trial; the full record, and a fresh forecast recorded now, are readable.
    await page.get_by_role("link", name=re.compile(judged.title)).click()
    await page.get_by_role("button", name="Start the 14-day free trial").click()
    await page.get_by_test_id("subscription-state").wait_for()
    assert await page.get_by_test_id("subscription-state").inner_text() == "trialing"
    # A fresh forecast, made by the platform: built, run in the sandbox by the worker.
    fresh_as_of = await _web.fresh_run(channel, resources, judged, tmp_path)
    async with httpx.AsyncClient(
        base_url=envoy.base_url, headers={"authorization": f"Bearer {access}"}
    ) as client:
        listed = (
            await client.get(f"/v1/models/{judged.made.name}/forecasts", params={"pageSize": 1})
        ).json()
    assert listed.get("delayedSample") is not True
    (newest,) = listed["forecasts"]
    assert datetime.fromisoformat(newest["asOf"]) == fresh_as_of
    assert (newest["version"], newest["probability"]) == (2, 0.77), newest
    await page.get_by_role("link", name="Play back the record").click()
    await page.locator('[data-ready="true"]').wait_for()
    assert await page.get_by_test_id("delayed").count() == 0
    await scrubber.fill(str(int(await scrubber.get_attribute("max"))))
    assert int(await page.get_by_test_id("made").inner_text()) == judged.scored + 1
    await check(page, "playback-subscribed")

    # API keys: create (shown once), use it with fetch, revoke.
    await page.get_by_role("link", name="API keys").click()
    await page.get_by_label("Name of the new key").fill("")
    await page.get_by_role("button", name="Create key").click()
    await page.locator("#key-name-error").wait_for()
    await page.get_by_label("Name of the new key").fill("notebook")
    await page.get_by_role("button", name="Create key").click()
    secret = (await page.get_by_test_id("secret").inner_text()).strip()
    await page.get_by_role("button", name="Copy the key").click()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    status = await page.evaluate(
        "async (key) => (await fetch('/v1/models', {headers: {authorization: 'Bearer ' + key}}))"
        ".status",
        secret,
    )
    assert status == 200
    await check(page, "api-keys")
    await page.get_by_role("button", name="Revoke notebook").click()
    await page.locator('tr[data-key="notebook"]').get_by_text("revoked").wait_for()
    status = await page.evaluate(
        "async (key) => (await fetch('/v1/models', {headers: {authorization: 'Bearer ' + key}}))"
        ".status",
        secret,
    )
    assert status == 401

    # Subscriptions: cancel at period end, then resume.
    await page.get_by_role("link", name="Subscriptions").click()
    sub = page.locator(f'li[data-model="{judged.made.name}"]')
    await sub.get_by_role("button", name="Cancel at period end").click()
    await sub.get_by_test_id("ending").wait_for()
    await check(page, "subscriptions")
    await sub.get_by_role("button", name="Resume").click()
    await sub.get_by_role("button", name="Cancel at period end").wait_for()
    assert await sub.get_by_test_id("ending").count() == 0


async def test_401_mid_session_comes_back_to_the_same_page(
    page: Any, catalog: list[_web.WebModel]
) -> None:
    judged = catalog[0]
    email = await sign_up_in_browser(page)
    target = f"/models/{judged.made.name}"
    await page.goto(target)
    await page.get_by_test_id("offer").wait_for()
    # The session ends behind the app's back: tokens the server no longer accepts.
    await page.evaluate(
        """() => {
          const s = JSON.parse(localStorage.getItem('foretell.session'))
          s.accessToken = 'expired'; s.refreshToken = 'revoked'
          s.accessExpires = Date.now() + 3600000
          localStorage.setItem('foretell.session', JSON.stringify(s))
        }"""
    )
    await page.reload()
    await page.wait_for_url(re.compile(r"/sign-in\?next="))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(re.escape(target) + "$"))
    await page.get_by_test_id("offer").wait_for()


async def test_error_pages(page: Any) -> None:
    await sign_up_in_browser(page)
    await page.goto("/models/no-such-model")
    await page.get_by_role("heading", name="Page not found").wait_for()
    await check(page, "not-found")
    await page.goto("/forbidden")
    await page.get_by_role("heading", name="You may not see this").wait_for()
    await check(page, "forbidden")


async def test_api_reference_page(page: Any) -> None:
    """The reference page loads its bundled renderer, which fetches the document from this
    server and renders it (nothing from a CDN: the CSP refuses that)."""
    async with page.expect_response(lambda r: r.url.endswith("/openapi.json")) as fetched:
        await page.goto("/docs/api")
    assert (await fetched.value).status == 200
    # Scalar parses and renders the whole document in the page: slow on a small machine.
    await page.get_by_role("heading", name="Foretell REST API").wait_for(timeout=60_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "api-reference-1440.png"))
