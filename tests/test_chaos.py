"""Fault injection against the real stack: `foretell up` on private ports, with its own embedded
PostgreSQL and Redis under a temporary data directory (never the machine's shared servers).

While a steady load of reads (REST and gRPC through Envoy), sign-ins, bar pushes and the
scheduled runs those pushes make due goes on, one after the other: kill -9 the services
process, the live worker, Envoy, the embedded Redis (each restarted by `foretell up`'s
supervisor), and PostgreSQL (killed with its backends, then started again as an operator
would). Afterwards:
every slot up to the last bar pushed is run or recorded, exactly once; no forecast a client saw
is gone, none is recorded twice; `foretell verify` passes; and every error a client saw was
UNAVAILABLE (503 over REST, or a refused connection while Envoy was down) during an outage.

Not in `make test`: `make chaos` runs it, CHAOS_LOAD_S long (seconds of load).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.bundle import pack_dir
from foretell.common.v1 import common_pb2
from foretell.datafeed.v1 import datafeed_service_pb2 as feed_pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as feed_grpc
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from tests._registry import write_model
from tests._up import BANNER_END, FORETELL, Up, child, temp_data_dir, up_env, wait_until

pytestmark = pytest.mark.chaos

LOAD_S = float(os.environ.get("CHAOS_LOAD_S", "60"))
PUSH_EVERY_S = 2.0
READ_EVERY_S = 0.2
LOGIN_EVERY_S = 3.0
# After a fault is repaired, how long clients may still meet its traces (a pooled connection
# found dead, Envoy's next health check), and still count as inside the outage.
SETTLE_S = 5.0
HOUR = timedelta(hours=1)
SYMBOL = "BTCUSD"
PASSWORD = "correct horse battery"

MODEL = """
from foretell.sdk import Forecast

def predict(ctx):
    bars = ctx.bars("BTCUSD", lookback=1)
    up = bars.close[-1] >= bars.open[-1]
    return [Forecast("BTCUSD", ctx.target_time, "up" if up else "down", probability=0.6)]
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    yield from temp_data_dir()


@dataclass
class Call:
    what: str
    started: float
    ended: float
    error: str | None  # None: it succeeded; else the status or connection error


@dataclass
class Load:
    """Every call the clients made, and the outage windows the faults opened."""

    calls: list[Call] = field(default_factory=list)
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    pushed: list[datetime] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, what: str, started: float, error: str | None) -> None:
        with self.lock:
            self.calls.append(Call(what, started, time.monotonic(), error))


