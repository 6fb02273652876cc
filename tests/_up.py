"""A real `foretell up` in a subprocess, for the tests that drive it: its environment on free
private ports (its own embedded PostgreSQL and Redis, never the machine's), its output read by
a thread so a test waits for a line with a deadline, and the clean-up after a failure."""

from __future__ import annotations

import contextlib
import os
import queue
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

import psutil  # type: ignore[import-untyped]

FORETELL = Path(sys.executable).parent / "foretell"
BANNER = "Foretell is up"
BANNER_END = "Ctrl-C stops everything."
READY_TIMEOUT_S = 90.0
GRACE_S = 2.0
# The services drain for GRACE_S; the rest covers Envoy, Redis and stopping PostgreSQL.
STOP_TIMEOUT_S = GRACE_S + 15.0


def free_port() -> int:
    # Racy by nature, but `foretell up` checks every port itself and says which one is taken.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def up_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    # The suite may run with FORETELL_* set (a test database, say): none of it may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORETELL_")}
    env.update(
        FORETELL_DATA_DIR=str(data_dir),
        FORETELL_HTTP_ADDR=f"127.0.0.1:{free_port()}",
        FORETELL_ENVOY_ADMIN_ADDR=f"127.0.0.1:{free_port()}",
        FORETELL_GRPC_ADDR=f"127.0.0.1:{free_port()}",
        FORETELL_METRICS_ADDR=f"127.0.0.1:{free_port()}",
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
        """Everything printed so far, including lines no `wait_for` has read yet."""
        pending: list[str | None] = []
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for line in pending:
            if line is None:
                # The end stays for the next `wait_for`, which reports the exit.
                self._queue.put(None)
            else:
                self.lines.append(line)
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
                stop_postgres(data_dir)
        # Closing the pipe while the reader blocks on it would hang; it ends with the writers.
        self._reader.join(timeout=5)
        if not self._reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()


def stop_postgres(data_dir: Path) -> None:
    pid_file = data_dir / "postgres" / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(psutil.NoSuchProcess, ValueError):
            # SIGQUIT: PostgreSQL's immediate shutdown, postmaster and its workers.
            psutil.Process(int(pid_file.read_text().split()[0])).send_signal(signal.SIGQUIT)


def alive(process: psutil.Process) -> bool:
    # A zombie is dead; outside a real init nobody may reap it, so it can linger.
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def descendants(up: Up, data_dir: Path) -> list[psutil.Process]:
    """Every process `foretell up` runs: its children's trees, and the embedded PostgreSQL,
    which pg_ctl detaches from it."""
    processes: list[psutil.Process] = psutil.Process(up.proc.pid).children(recursive=True)
    postmaster = (data_dir / "postgres" / "postmaster.pid").read_text().split()[0]
    processes.append(psutil.Process(int(postmaster)))
    return processes


def temp_data_dir() -> Iterator[Path]:
    """A fresh data directory, removed afterwards (the body of each module's fixture)."""
    # Short on purpose: Unix sockets (PostgreSQL's, Redis's) live under it.
    root = Path(tempfile.mkdtemp(prefix="ftup-", dir="/tmp"))
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.1)


def child(up: Up, argv_tail: list[str]) -> psutil.Process:
    """The child of `foretell up` whose command line ends with `argv_tail`, or (for programs
    that rewrite their command line, as redis-server does) whose name is `argv_tail[0]`."""
    for process in psutil.Process(up.proc.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.cmdline()[-len(argv_tail) :] == argv_tail or [process.name()] == argv_tail:
                return process
    raise AssertionError(f"no child {argv_tail}")
