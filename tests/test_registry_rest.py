"""The registry's REST surface through Envoy (gRPC-JSON transcoding)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.services.registry import _servicer as registry_servicer
from foretell.settings import Settings
from tests._envoy import Envoy
from tests._registry import model_name, push, run_builds, write_model
from tests.conftest import SignUp

if TYPE_CHECKING:
    from grpc import aio


@pytest.fixture
async def http(envoy: Envoy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=10) as client:
        yield client


def _model(name: str) -> dict[str, object]:
    return {
        "name": name,
        "title": "REST model",
        "symbols": ["EURUSD"],
        "resolution": "RESOLUTION_1H",
        "horizon": 1,
        "tags": ["fx"],
    }


async def test_model_lifecycle_over_rest(
    http: httpx.AsyncClient,
    sign_up: SignUp,
    channel: aio.Channel,
    settings: Settings,
    tmp_path: Path,
) -> None:
    me = await sign_up()
    auth = {"authorization": f"Bearer {me.tokens.access_token}"}
    name = model_name()
    created = await http.post("/v1/models", json=_model(name), headers=auth)
    assert created.status_code == 200, created.text
    assert created.json()["model"]["visibility"] == "VISIBILITY_PRIVATE"
    assert (await http.post("/v1/models", json=_model(name), headers=auth)).status_code == 409

    patched = await http.patch(
        f"/v1/models/{name}",
        params={"updateMask": "title,visibility"},
        json={"title": "Renamed", "visibility": "VISIBILITY_PUBLIC"},
        headers=auth,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["model"]["title"] == "Renamed"
    listed = await http.get("/v1/models", params={"onlyMine": "true"}, headers=auth)
    assert [m["name"] for m in listed.json()["models"]] == [name]

    registry = pb_grpc.RegistryServiceStub(channel)
    await push(registry, me.metadata, name, write_model(tmp_path / "m"))
    await run_builds(settings)
    versions = await http.get(f"/v1/models/{name}/versions", headers=auth)
    assert [v["buildState"] for v in versions.json()["versions"]] == ["BUILD_STATE_READY"]
    version = await http.get(f"/v1/models/{name}/versions/1", headers=auth)
    assert version.json()["version"]["digest"].startswith("sha256:")

    published = await http.post(f"/v1/models/{name}/versions/1:publish", json={}, headers=auth)
    assert published.status_code == 200
    assert published.json()["model"]["liveVersion"] == 1
    offline = await http.post(f"/v1/models/{name}:takeOffline", json={}, headers=auth)
    assert offline.json()["model"].get("liveVersion", 0) == 0
    assert (await http.delete(f"/v1/models/{name}", headers=auth)).status_code == 400


async def test_rest_errors(http: httpx.AsyncClient, sign_up: SignUp) -> None:
    provider = await sign_up()
    auth = {"authorization": f"Bearer {provider.tokens.access_token}"}
    bad = await http.post("/v1/models", json={**_model("X"), "horizon": 0}, headers=auth)
    assert bad.status_code == 400
    fields = {
        v["field"]
        for d in bad.json()["details"]
        if d["@type"].endswith("BadRequest")
        for v in d["fieldViolations"]
    }
    assert fields == {"model.name", "model.horizon"}
    assert (await http.get("/v1/models/no-such-model", headers=auth)).status_code == 404
    assert (await http.get("/v1/models")).status_code == 401
    subscriber = await sign_up(account_pb.ROLE_SUBSCRIBER)
    sub_auth = {"authorization": f"Bearer {subscriber.tokens.access_token}"}
    denied = await http.post("/v1/models", json=_model(model_name()), headers=sub_auth)
    assert denied.status_code == 403


async def test_build_log_streams_live_over_rest(
    http: httpx.AsyncClient,
    sign_up: SignUp,
    channel: aio.Channel,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """StreamBuildLog over REST is one chunked JSON array, read here as it arrives: the queued
    build's heartbeat comes first (the stream is open before the build starts), then its
    lines, then the final state; the route has no timeout that would cut a long build."""
    monkeypatch.setattr(registry_servicer, "HEARTBEAT_S", 0.0)
    me = await sign_up()
    auth = {"authorization": f"Bearer {me.tokens.access_token}"}
    name = model_name()
    assert (await http.post("/v1/models", json=_model(name), headers=auth)).status_code == 200
    registry = pb_grpc.RegistryServiceStub(channel)
    await push(registry, me.metadata, name, write_model(tmp_path / "m"))

    path = f"/v1/models/{name}/versions/1/buildLog:stream"
    async with http.stream("GET", path, headers=auth, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        received = ""
        chunks = response.aiter_text()
        while '"BUILD_STATE_QUEUED"' not in received:
            received += await anext(chunks)
        assert received.lstrip().startswith("[")
        assert "lines" not in received  # a heartbeat: the state, no lines yet
        await run_builds(settings)
        async for chunk in chunks:
            received += chunk
    messages = json.loads(received)
    lines = [line for m in messages for line in m.get("lines", [])]
    assert any("imported model:predict" in line for line in lines)
    assert messages[-1]["buildState"] == "BUILD_STATE_READY"

    other = await sign_up()
    hidden = await http.get(path, headers={"authorization": f"Bearer {other.tokens.access_token}"})
    assert hidden.status_code == 404
    bad = await http.get(f"/v1/models/{name}/versions/0/buildLog:stream", headers=auth)
    assert bad.status_code == 400
    assert "number" in bad.text
