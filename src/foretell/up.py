"""`foretell up`: the whole platform on one machine, supervised from one terminal.

Order of start-up, cheapest checks first so that a mistake costs nothing:

1. take the data directory's lock (one `foretell up` per data directory);
2. check that every address we will listen on is free;
3. create the JWT signing key, render and validate the Envoy config;
4. start the embedded PostgreSQL (unless FORETELL_DATABASE_URL is set) and migrate;
5. start the embedded Redis (unless FORETELL_REDIS_URL is set);
6. run the children under honcho: the services, the worker (background jobs) and Envoy; a
   thread waits until they all answer, then prints a banner.

When any child exits, honcho stops the others; Ctrl-C or SIGTERM stops them all, each with the
services' grace period. The embedded Redis and PostgreSQL are stopped last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import http.client
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

import grpc
import honcho.manager
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from honcho.printer import Message, Printer

from foretell.composition import SERVICES
from foretell.settings import Address, Settings

READY_TIMEOUT_S = 60.0
_POLL_INTERVAL_S = 0.25
# Extra time, on top of the services' grace period, before honcho sends SIGKILL.
_KILL_MARGIN_S = 5.0
_LOCK_FILE = "up.lock"
_SELF = "up"
# Hosts that mean "every interface": recognised here, never bound by this module.
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104


class AlreadyRunning(Exception):
    """Another `foretell up` holds the data directory."""


class StartupError(Exception):
    """The platform cannot start; the message says what to change."""


@dataclass(frozen=True)
class ServiceProcess:
    """One `foretell serve` child."""

    name: str
    service: str  # "all" or a key of SERVICES
    grpc_addr: Address
    metrics_addr: Address

    @property
    def full_names(self) -> list[str]:
        if self.service == "all":
            return [definition.full_name for definition in SERVICES.values()]
        return [SERVICES[self.service].full_name]


def plan_services(settings: Settings) -> list[ServiceProcess]:
    """The service processes for the topology.

    "all": one process with every service on FORETELL_GRPC_ADDR and FORETELL_METRICS_ADDR.
    "split": one process per service; the i-th service of `foretell.services.SERVICES` (account,
    registry, subscription, datafeed, forecast: i = 0..4) listens on the port of
    FORETELL_GRPC_ADDR plus i, and serves metrics on the port of FORETELL_METRICS_ADDR plus i.
    """
    if settings.topology == "all":
        return [ServiceProcess("services", "all", settings.grpc_addr, settings.metrics_addr)]
    return [
        ServiceProcess(
            name,
            name,
            settings.grpc_addr.with_port(settings.grpc_addr.port + i),
            settings.metrics_addr.with_port(settings.metrics_addr.port + i),
        )
        for i, name in enumerate(SERVICES)
    ]


# ---------------------------------------------------------------------------------------------
# Checks before anything starts


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Holds an flock on data_dir/up.lock. The kernel drops it when the process dies, so a
    crash never leaves a stale lock behind; the file keeps the holder's pid for the message.

    honcho's helper processes (forked, one per child) share the lock: after a `kill -9` of
    `foretell up` it holds for as long as the orphaned children run, whose ports are taken.
    """
    path = data_dir / _LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise AlreadyRunning(
                f"Foretell is already running from {data_dir} (pid {pid}); "
                f"stop it with Ctrl-C in its terminal or `kill {pid}`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Listener:
    variable: str
    address: Address
    note: str = ""

    def label(self) -> str:
        return f"{self.variable} {self.address}{self.note}"


def _listeners(settings: Settings, plan: Sequence[ServiceProcess]) -> list[_Listener]:
    listeners = [
        _Listener("FORETELL_HTTP_ADDR", settings.http_addr),
        _Listener("FORETELL_ENVOY_ADMIN_ADDR", settings.envoy_admin_addr),
    ]
    split = len(plan) > 1
    for i, process in enumerate(plan):
        grpc_note = f" (port {settings.grpc_addr.port}+{i}, for {process.name})" if split else ""
        metrics_note = (
            f" (port {settings.metrics_addr.port}+{i}, for {process.name})" if split else ""
        )
        listeners.append(_Listener("FORETELL_GRPC_ADDR", process.grpc_addr, grpc_note))
        listeners.append(_Listener("FORETELL_METRICS_ADDR", process.metrics_addr, metrics_note))
    return listeners


def _overlaps(a: Address, b: Address) -> bool:
    return a.port == b.port and (
        a.host == b.host or a.host in _WILDCARD_HOSTS or b.host in _WILDCARD_HOSTS
    )


def check_addresses(listeners: Sequence[_Listener]) -> None:
    """Raises StartupError, naming the variable to change, unless every address can be bound."""
    for i, listener in enumerate(listeners):
        port = listener.address.port
        if port == 0 or port > 65535:
            raise StartupError(
                f"{listener.label()}: `foretell up` needs a fixed port from 1 to 65535 "
                f"(Envoy is configured with it); set {listener.variable}"
            )
        for other in listeners[:i]:
            if _overlaps(listener.address, other.address):
                raise StartupError(
                    f"{other.label()} and {listener.label()} use the same port; "
                    f"set {listener.variable} to a different address"
                )
    for listener in listeners:
        _check_bindable(listener)


def _check_bindable(listener: _Listener) -> None:
    host, port = listener.address.host, listener.address.port
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise StartupError(
            f"{listener.label()}: cannot resolve {host!r} ({error.strerror}); "
            f"set {listener.variable} to a local address"
        ) from None
    problems: list[str] = []
    bound = False
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # The servers set SO_REUSEADDR too; without it, connections of a previous run in
            # TIME_WAIT would make a free port look taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"{listener.label()} is already in use; "
                        f"set {listener.variable} to a free address"
                    ) from None
                problems.append(error.strerror or str(error))
            else:
                bound = True
    # "localhost" may resolve to ::1 on a host without IPv6: one usable family is enough.
    if not bound:
        raise StartupError(
            f"{listener.label()}: cannot listen there ({'; '.join(problems) or 'no address'}); "
            f"set {listener.variable} to a local address"
        )