def _rpc_error(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"


@dataclass
class Stack:
    up: Up
    http: str
    database_url: str
    channel: grpc.Channel
    provider: tuple[tuple[str, str], ...]
    provider_email: str
    admin: tuple[tuple[str, str], ...]
    model: str
    first_slot: datetime


def _database_url(up: Up) -> str:
    for line in up.lines:
        if line.strip().startswith("PostgreSQL "):
            return line.split()[1]
    raise AssertionError(f"no PostgreSQL line in the banner:\n{up.output}")


def _sign_in(channel: grpc.Channel, email: str) -> tuple[tuple[str, str], ...]:
    login = account_grpc.AccountServiceStub(channel).Login(
        account_pb.LoginRequest(email=email, password=PASSWORD), timeout=10
    )
    return (("authorization", f"Bearer {login.tokens.access_token}"),)


def _set_up(up: Up, env: dict[str, str], tmp: Path) -> Stack:
    http = env["FORETELL_HTTP_ADDR"]
    database_url = _database_url(up)
    channel = grpc.insecure_channel(http)
    accounts = account_grpc.AccountServiceStub(channel)
    provider_email = f"p-{uuid.uuid4().hex[:8]}@example.com"
    accounts.CreateUser(
        account_pb.CreateUserRequest(
            email=provider_email,
            password=PASSWORD,
            display_name="Chaos",
            role=account_pb.ROLE_PROVIDER,
        ),
        timeout=10,
    )
    admin_email = f"a-{uuid.uuid4().hex[:8]}@example.com"
    created = subprocess.run(
        [str(FORETELL), "admin", "create-user", "--email", admin_email, "--password", PASSWORD],
        env={**env, "FORETELL_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    provider, admin = _sign_in(channel, provider_email), _sign_in(channel, admin_email)

    registry = reg_grpc.RegistryServiceStub(channel)
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    registry.CreateModel(
        reg_pb.CreateModelRequest(
            model=reg_pb.Model(
                name=name,
                title="Chaos",
                symbols=[SYMBOL],
                resolution=common_pb2.RESOLUTION_1H,
                horizon=1,
                visibility=reg_pb.VISIBILITY_PUBLIC,
            )
        ),
        metadata=provider,
        timeout=10,
    )
    packed = pack_dir(write_model(tmp / "model", source=MODEL, symbols=(SYMBOL,)))

    def upload() -> Iterator[reg_pb.UploadVersionRequest]:
        header = reg_pb.UploadHeader(model=name, size=len(packed.data), digest=packed.digest)
        yield reg_pb.UploadVersionRequest(header=header)
        yield reg_pb.UploadVersionRequest(chunk=packed.data)

    number = registry.UploadVersion(upload(), metadata=provider, timeout=30).version.number

    def built() -> bool:
        version = registry.GetVersion(
            reg_pb.GetVersionRequest(model=name, number=number), metadata=provider, timeout=10
        ).version
        assert version.build_state != reg_pb.BUILD_STATE_FAILED, version.failure_reason
        return version.build_state == reg_pb.BUILD_STATE_READY

    wait_until(built, 120, "built")
    registry.PublishVersion(
        reg_pb.PublishVersionRequest(model=name, number=number), metadata=provider, timeout=10
    )
    # Live since long enough ago that the load's bars, one hour each, stay in the past; the
    # data deadline (a week here) keeps their slots runnable when their bars land late.
    hours = int(LOAD_S / PUSH_EVERY_S) + 24
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    first_slot = now - hours * HOUR
    asyncio.run(_backdate(database_url, name, first_slot - HOUR / 2))
    return Stack(up, http, database_url, channel, provider, provider_email, admin, name, first_slot)


async def _backdate(database_url: str, model: str, live_since: datetime) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "UPDATE models SET live_since = $1 WHERE name = $2", live_since, model
        )
    finally:
        await connection.close()


# --- the load ----------------------------------------------------------------------------------


def _push_bars(stack: Stack, load: Load) -> None:
    """One hourly bar after another, each retried until it is stored (an upsert: a retry of a
    bar whose answer was lost changes nothing)."""
    feed = feed_grpc.DataFeedServiceStub(stack.channel)
    slot = stack.first_slot
    while not load.stop.is_set():
        opened = int((slot - HOUR).timestamp())
        header = feed_pb.IngestBarsHeader(
            symbol=SYMBOL,
            resolution=common_pb2.RESOLUTION_1H,
            on_conflict=feed_pb.CONFLICT_POLICY_UPSERT,
            calendar="CRYPTO",
        )
        price = 100.0 + (len(load.pushed) % 7)
        bars = feed_pb.Bars(
            open_times_unix=[opened],
            opens=[price],
            highs=[price + 2],
            lows=[price - 2],
            closes=[price + (1 if len(load.pushed) % 2 else -1)],
            volumes=[10.0],
        )
        started = time.monotonic()
        try:
            feed.IngestBars(
                iter(
                    [feed_pb.IngestBarsRequest(header=header), feed_pb.IngestBarsRequest(bars=bars)]
                ),
                metadata=stack.admin,
                timeout=10,
            )
        except grpc.RpcError as error:
            load.record("push", started, _rpc_error(error))
        else:
            load.record("push", started, None)
            load.pushed.append(slot)
            slot += HOUR
        load.stop.wait(PUSH_EVERY_S)


def _read_rest(stack: Stack, load: Load) -> None:
    url = f"http://{stack.http}/v1/models/{stack.model}/forecasts"
    headers = dict(stack.provider)
    with httpx.Client(timeout=10) as client:
        while not load.stop.is_set():
            started = time.monotonic()
            try:
                response = client.get(url, params={"pageSize": 100}, headers=headers)
            except httpx.TransportError as error:
                load.record("rest", started, f"connection: {type(error).__name__}")
            else:
                if response.status_code == 200:
                    load.record("rest", started, None)
                    for f in response.json().get("forecasts", []):
                        with load.lock:
                            load.seen.add((f["runId"], f["symbol"], int(f["version"])))
                else:
                    load.record("rest", started, f"HTTP {response.status_code}: {response.text}")
            load.stop.wait(READ_EVERY_S)


def _read_grpc(stack: Stack, load: Load) -> None:
    forecasts = fc_grpc.ForecastServiceStub(stack.channel)
    while not load.stop.is_set():
        started = time.monotonic()
        try:
            forecasts.ListRuns(
                fc_pb.ListRunsRequest(model=stack.model, page_size=20),
                metadata=stack.provider,
                timeout=10,
            )
        except grpc.RpcError as error:
            load.record("grpc", started, _rpc_error(error))
        else:
            load.record("grpc", started, None)
        load.stop.wait(READ_EVERY_S)


def _sign_in_again(stack: Stack, load: Load) -> None:
    """Sign-ins (the sign-in back-off lives in Redis), below Envoy's per-client limit."""
    accounts = account_grpc.AccountServiceStub(stack.channel)
    request = account_pb.LoginRequest(email=stack.provider_email, password=PASSWORD)
    while not load.stop.is_set():
        started = time.monotonic()
        try:
            accounts.Login(request, timeout=10)
        except grpc.RpcError as error:
            load.record("login", started, _rpc_error(error))
        else:
            load.record("login", started, None)
        load.stop.wait(LOGIN_EVERY_S)


# --- the faults --------------------------------------------------------------------------------


def _answers(stack: Stack) -> bool:
    """A database read through Envoy and a service succeeds."""
    try:
        response = httpx.get(
            f"http://{stack.http}/v1/models/{stack.model}/runs",
            headers=dict(stack.provider),
            timeout=5,
        )
    except httpx.TransportError:
        return False
    return response.status_code == 200


def _kill_child(stack: Stack, argv_tail: list[str], name: str) -> Callable[[], None]:
    def fault() -> None:
        victim = child(stack.up, argv_tail)
        victim.kill()
        stack.up.wait_for(f"{name} killed by signal 9", 15)
        stack.up.wait_for(f"{name} restarted (pid", 30)
        wait_until(lambda: _answers(stack), 60, f"answering after {name} was killed")

    return fault


def _kill_postgres(stack: Stack, data_dir: Path) -> Callable[[], None]:
    pgdata = data_dir / "postgres"

    def fault() -> None:
        postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
        backends = postmaster.children(recursive=True)
        for process in [postmaster, *backends]:
            process.kill()
        psutil.wait_procs([postmaster, *backends], timeout=10)
        # Down for a while: the load meets it.
        time.sleep(2)  # the outage itself, not a synchronisation
        _start_postgres(pgdata, stack.database_url)
        wait_until(lambda: _answers(stack), 60, "answering after PostgreSQL restarted")

    return fault


def _start_postgres(pgdata: Path, database_url: str) -> None:
    """Starts PostgreSQL again on `pgdata` as pgserver did (a Unix socket only), as its owner."""
    with warnings.catch_warnings():
        # pgserver looks up a runtime directory when imported and platformdirs warns when
        # XDG_RUNTIME_DIR is unset (as foretell._embedded says).
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH

    socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(database_url).query)["host"][0]
    owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
    argv = [
        str(POSTGRES_BIN_PATH / "pg_ctl"),
        "-D",
        str(pgdata),
        "-w",
        "-o",
        '-h ""',
        "-o",
        f"-k {socket_dir}",
        "-l",
        str(pgdata / "log"),
        "start",
    ]
    if owner != pwd.getpwuid(os.getuid()).pw_name:
        argv = ["su", owner, "-s", "/bin/sh", "-c", subprocess.list2cmdline(argv)]
    subprocess.run(argv, check=True, timeout=60, capture_output=True)


def _outage(load: Load, name: str, fault: Callable[[], None]) -> None:
    started = time.monotonic()
    fault()
    with load.lock:
        load.windows.append((name, started, time.monotonic() + SETTLE_S))


# --- the checks --------------------------------------------------------------------------------


def _all_runs(stack: Stack) -> list[fc_pb.Run]:
    forecasts = fc_grpc.ForecastServiceStub(stack.channel)
    runs: list[fc_pb.Run] = []
    token = ""
    while True:
        page = forecasts.ListRuns(
            fc_pb.ListRunsRequest(model=stack.model, page_size=100, page_token=token),
            metadata=stack.provider,
            timeout=30,
        )
        runs += page.runs
        token = page.next_page_token
        if not token:
            return runs


def _all_forecasts(stack: Stack) -> list[fc_pb.ForecastRecord]:
    forecasts = fc_grpc.ForecastServiceStub(stack.channel)
    found: list[fc_pb.ForecastRecord] = []
    token = ""
    while True:
        page = forecasts.ListForecasts(
            fc_pb.ListForecastsRequest(model=stack.model, page_size=100, page_token=token),
            metadata=stack.provider,
            timeout=30,
        )
        found += page.forecasts
        token = page.next_page_token
        if not token:
            return found


def _every_slot_recorded(stack: Stack, slots: list[datetime]) -> Callable[[], bool]:
    def check() -> bool:
        recorded = {r.as_of.ToDatetime(tzinfo=UTC) for r in _all_runs(stack)}
        return set(slots) <= recorded

    return check


def _in_window(call: Call, windows: list[tuple[str, float, float]]) -> bool:
    return any(call.ended >= start and call.started <= end for _, start, end in windows)


def _allowed(error: str) -> bool:
    return error.startswith(("UNAVAILABLE", "HTTP 503", "connection:"))


@pytest.mark.timeout(int(LOAD_S) + 420)
def test_the_platform_survives_kill_9_of_every_part_under_load(data_dir: Path) -> None:
    env = up_env(
        data_dir,
        FORETELL_DATA_DEADLINE_S=str(7 * 86400),
        FORETELL_ACCESS_TOKEN_TTL_S="3600",
        # Short job limits: a job whose worker was killed is delivered again once the longest
        # job timeout plus 10 s has passed (arq).
        FORETELL_RUN_WALL_S="10",
        FORETELL_JOB_GRACE_S="5",
        FORETELL_CRON_TIMEOUT_S="20",
    )
    up = Up(env)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            up.wait_for(BANNER_END, 120)
            stack = _set_up(up, env, Path(tmp))
            load = Load()
            clients = [
                threading.Thread(target=target, args=(stack, load), daemon=True)
                for target in (_push_bars, _read_rest, _read_grpc, _sign_in_again)
            ]
            for thread in clients:
                thread.start()
            faults = [
                ("services", _kill_child(stack, ["serve", "all"], "services")),
                ("worker", _kill_child(stack, ["worker", "--lane", "live"], "worker-live")),
                ("envoy", _kill_child(stack, ["--use-dynamic-base-id"], "envoy")),
                ("redis", _kill_child(stack, ["redis-server"], "redis")),
                ("postgres", _kill_postgres(stack, data_dir)),
            ]
            began = time.monotonic()
            for i, (name, fault) in enumerate(faults):
                at = began + LOAD_S * (i + 0.5) / len(faults)
                load.stop.wait(max(0.0, at - time.monotonic()))
                _outage(load, name, fault)
            load.stop.wait(max(0.0, began + LOAD_S - time.monotonic()))
            load.stop.set()
            for thread in clients:
                thread.join(timeout=30)

            _check(stack, load, env)
        finally:
            up.close(data_dir)


def _check(stack: Stack, load: Load, env: dict[str, str]) -> None:
    slots = list(load.pushed)
    assert len(slots) >= 4, f"only {len(slots)} bars pushed"
    # Every slot whose bar landed is run or recorded: at most a re-delivered job late.
    try:
        wait_until(_every_slot_recorded(stack, slots), 120, "every slot recorded")
    except AssertionError:
        recorded = {r.as_of.ToDatetime(tzinfo=UTC) for r in _all_runs(stack)}
        missing = sorted(set(slots) - recorded)
        raise AssertionError(
            f"slots never recorded: {missing}\nwindows: {load.windows}\n{stack.up.output[-20000:]}"
        ) from None

    runs = _all_runs(stack)
    by_slot: dict[datetime, list[fc_pb.Run]] = {}
    for run in runs:
        by_slot.setdefault(run.as_of.ToDatetime(tzinfo=UTC), []).append(run)
    twice = {slot: len(found) for slot, found in by_slot.items() if len(found) > 1}
    assert not twice, f"slots recorded more than once: {twice}"
    outcomes: dict[str, int] = {}
    for run in runs:
        name = fc_pb.RunOutcome.Name(run.outcome)
        outcomes[name] = outcomes.get(name, 0) + 1
    # A slot whose bar landed while an earlier run still went on is recorded missed (the
    # scheduler never runs late); nothing else may come of a slot here: no platform error.
    assert set(outcomes) <= {"RUN_OUTCOME_OK", "RUN_OUTCOME_MISSED"}, outcomes
    assert outcomes.get("RUN_OUTCOME_OK", 0) >= 2, outcomes

    forecasts = _all_forecasts(stack)
    keys = [(f.run_id, f.symbol, f.target_time.ToSeconds()) for f in forecasts]
    assert len(keys) == len(set(keys)), "a forecast is recorded twice"
    ok_runs = {r.id: r.forecast_count for r in runs if r.outcome == fc_pb.RUN_OUTCOME_OK}
    per_run: dict[str, int] = {}
    for f in forecasts:
        per_run[f.run_id] = per_run.get(f.run_id, 0) + 1
    assert {run: per_run.get(run, 0) for run in ok_runs} == ok_runs
    final = {(f.run_id, f.symbol, f.version) for f in forecasts}
    assert load.seen <= final, f"forecasts seen, then gone: {load.seen - final}"

    cli_env = {**env, "FORETELL_CONFIG_DIR": tempfile.mkdtemp(), "FORETELL_URL": stack.http}
    signed_in = subprocess.run(
        [str(FORETELL), "login", "--email", stack.provider_email, "--password-stdin"],
        env=cli_env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert signed_in.returncode == 0, signed_in.stderr
    verified = subprocess.run(
        [str(FORETELL), "verify", stack.model],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK:"), verified.stdout

    failed = [c for c in load.calls if c.error is not None]
    wrong = [c for c in failed if not _allowed(c.error or "")]
    assert not wrong, "errors other than UNAVAILABLE:\n" + "\n".join(
        f"{c.what}: {c.error}" for c in wrong[:20]
    )
    outside = [c for c in failed if not _in_window(c, load.windows)]
    assert not outside, (
        "errors outside the outages:\n"
        + "\n".join(f"{c.what} at {c.started:.1f}: {c.error}" for c in outside[:20])
        + f"\nwindows: {load.windows}"
    )
    succeeded = {what: 0 for what in ("push", "rest", "grpc", "login")}
    for call in load.calls:
        if call.error is None:
            succeeded[call.what] += 1
    assert all(succeeded.values()), succeeded
    # The run's figures and what the supervisor did, for the log of `make chaos`.
    for line in stack.up.lines:
        if any(word in line for word in ("restart", "crash-looping", "killed by", "exited")):
            print(line.rstrip())
    print(
        f"chaos: {len(slots)} slots, outcomes {outcomes}, {len(forecasts)} forecasts, "
        f"{len(load.calls)} calls ({len(failed)} UNAVAILABLE within outages), "
        f"windows {[(n, round(e - s, 1)) for n, s, e in load.windows]}"
    )
