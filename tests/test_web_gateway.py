"""Envoy serves the built web app, the OpenAPI document and the API reference on the public
listener, beside the API: client routes fall back to index.html, hashed assets are cached for
good, and every page carries a strict Content-Security-Policy."""

from __future__ import annotations

import re

import httpx
import pytest

from foretell._assets import asset_path
from tests._envoy import Envoy

pytestmark = pytest.mark.skipif(
    not asset_path("gen/openapi").exists() or not (asset_path("web") / "dist/index.html").exists(),
    reason="the web app is not built (make web)",
)


async def test_index_and_client_routes_fall_back_to_index(envoy: Envoy) -> None:
    async with httpx.AsyncClient(base_url=envoy.base_url) as client:
        root = await client.get("/")
        deep = await client.get("/models/some-model/playback?kind=RUN_KIND_LIVE")
    for response in (root, deep):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert '<div id="app">' in response.text
        assert response.headers["cache-control"] == "no-cache"
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp
        assert "unsafe" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_hashed_assets_are_immutable_and_compressed(envoy: Envoy) -> None:
    async with httpx.AsyncClient(base_url=envoy.base_url) as client:
        index = (await client.get("/")).text
        script = re.search(r'src="(/assets/[^"]+\.js)"', index)
        assert script is not None
        response = await client.get(script.group(1), headers={"accept-encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "immutable" in response.headers["cache-control"]
    assert response.headers["content-encoding"] == "gzip"


async def test_openapi_document_and_reference(envoy: Envoy) -> None:
    async with httpx.AsyncClient(base_url=envoy.base_url) as client:
        document = await client.get("/openapi.json")
        reference = await client.get("/docs/api")
        renderer = await client.get("/docs/api/scalar.js")
    assert document.status_code == 200
    assert document.json()["openapi"] == "3.1.0"
    assert reference.status_code == 200
    assert "/docs/api/scalar.js" in reference.text
    assert renderer.status_code == 200
    assert "'unsafe-inline'" in reference.headers["content-security-policy"]


async def test_api_is_still_the_api(envoy: Envoy) -> None:
    async with httpx.AsyncClient(base_url=envoy.base_url) as client:
        unauthenticated = await client.get("/v1/models")
        unknown = await client.get("/v1/no-such-thing")
        post = await client.post("/some/page")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["code"] == 16
    assert unknown.status_code == 404
    # Only GET and HEAD fall back to the app.
    assert post.status_code == 404


def test_csp_allows_exactly_the_chart_libraries_inline_style() -> None:
    """The hash in the CSP is that of the <style> lightweight-charts injects for its logo."""
    import base64
    import hashlib

    from foretell.gateway._site import APP_CSP

    bundle = asset_path("web") / (
        "node_modules/lightweight-charts/dist/lightweight-charts.production.mjs"
    )
    found = re.search(r'\.innerText="(a#tv-attr-logo[^"]*)"', bundle.read_text())
    assert found is not None
    digest = base64.b64encode(hashlib.sha256(found.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in APP_CSP
