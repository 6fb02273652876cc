"""schemathesis against the running stack through Envoy, with the generated OpenAPI document:
every operation, generated requests (valid and not), no 5xx, and every response valid against
the document's schema for it. Run as the `st` command in a subprocess, so the event loop (and
the in-process services on it) keeps running meanwhile."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from grpc import aio

from foretell._assets import asset_path
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from tests._envoy import Envoy
from tests._records import HOUR, make_model, record
from tests._web import ARTIFACTS
from tests.conftest import SignUp

ST = str(Path(sys.executable).parent / "st")
# A stream that runs until the client leaves: schemathesis would wait for its end. It is
# checked against the same document by `test_the_forecast_stream_matches_the_document`.
NEVER_ENDS = "ForecastService_StreamForecasts"


@pytest.mark.timeout(900)
async def test_every_operation_through_envoy(envoy: Envoy, sign_up: SignUp) -> None:
    provider = await sign_up()
    reports = ARTIFACTS / "schemathesis"
    reports.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        ST,
        "run",
        str(asset_path("gen/openapi/foretell.openapi.json")),
        "--url",
        envoy.base_url,
        "--header",
        f"Authorization: Bearer {provider.tokens.access_token}",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--exclude-operation-id",
        NEVER_ENDS,
        "--max-examples",
        "25",
        "--request-timeout",
        "20",
        "--generation-deterministic",
        "--report",
        "junit",
        "--report-dir",
        str(reports),
        "--no-color",
        # Its cache of crashes goes with the reports, not into the checkout.
        cwd=reports,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    (reports / "output.txt").write_text(text)
    assert process.returncode == 0, text[-6000:]


def _validator(document: dict[str, Any], path: str, status: str, media: str) -> Any:
    """A JSON Schema validator for one response of the document (OpenAPI 3.1 schemas are JSON
    Schema 2020-12; the document's own components resolve its references)."""
    schema = document["paths"][path]["get"]["responses"][status]["content"][media]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def _elements(text: str) -> list[Any]:
    """The whole elements received so far of a JSON array that is still being written."""
    body = text.strip()
    for end in range(len(body), 0, -1):
        try:
            return list(json.loads(body[:end].rstrip(", \n") + "]"))
        except json.JSONDecodeError:
            continue
    return []


@pytest.mark.timeout(60)
async def test_the_forecast_stream_matches_the_document(
    envoy: Envoy, channel: aio.Channel, sign_up: SignUp, resources: Resources
) -> None:
    document = json.loads(asset_path("gen/openapi/foretell.openapi.json").read_text())
    path = "/v1/models/{model}/forecasts:stream"
    ok = _validator(document, path, "200", "application/json")
    error = _validator(document, path, "default", "application/json")
    made = await make_model(reg_grpc.RegistryServiceStub(channel), sign_up, resources)
    owner = {"authorization": f"Bearer {made.owner.tokens.access_token}"}
    async with httpx.AsyncClient(base_url=envoy.base_url, timeout=20) as http:
        # Refusals end the stream at once, with a google.rpc.Status body as documented.
        for url, headers, code in (
            (f"/v1/models/{made.name}/forecasts:stream", {}, 401),
            ("/v1/models/m-nothing-here/forecasts:stream", owner, 404),
        ):
            refused = await http.get(url, headers=headers)
            assert refused.status_code == code, refused.text
            error.validate(refused.json())
        bad = await http.get(
            f"/v1/models/{made.name}/forecasts:stream",
            params={"kind": "RUN_KIND_NEVER"},
            headers=owner,
        )
        assert bad.status_code == 400, bad.text

        # A bounded read of an open stream: two runs recorded once it listens, two elements.
        url = f"/v1/models/{made.name}/forecasts:stream"
        async with http.stream("GET", url, headers=owner) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/json")
            start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 10 * HOUR
            runs = {str(await record(resources, made, start + i * HOUR)) for i in range(2)}
            text = ""
            chunks = response.aiter_text()
            while len(_elements(text)) < 2:
                text += await asyncio.wait_for(anext(chunks), 10)
    elements = _elements(text)
    ok.validate(elements)
    assert {f["runId"] for e in elements for f in e["forecasts"]} == runs
