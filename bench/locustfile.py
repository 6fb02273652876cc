"""Load test of a running Foretell through Envoy: bench/README.md, "Load test", has the figures
and how to run it.

Subscribers (most users) sign up and start a trial, then browse the catalog, read a model, its
plan, performance, ledger and forecasts over REST, and some hold a forecast stream open.
Providers sign up, create a model, push versions over gRPC (the CLI's path), wait for the build
and dry-run it.

    locust -f bench/locustfile.py --headless -u 200 -r 10 -t 3m --host http://127.0.0.1:8080

The platform must have a public model with a record to read (`foretell up` loads the demo:
`demo-eurusd-momentum`; BENCH_MODEL names another) and an auth rate limit above the sign-up
rate (FORETELL_AUTH_RATE_LIMIT_PER_MIN). BENCH_GRPC_TARGET is Envoy's host:port for gRPC
(default: the --host's).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# gRPC under gevent (locust's concurrency): before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
import requests  # noqa: E402
from locust import HttpUser, between, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from foretell.bundle import pack_dir  # noqa: E402
from foretell.registry.v1 import registry_service_pb2 as registry_pb  # noqa: E402
from foretell.registry.v1 import registry_service_pb2_grpc as registry_grpc  # noqa: E402

MODEL = os.environ.get("BENCH_MODEL", "demo-eurusd-momentum")
# Subscribers' accounts, made before the load starts (each with a trial and an API key) and
# shared by the simulated users, as traders with several screens open: signing up costs two
# argon2 hashes (about a CPU-second each on a busy 2-core machine), which the Newcomer class
# measures on its own instead of making every simulated user pay it at start.
ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "20"))
_api_keys: list[str] = []
PASSWORD = "load test password 1234"
STREAM_HOLD_S = 20.0
BUILD_WAIT_S = 300.0
_template: Path | None = None


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _prepare(environment: Environment, **_: Any) -> None:
    """One model folder (`foretell init`), copied by every provider; the subscribers' accounts."""
    global _template
    root = Path(tempfile.mkdtemp(prefix="ft-locust-"))
    foretell = Path(sys.executable).parent / "foretell"
    subprocess.run(
        [str(foretell), "init", "bench-model"], cwd=root, check=True, capture_output=True
    )
    _template = root / "bench-model"
    host = str(environment.host)
    for _number in range(ACCOUNTS):
        bearer = {"authorization": f"Bearer {_account(host, 'ROLE_SUBSCRIBER')}"}
        requests.post(f"{host}/v1/subscriptions", headers=bearer, json={"model": MODEL}, timeout=60)
        reply = requests.post(
            f"{host}/v1/users/me/apiKeys", headers=bearer, json={"name": "load"}, timeout=60
        )
        reply.raise_for_status()
        _api_keys.append(reply.json()["secret"])


def _account(host: str, role: str) -> str:
    """A new account's access token (outside the measured requests)."""
    email = f"load-{uuid.uuid4().hex[:12]}@bench.example"
    body = {"email": email, "password": PASSWORD, "role": role, "displayName": "load"}
    requests.post(f"{host}/v1/users", json=body, timeout=120).raise_for_status()
    login = {"email": email, "password": PASSWORD}
    reply = requests.post(f"{host}/v1/auth:login", json=login, timeout=120)
    reply.raise_for_status()
    return str(reply.json()["tokens"]["accessToken"])


def _sign_up(user: HttpUser, role: str) -> dict[str, str] | None:
    """Signs up and in through the measured client; None when either failed (counted)."""
    email = f"load-{uuid.uuid4().hex[:12]}@bench.example"
    user.client.post(
        "/v1/users",
        json={"email": email, "password": PASSWORD, "role": role, "displayName": "load"},
        name="POST /v1/users",
        timeout=120,
    )
    response = user.client.post(
        "/v1/auth:login",
        json={"email": email, "password": PASSWORD},
        name="POST /v1/auth:login",
        timeout=120,
    )
    if not response.ok:
        return None
    return {"authorization": f"Bearer {response.json()['tokens']['accessToken']}"}