# ---------------------------------------------------------------------------------------------
# Output


class _Console:
    """The printer honcho writes through, shared with our own messages and the banner. A lock
    keeps lines whole: the readiness thread writes while honcho's loop does."""

    def __init__(self, stream: TextIO, names: Sequence[str]) -> None:
        self._stream = stream
        self._printer: Any = Printer(stream)
        self._lock = threading.Lock()
        self._min_width = max(len(name) for name in [*names, "system", _SELF])
        self._printer.width = self._min_width

    @property
    def width(self) -> int:
        width: int = self._printer.width
        return width

    @width.setter
    def width(self, value: int) -> None:
        # honcho resets the width when it is created; keep lines aligned with ours from before.
        self._printer.width = max(value, self._min_width)

    def write(self, message: Any) -> None:
        with self._lock:
            self._printer.write(message)

    def say(self, text: str) -> None:
        self.write(Message("line", text + "\n", datetime.now(), _SELF, None))

    def raw(self, text: str) -> None:
        with self._lock:
            self._stream.write(text)
            self._stream.flush()


# ---------------------------------------------------------------------------------------------
# Supervision


class _Supervisor(honcho.manager.Manager):  # type: ignore[misc]
    """honcho's Manager, plus what `foretell up` needs from it: why the run stopped (a signal,
    a child exiting, or not becoming ready), each child's exit code, and a hook that runs once
    every child has been forked.

    honcho forks one helper process per child when its loop starts; the hook starts the
    readiness thread only after those forks, so no gRPC thread exists while forking.
    """

    def __init__(self, console: _Console, on_started: Callable[[], None]) -> None:
        super().__init__(printer=console)
        self._on_started = on_started
        self._cause_lock = threading.Lock()
        self.cause: str | None = None
        self.by_signal = False

    def _set_cause(self, cause: str, *, by_signal: bool = False) -> bool:
        with self._cause_lock:
            if self.cause is not None:
                return False
            self.cause = cause
            self.by_signal = by_signal
            return True

    def _start(self) -> None:
        # loop() has just installed honcho's SIGINT/SIGTERM handlers: wrap them to remember
        # that the stop was asked for, which honcho only reports as exit code 130/143.
        for signum in (signal.SIGINT, signal.SIGTERM):
            inner = signal.getsignal(signum)

            def handler(num: int, frame: FrameType | None, inner: Any = inner) -> None:
                self._set_cause(f"{signal.Signals(num).name} received", by_signal=True)
                if callable(inner):
                    # Not inline: the signal may have interrupted a write to the console, and
                    # honcho's handler writes too; the console lock would deadlock and the
                    # buffered stream refuses reentrant writes. A thread waits its turn instead.
                    threading.Thread(target=inner, args=(num, frame), daemon=True).start()

            signal.signal(signum, handler)
        super()._start()
        self._on_started()

    def terminate(self) -> None:
        # Reached first through a signal (cause already set) or from honcho's loop because a
        # child stopped; in the second case, say which.
        exited = [f"{name} exited (rc={code})" for name, code in self.returncodes().items()]
        self._set_cause("; ".join(exited) or "a process exited")
        super().terminate()

    def fail(self, reason: str) -> None:
        """Stops everything because of `reason` (called from the readiness thread)."""
        self._set_cause(reason)
        super().terminate()

    def returncodes(self) -> dict[str, int]:
        return {
            name: process["returncode"]
            for name, process in self._processes.items()
            if process.get("returncode") is not None
        }


