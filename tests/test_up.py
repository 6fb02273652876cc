"""`foretell up` end to end: the real command in a subprocess, with its embedded PostgreSQL and
Redis, the services and Envoy, driven the way a person would drive it."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc

FORETELL = Path(sys.executable).parent / "foretell"
BANNER = "Foretell is up"
BANNER_END = "Ctrl-C stops everything."
READY_TIMEOUT_S = 90.0
GRACE_S = 2.0
# The services drain for GRACE_S; the rest covers Envoy, Redis and stopping PostgreSQL.
STOP_TIMEOUT_S = GRACE_S + 15.0


def _free_port() -> int:
    # Racy by nature, but `foretell up` checks every port itself and says which one is taken.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short on purpose: Unix sockets (PostgreSQL's, Redis's) live under it.
    root = Path(tempfile.mkdtemp(prefix="ftup-", dir="/tmp"))
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def _env(data_dir: Path, **overrides: str) -> dict[str, str]:
    # The suite may run with FORETELL_* set (a test database, say): none of it may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORETELL_")}
    env.update(
        FORETELL_DATA_DIR=str(data_dir),
        FORETELL_HTTP_ADDR=f"127.0.0.1:{_free_port()}",
        FORETELL_ENVOY_ADMIN_ADDR=f"127.0.0.1:{_free_port()}",
        FORETELL_GRPC_ADDR=f"127.0.0.1:{_free_port()}",
        FORETELL_METRICS_ADDR=f"127.0.0.1:{_free_port()}",
        FORETELL_SHUTDOWN_GRACE_S=str(GRACE_S),
    )
    env.update(overrides)
    return env


class Up:
    """A running `foretell up` whose output is read by a thread, so that the test can wait for a
    line with a timeout instead of sleeping."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            # The demo models' builds and replays would outlive what these tests measure.
            [str(FORETELL), "up", "--no-demo-models"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {text!r} after {timeout} s; output:\n{self.output}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"exited ({self.proc.wait()}) before {text!r}; output:\n{self.output}"
                )
            self.lines.append(line)
            if text in line:
                return

    def stop(self, timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        return code

    def close(self, data_dir: Path) -> None:
        """After a failure: stop it the normal way, else kill everything it started, so that a
        failing test leaves no services, Envoy or PostgreSQL behind."""
        if self.proc.poll() is None:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for process in [*tree, psutil.Process(self.proc.pid)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.kill()
                self.proc.wait()
                _stop_postgres(data_dir)
        # Closing the pipe while the reader blocks on it would hang; it ends with the writers.
        self._reader.join(timeout=5)
        if not self._reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()


def _stop_postgres(data_dir: Path) -> None:
    pid_file = data_dir / "postgres" / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(psutil.NoSuchProcess, ValueError):
            # SIGQUIT: PostgreSQL's immediate shutdown, postmaster and its workers.
            psutil.Process(int(pid_file.read_text().split()[0])).send_signal(signal.SIGQUIT)


def _alive(process: psutil.Process) -> bool:
    # A zombie is dead; outside a real init nobody may reap it, so it can linger.
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _descendants(up: Up, data_dir: Path) -> list[psutil.Process]:
    """Every process `foretell up` runs: its children's trees, and the embedded PostgreSQL,
    which pg_ctl detaches from it."""
    processes: list[psutil.Process] = psutil.Process(up.proc.pid).children(recursive=True)
    postmaster = (data_dir / "postgres" / "postmaster.pid").read_text().split()[0]
    processes.append(psutil.Process(int(postmaster)))
    return processes


@pytest.mark.timeout(120)
def test_up_serves_through_envoy_refuses_a_second_run_and_stops_cleanly(data_dir: Path) -> None:
    env = _env(data_dir)
    base = f"http://{env['FORETELL_HTTP_ADDR']}"
    up = Up(env)
    try:
        up.wait_for(BANNER_END, READY_TIMEOUT_S)
        assert BANNER in up.output
        processes = _descendants(up, data_dir)
        names = {p.name() for p in processes}
        assert {"postgres", "redis-server", "envoy"} <= names, names

        # The banner's first example, verbatim.
        body = {
            "email": "ada@example.com",
            "password": "correct horse battery",
            "displayName": "Ada",
            "role": "ROLE_PROVIDER",
        }
        created = httpx.post(f"{base}/v1/users", json=body, timeout=10)
        assert created.status_code == 200, created.text
        user = created.json()["user"]
        assert user["email"] == "ada@example.com"
        assert user["displayName"] == "Ada"
        assert user["role"] == "ROLE_PROVIDER"
        assert user["id"]

        login = httpx.post(
            f"{base}/v1/auth:login",
            json={"email": body["email"], "password": body["password"]},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        token = login.json()["tokens"]["accessToken"]
        me = httpx.get(
            f"{base}/v1/users/me", headers={"authorization": f"Bearer {token}"}, timeout=10
        )
        assert me.status_code == 200, me.text
        assert me.json()["user"]["id"] == user["id"]

        # The demo market data is there: the real bars the backtesting package ships.
        symbols = httpx.get(
            f"{base}/v1/symbols", headers={"authorization": f"Bearer {token}"}, timeout=10
        )
        assert symbols.status_code == 200, symbols.text
        counts = {
            (s["symbol"], r["resolution"]): int(r["barCount"])
            for s in symbols.json()["symbols"]
            for r in s["series"]
        }
        assert counts[("EURUSD", "RESOLUTION_1H")] == 5000

        # The banner's Python example: native gRPC through the same Envoy listener.
        with grpc.insecure_channel(env["FORETELL_HTTP_ADDR"]) as channel:
            reply = account_grpc.AccountServiceStub(channel).Login(
                account_pb.LoginRequest(email=body["email"], password=body["password"]),
                timeout=10,
            )
        assert reply.user.id == user["id"]

        second = subprocess.run(
            # Same ports too: the lock is checked first, so the message is about the lock.
            [str(FORETELL), "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert "already running" in second.stderr
        assert f"pid {up.proc.pid}" in second.stderr
        assert f"kill {up.proc.pid}" in second.stderr

        code = up.stop(STOP_TIMEOUT_S)
        assert code == 0, up.output
        left = [f"{p.pid} {p.name()}" for p in processes if _alive(p)]
        assert not left, f"still running: {left}\n{up.output}"
        assert "stopping embedded PostgreSQL" in up.output
    finally:
        up.close(data_dir)


@pytest.mark.timeout(120)
def test_up_split_runs_one_process_per_service(data_dir: Path) -> None:
    env = _env(data_dir, FORETELL_TOPOLOGY="split")
    # Split mode takes the five ports from each base: pick bases with room above them.
    grpc_base, metrics_base = _free_block(5), _free_block(5)
    env.update(
        FORETELL_GRPC_ADDR=f"127.0.0.1:{grpc_base}",
        FORETELL_METRICS_ADDR=f"127.0.0.1:{metrics_base}",
    )
    up = Up(env)
    try:
        up.wait_for(BANNER_END, READY_TIMEOUT_S)
        serving = [
            p
            for p in psutil.Process(up.proc.pid).children(recursive=True)
            if "serve" in p.cmdline()
        ]
        assert sorted(p.cmdline()[-1] for p in serving) == sorted(
            ["account", "registry", "subscription", "datafeed", "forecast"]
        )
        assert re.search(rf"forecast \(direct\)\s+127\.0\.0\.1:{grpc_base + 4}\b", up.output)
        created = httpx.post(
            f"http://{env['FORETELL_HTTP_ADDR']}/v1/users",
            json={
                "email": "grace@example.com",
                "password": "correct horse battery",
                "displayName": "Grace",
                "role": "ROLE_SUBSCRIBER",
            },
            timeout=10,
        )
        assert created.status_code == 200, created.text
        assert up.stop(STOP_TIMEOUT_S) == 0, up.output
        assert not [p for p in serving if _alive(p)]
    finally:
        up.close(data_dir)


def _free_block(size: int) -> int:
    """A port whose next `size - 1` ports are free too (at the time of asking)."""
    for _ in range(50):
        base = _free_port()
        if base + size > 65535:
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        return base
    raise AssertionError("no block of free ports found")


@pytest.mark.timeout(120)
def test_up_names_the_variable_of_a_taken_port_before_starting_anything(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [str(FORETELL), "up"],
            env=_env(data_dir, FORETELL_HTTP_ADDR=address),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"FORETELL_HTTP_ADDR {address} is already in use; set FORETELL_HTTP_ADDR to a free address"
        in result.stderr
    )
    # The port check comes first: no database was started for a run that cannot happen.
    assert not (data_dir / "postgres").exists()


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.1)


def _child(up: Up, argv_tail: list[str]) -> psutil.Process:
    for process in psutil.Process(up.proc.pid).children():
        if process.cmdline()[-len(argv_tail) :] == argv_tail:
            return process
    raise AssertionError(f"no child {argv_tail}")


@pytest.mark.timeout(150)
def test_up_restarts_a_killed_child_and_takes_every_child_with_it_when_killed(
    data_dir: Path,
) -> None:
    env = _env(data_dir)
    base = f"http://{env['FORETELL_HTTP_ADDR']}"
    up = Up(env)
    try:
        up.wait_for(BANNER_END, READY_TIMEOUT_S)
        services = _child(up, ["serve", "all"])
        services.kill()
        up.wait_for("services killed by signal 9", 10)
        up.wait_for("services restarted (pid", 10)
        restarted = _child(up, ["serve", "all"])
        assert restarted.pid != services.pid

        def answers() -> bool:
            return httpx.get(f"{base}/v1/auth/jwks", timeout=5).status_code == 200

        _wait_until(answers, 30, "answering through Envoy again")

        children = _descendants(up, data_dir)
        postmaster = children.pop()  # pg_ctl detaches it: pgserver adopts it at the next start
        assert {"redis-server", "envoy"} <= {p.name() for p in children}
        up.proc.kill()
        up.proc.wait()
        _wait_until(lambda: not any(_alive(p) for p in children), 30, "every child gone")
        _stop_postgres(data_dir)
        _wait_until(lambda: not _alive(postmaster), 30, "PostgreSQL stopped")
    finally:
        up.close(data_dir)