class Subscriber(HttpUser):
    """Reads: the paths the p95 target applies to, plus a stream held open now and then."""

    weight = 19
    wait_time = between(1, 3)

    def on_start(self) -> None:
        # An API key of an account on a trial (the demo plan has 14 days): the full record
        # and the live stream.
        self.headers = {"authorization": f"Bearer {random.choice(_api_keys)}"}  # noqa: S311
        self._get("/v1/subscriptions", "GET /v1/subscriptions")

    def _get(self, path: str, name: str) -> None:
        self.client.get(path, headers=self.headers, name=name)

    @task(6)
    def catalog(self) -> None:
        self._get("/v1/models?pageSize=20", "GET /v1/models")

    @task(3)
    def model(self) -> None:
        self._get(f"/v1/models/{MODEL}", "GET /v1/models/{name}")

    @task(2)
    def plan(self) -> None:
        self._get(f"/v1/models/{MODEL}/plan", "GET /v1/models/{model}/plan")

    @task(4)
    def performance(self) -> None:
        self._get(f"/v1/models/{MODEL}/performance", "GET /v1/models/{model}/performance")

    @task(4)
    def forecasts(self) -> None:
        self._get(f"/v1/models/{MODEL}/forecasts?pageSize=50", "GET /v1/models/{model}/forecasts")

    @task(1)
    def ledger(self) -> None:
        self._get(f"/v1/models/{MODEL}/ledger", "GET /v1/models/{model}/ledger")

    @task(1)
    def symbols(self) -> None:
        self._get("/v1/symbols", "GET /v1/symbols")

    @task(1)
    def stream(self) -> None:
        """Holds StreamForecasts open for STREAM_HOLD_S (what a trading screen does), then lets
        go. Recorded as one request whose time is the time to the response's headers; a
        failure is an error status or the stream ending before the hold is over."""
        started = time.perf_counter()
        error: Exception | None = None
        try:
            with requests.get(
                f"{self.host}/v1/models/{MODEL}/forecasts:stream",
                headers=self.headers,
                stream=True,
                timeout=(10, STREAM_HOLD_S),
            ) as response:
                headers_s = time.perf_counter() - started
                response.raise_for_status()
                try:
                    for _ in response.iter_content(chunk_size=None):
                        if time.perf_counter() - started > STREAM_HOLD_S:
                            break
                    else:
                        error = RuntimeError("the stream ended before the hold was over")
                except requests.exceptions.ConnectionError as stalled:
                    # No forecast for STREAM_HOLD_S: the read timed out, the hold is over.
                    if "timed out" not in str(stalled):
                        error = stalled
        except requests.RequestException as failed:
            headers_s, error = time.perf_counter() - started, failed
        self.environment.events.request.fire(
            request_type="GET",
            name="GET /v1/models/{model}/forecasts:stream (held)",
            response_time=headers_s * 1000,
            response_length=0,
            exception=error,
            context={},
        )


class Newcomer(HttpUser):
    """Signs up (argon2), signs in (argon2 again), starts a trial, looks at the model, leaves."""

    weight = 1
    wait_time = between(30, 90)

    @task
    def sign_up(self) -> None:
        headers = _sign_up(self, "ROLE_SUBSCRIBER")
        if headers is None:
            return
        self.client.post(
            "/v1/subscriptions",
            headers=headers,
            json={"model": MODEL},
            name="POST /v1/subscriptions",
        )
        self.client.get(f"/v1/models/{MODEL}", headers=headers, name="GET /v1/models/{name}")


class Provider(HttpUser):
    """Writes: create a model, push a version (gRPC, as `foretell push`), wait for its build,
    dry-run it."""

    weight = 1
    wait_time = between(20, 60)

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {_account(str(self.host), 'ROLE_PROVIDER')}"}
        self.metadata = (("authorization", self.headers["authorization"]),)
        self.name = f"load-{uuid.uuid4().hex[:10]}"
        self.pushes = 0
        self.client.post(
            "/v1/models",
            headers=self.headers,
            name="POST /v1/models",
            # The body is the Model itself (`body: "model"`).
            json={
                "name": self.name,
                "title": "Load test model",
                "symbols": ["EURUSD"],
                "resolution": "RESOLUTION_1H",
                "horizon": 1,
            },
        )
        host = os.environ.get("BENCH_GRPC_TARGET") or urlsplit(str(self.host)).netloc
        self.channel = grpc.insecure_channel(host)
        self.registry = registry_grpc.RegistryServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _push(self) -> int:
        assert _template is not None
        folder = Path(tempfile.mkdtemp(prefix="ft-locust-push-"))
        subprocess.run(["cp", "-r", f"{_template}/.", str(folder)], check=True)
        self.pushes += 1
        # A new version each time: different bytes, different digest.
        (folder / "push.txt").write_text(f"{self.name} {self.pushes} {uuid.uuid4().hex}\n")
        bundle = pack_dir(folder)

        def requests() -> Any:
            yield registry_pb.UploadVersionRequest(
                header=registry_pb.UploadHeader(
                    model=self.name, size=bundle.size, digest=bundle.digest
                )
            )
            yield registry_pb.UploadVersionRequest(chunk=bundle.data)

        started = time.perf_counter()
        error: Exception | None = None
        number = 0
        try:
            reply = self.registry.UploadVersion(requests(), metadata=self.metadata, timeout=60)
            number = reply.version.number
        except grpc.RpcError as rpc_error:
            error = rpc_error
        self.environment.events.request.fire(
            request_type="grpc",
            name="UploadVersion (push)",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=bundle.size,
            exception=error,
            context={},
        )
        return number

    @task
    def push_and_dry_run(self) -> None:
        number = self._push()
        if not number:
            return
        deadline = time.monotonic() + BUILD_WAIT_S
        state = ""
        while time.monotonic() < deadline:
            response = self.client.get(
                f"/v1/models/{self.name}/versions/{number}",
                headers=self.headers,
                name="GET /v1/models/{model}/versions/{number}",
            )
            state = response.json()["version"].get("buildState", "")
            if state in ("BUILD_STATE_READY", "BUILD_STATE_FAILED"):
                break
            time.sleep(2)
        if state != "BUILD_STATE_READY":
            self.environment.events.request.fire(
                request_type="build", name="build to READY", response_time=0,
                response_length=0, exception=RuntimeError(state or "no state"), context={},
            )  # fmt: skip
            return
        self.client.post(
            f"/v1/models/{self.name}:dryRun",
            headers=self.headers,
            json={"version": number},
            name="POST /v1/models/{model}:dryRun",
            timeout=120,
        )
