"""schemathesis against the running stack through Envoy, with the generated OpenAPI document:
every operation, generated requests (valid and not), no 5xx, and every response valid against
the document's schema for it. Run as the `st` command in a subprocess, so the event loop (and
the in-process services on it) keeps running meanwhile."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from foretell._assets import asset_path
from tests._envoy import Envoy
from tests._web import ARTIFACTS
from tests.conftest import SignUp

ST = str(Path(sys.executable).parent / "st")
# A stream that runs until the client leaves: schemathesis would wait for its end. Its JSON
# mapping is the same array-of-messages as GetBars, which is tested.
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