def _client_address(address: Address) -> Address:
    """Where a client on this machine reaches a server listening on `address`."""
    if address.host in _WILDCARD_HOSTS:
        return Address("::1" if address.host == "::" else "127.0.0.1", address.port)
    return address


def _foretell_command() -> list[str]:
    # The console script beside this Python (the virtualenv's), so children run this install.
    script = Path(sys.executable).parent / "foretell"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from foretell.cli import main; main()"]


def _shell(argv: Sequence[str]) -> str:
    # honcho runs commands through `sh -c`; `exec` makes the pid honcho signals the program's.
    return "exec " + shlex.join(argv)


@dataclass(frozen=True)
class _Stores:
    database_url: str
    redis_url: str
    embedded_postgres: Path | None
    embedded_redis: Path | None


def _child_env(settings: Settings, stores: _Stores, process: ServiceProcess) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FORETELL_GRPC_ADDR=str(process.grpc_addr),
        FORETELL_METRICS_ADDR=str(process.metrics_addr),
        FORETELL_DATABASE_URL=stores.database_url,
        FORETELL_REDIS_URL=stores.redis_url,
        FORETELL_DATA_DIR=str(settings.data_dir),
        # Children write to a pipe: without this, Python would hold their lines back.
        PYTHONUNBUFFERED="1",
    )
    return env


# ---------------------------------------------------------------------------------------------
# Readiness


@dataclass
class _Check:
    what: str
    probe: Callable[[], str | None]  # None when ready, else why not
    last: str = "not checked: waits for the checks before it"


def _grpc_check(channel: Any, target: Address, full_name: str) -> _Check:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=full_name)
    serving = health_pb2.HealthCheckResponse.SERVING

    def probe() -> str | None:
        try:
            response = stub.Check(request, timeout=1.0)
        except grpc.RpcError as error:
            return str(error.code().name)
        status = response.status
        return None if status == serving else health_pb2.HealthCheckResponse.Status.Name(status)

    short = full_name.rsplit(".", 1)[-1]
    return _Check(f"{short} health check at {target}", probe)


def _http_get(address: Address, path: str) -> tuple[int, str] | str:
    """(status, body), or why there was no answer."""
    connection = http.client.HTTPConnection(address.host, address.port, timeout=1.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as error:
        return error.strerror or type(error).__name__
    finally:
        connection.close()


def _envoy_check(listener: Address, admin: Address, path: str) -> _Check:
    def probe() -> str | None:
        # Ask the admin API first whether Envoy's own health checks pass: polling the listener
        # before that would fill the access log with 503s while Envoy waits for its next check.
        clusters = _http_get(admin, "/clusters")
        if isinstance(clusters, str):
            return f"admin: {clusters}"
        flags = [line for line in clusters[1].splitlines() if "::health_flags::" in line]
        if not flags or any(not line.endswith("::healthy") for line in flags):
            return "upstream clusters not healthy yet"
        answer = _http_get(listener, path)
        if isinstance(answer, str):
            return answer
        return None if answer[0] == 200 else f"HTTP {answer[0]}"

    return _Check(f"Envoy GET http://{listener}{path}", probe)


def _redis_check(url: str) -> _Check:
    def probe() -> str | None:
        try:
            with redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0) as r:
                r.ping()
        except redis.RedisError as error:
            return str(error)
        return None

    return _Check(f"Redis PING at {_safe_url(url)}", probe)


def _wait_until_ready(
    checks: Sequence[_Check], deadline: float, stopped: threading.Event
) -> list[_Check] | None:
    """Polls until every check passes; returns the checks still failing at the deadline, or
    None if the run stopped meanwhile. No child announces readiness, so polling it is."""
    pending = list(checks)
    while True:
        still: list[_Check] = []
        for check in pending:
            # In order: a check waits until those before it pass (the Envoy check comes last).
            reason = check.probe() if not still else check.last
            if reason is not None:
                check.last = reason
                still.append(check)
        pending = still
        if not pending:
            return []
        if time.monotonic() >= deadline:
            return pending
        if stopped.wait(_POLL_INTERVAL_S):
            return None


# ---------------------------------------------------------------------------------------------
# Banner


def _safe_url(url: str) -> str:
    """`url` without its password, for printing."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _banner(
    settings: Settings, plan: Sequence[ServiceProcess], stores: _Stores, ready_s: float
) -> str:
    http = _client_address(settings.http_addr)
    base = f"http://{http}"
    admin = _client_address(settings.envoy_admin_addr)
    lines = [
        "",
        f"Foretell is up (ready in {ready_s:.1f} s).",
        "",
        f"  REST, gRPC, gRPC-Web   {base}   (Envoy)",
        f"  Envoy admin            http://{admin}",
    ]
    for process in plan:
        label = "gRPC (direct)" if len(plan) == 1 else f"{process.name} (direct)"
        grpc_at = _client_address(process.grpc_addr)
        metrics_at = _client_address(process.metrics_addr)
        lines.append(f"  {label:<22} {grpc_at}   metrics http://{metrics_at}/metrics")
    db_note = (
        f"embedded, data in {stores.embedded_postgres}" if stores.embedded_postgres else "external"
    )
    redis_note = (
        f"embedded, data in {stores.embedded_redis}" if stores.embedded_redis else "external"
    )
    lines += [
        f"  PostgreSQL             {_safe_url(stores.database_url)}   ({db_note})",
        f"  Redis                  {_safe_url(stores.redis_url)}   ({redis_note})",
        f"  Data directory         {settings.data_dir}",
        "",
        "Try it:",
        f'  curl -s -X POST {base}/v1/users -d \'{{"email":"ada@example.com",'
        '"password":"correct horse battery","displayName":"Ada","role":"ROLE_PROVIDER"}\'',
        f'  TOKEN=$(curl -s -X POST {base}/v1/auth:login -d \'{{"email":"ada@example.com",'
        '"password":"correct horse battery"}\' | python3 -c '
        '\'import json,sys; print(json.load(sys.stdin)["tokens"]["accessToken"])\')',
        f'  curl -s {base}/v1/users/me -H "authorization: Bearer $TOKEN"',
        "",
        "From Python:",
        "  import grpc",
        "  from foretell.account.v1 import account_service_pb2 as pb",
        "  from foretell.account.v1 import account_service_pb2_grpc as rpc",
        f'  with grpc.insecure_channel("{http}") as channel:',
        "      reply = rpc.AccountServiceStub(channel).Login(",
        '          pb.LoginRequest(email="ada@example.com", password="correct horse battery"))',
        "      print(reply.user)",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The command


def _start_stores(settings: Settings, console: _Console, stack: contextlib.ExitStack) -> _Stores:
    """The database (started and migrated) and Redis, embedded ones started when no URL is
    given. Both run outside honcho and stop after its children (`stack` unwinds last): the
    services and the worker must never see their stores vanish while they shut down."""
    from foretell._embedded import redis_command, start_postgres
    from foretell.db.migrate import upgrade_sync

    database_url = settings.database_url
    pgdata: Path | None = None
    if database_url is None:
        pgdata = settings.data_dir / "postgres"
        console.say(f"starting embedded PostgreSQL in {pgdata}")
        try:
            postgres = start_postgres(pgdata)
        except Exception as error:
            raise StartupError(
                f"embedded PostgreSQL in {pgdata} did not start ({error}); see {pgdata / 'log'}"
            ) from error
        stack.callback(_stop_postgres, postgres.stop, console)
        database_url = postgres.url

    redis_dir: Path | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        try:
            embedded = redis_command(settings.data_dir / "redis")
            log = open(embedded.directory / "redis.log", "ab")  # noqa: SIM115 - closed on stop
            # A session of its own, like PostgreSQL's: a Ctrl-C in the terminal must not stop
            # it before the services and the worker.
            redis = subprocess.Popen(  # noqa: S603 - our own redis-server command line
                embedded.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as error:
            raise StartupError(f"embedded Redis cannot be started: {error}") from error
        console.say(f"started embedded Redis in {embedded.directory} (pid {redis.pid})")
        stack.callback(_stop_redis, redis, log, console)
        redis_url, redis_dir = embedded.url, embedded.directory

    console.say(f"migrating the database at {_safe_url(database_url)}")
    try:
        upgrade_sync(database_url)
    except Exception as error:
        raise StartupError(
            f"could not migrate the database at {_safe_url(database_url)}: {error}"
        ) from error
    return _Stores(database_url, redis_url, pgdata, redis_dir)


def _load_demo(database_url: str, data_dir: Path, console: _Console) -> None:
    """The demo market data: the same idempotent load as `foretell demo` (which also creates
    the demo provider and model and replays them; up only suggests it, to stay fast)."""
    import asyncio

    from foretell.demo import DemoDataMissing, run_demo

    try:
        results = asyncio.run(run_demo(database_url))
    except DemoDataMissing as error:
        console.say(f"no demo data: {error}")
        return
    loaded = ", ".join(f"{r.symbol} {r.resolution} ({r.received} bars)" for r in results)
    console.say(f"demo market data: {loaded}")
    # Only the bars at start: the demo model's build and its replay (hundreds of sandboxed
    # runs) would delay every start by minutes. `foretell demo` does them, once.
    console.say(
        "for a demo provider and a public model with a simulated track record, run: "
        f"FORETELL_DATABASE_URL='{_safe_url(database_url)}' FORETELL_DATA_DIR='{data_dir}' "
        "foretell demo"
    )


def _stop_redis(process: subprocess.Popen[bytes], log: IO[bytes], console: _Console) -> None:
    console.say("stopping embedded Redis")
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _stop_postgres(stop: Callable[[], None], console: _Console) -> None:
    console.say("stopping embedded PostgreSQL")
    stop()


def _envoy_config(settings: Settings, plan: Sequence[ServiceProcess]) -> Path:
    from foretell.gateway import render_envoy_config, validate_envoy_config

    upstreams: dict[str, Address] = {}
    for process in plan:
        names = list(SERVICES) if process.service == "all" else [process.service]
        upstreams.update(dict.fromkeys(names, _client_address(process.grpc_addr)))
    path = settings.data_dir / "envoy.yaml"
    try:
        path.write_text(render_envoy_config(settings, upstreams))
        validate_envoy_config(path)
    except (ValueError, OSError) as error:
        raise StartupError(f"the Envoy config cannot be used: {error}") from error
    return path


@contextlib.contextmanager
def _startup_signals() -> Iterator[None]:
    """Until honcho takes over, SIGTERM interrupts start-up like Ctrl-C does, so that the
    embedded PostgreSQL is stopped rather than orphaned. Restores the handlers at the end."""

    def interrupt(_num: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_up(settings: Settings, *, demo: bool = False) -> int:
    """Runs the platform until Ctrl-C, SIGTERM or a child's exit (see the module docstring).

    Returns 0 after a stop by signal in which every child stopped cleanly, 1 otherwise.
    Raises AlreadyRunning or StartupError before anything has started.
    """
    started_at = time.monotonic()
    data_dir = settings.data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(f"FORETELL_DATA_DIR {data_dir}: {error.strerror}") from error
    settings = dataclasses.replace(settings, data_dir=data_dir)
    plan = plan_services(settings)
    names = [p.name for p in plan] + ["worker", "envoy"]
    console = _Console(sys.stdout, names)

    with _startup_signals(), _data_dir_lock(data_dir), contextlib.ExitStack() as stack:
        check_addresses(_listeners(settings, plan))
        try:
            from foretell.auth.keys import load_or_create_keys

            load_or_create_keys(settings.keys_dir)
            envoy_yaml = _envoy_config(settings, plan)
            stores = _start_stores(settings, console, stack)
            if demo:
                _load_demo(stores.database_url, settings.data_dir, console)
        except KeyboardInterrupt:
            console.say("interrupted during start-up")
            return 0
        return _supervise(settings, plan, stores, envoy_yaml, console, started_at)
    raise AssertionError("unreachable")  # pragma: no cover - the with block always returns


def _supervise(
    settings: Settings,
    plan: Sequence[ServiceProcess],
    stores: _Stores,
    envoy_yaml: Path,
    console: _Console,
    started_at: float,
) -> int:
    from foretell.gateway import envoy_binary

    stopped = threading.Event()
    deadline = time.monotonic() + READY_TIMEOUT_S

    def watch() -> None:
        with contextlib.ExitStack() as channels:
            checks: list[_Check] = []
            for process in plan:
                target = _client_address(process.grpc_addr)
                channel = channels.enter_context(grpc.insecure_channel(str(target)))
                checks += [_grpc_check(channel, target, name) for name in process.full_names]
            checks.append(_redis_check(stores.redis_url))
            # Last, so that it is polled only once the services answer.
            checks.append(
                _envoy_check(
                    _client_address(settings.http_addr),
                    _client_address(settings.envoy_admin_addr),
                    "/v1/auth/jwks",
                )
            )
            failing = _wait_until_ready(checks, deadline, stopped)
        if failing is None:
            return
        if failing:
            detail = "; ".join(f"{check.what}: {check.last}" for check in failing)
            console.say(f"error: not ready after {READY_TIMEOUT_S:.0f} s: {detail}")
            manager.fail(f"it was not ready after {READY_TIMEOUT_S:.0f} s (see above)")
            return
        console.raw(_banner(settings, plan, stores, time.monotonic() - started_at))

    watcher = threading.Thread(target=watch, name="foretell-up-ready", daemon=True)
    manager = _Supervisor(console, watcher.start)
    for process in plan:
        argv = [*_foretell_command(), "serve", process.service]
        manager.add_process(process.name, _shell(argv), env=_child_env(settings, stores, process))
    # The worker runs background jobs (builds); it reads the same stores as the services.
    manager.add_process(
        "worker",
        _shell([*_foretell_command(), "worker"]),
        env=_child_env(settings, stores, plan[0]),
    )
    envoy_argv = [
        envoy_binary(),
        "-c",
        str(envoy_yaml),
        "--log-level",
        "warn",
        # Two Envoys on one machine (a second data dir, the test suite) must not share
        # shared-memory regions, which a fixed base id would make them do.
        "--use-dynamic-base-id",
    ]
    manager.add_process("envoy", _shell(envoy_argv))

    # honcho SIGKILLs whatever is left KILL_WAIT seconds after it asked the children to stop;
    # its default (5 s) is shorter than the services' drain time plus their shutdown.
    honcho.manager.KILL_WAIT = max(
        honcho.manager.KILL_WAIT, settings.shutdown_grace_s + _KILL_MARGIN_S
    )
    try:
        manager.loop()
    finally:
        stopped.set()
    watcher.join(timeout=5)
    return _exit_code(manager, console)


def _exit_code(manager: _Supervisor, console: _Console) -> int:
    codes = manager.returncodes()
    # A child stopped by our SIGTERM may report it as -15 instead of exiting 0 itself.
    unclean = {n: c for n, c in codes.items() if c not in (0, -signal.SIGTERM)}
    if manager.by_signal and not unclean:
        console.say(f"stopped ({manager.cause})")
        return 0
    if manager.by_signal:
        listed = ", ".join(f"{n} (rc={c})" for n, c in unclean.items())
        console.say(f"stopped ({manager.cause}), but not cleanly: {listed}")
        return 1
    console.say(f"stopped because {manager.cause}")
    return 1
