"""The children under honcho: their command lines, a readiness thread, and the exit code."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import honcho.manager

from foretell.gateway import envoy_binary
from foretell.settings import Settings
from foretell.up._banner import banner
from foretell.up._console import Console
from foretell.up._plan import WORKER_LANES, ServiceProcess
from foretell.up._ready import readiness_checks, wait_until_ready
from foretell.up._stores import Stores

READY_TIMEOUT_S = 60.0
# Extra time, on top of the services' grace period, before honcho sends SIGKILL.
KILL_MARGIN_S = 5.0


class Supervisor(honcho.manager.Manager):  # type: ignore[misc]
    """honcho's Manager, plus what `foretell up` needs from it: why the run stopped (a signal,
    a child exiting, or not becoming ready), each child's exit code, and a hook that runs once
    every child has been forked.

    honcho forks one helper process per child when its loop starts; the hook starts the
    readiness thread only after those forks, so no gRPC thread exists while forking.
    """

    def __init__(self, console: Console, on_started: Callable[[], None]) -> None:
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


def foretell_command() -> list[str]:
    # The console script beside this Python (the virtualenv's), so children run this install.
    script = Path(sys.executable).parent / "foretell"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from foretell.cli import main; main()"]


def shell(argv: Sequence[str]) -> str:
    # honcho runs commands through `sh -c`; `exec` makes the pid honcho signals the program's.
    return "exec " + shlex.join(argv)


def child_env(
    settings: Settings,
    stores: Stores,
    process: ServiceProcess,
    base: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """`base` (our own environment) with the addresses and stores this child must use."""
    env = dict(base)
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


def envoy_argv(binary: str, config: Path) -> list[str]:
    return [
        binary,
        "-c",
        str(config),
        "--log-level",
        "warn",
        # Two Envoys on one machine (a second data dir, the test suite) must not share
        # shared-memory regions, which a fixed base id would make them do.
        "--use-dynamic-base-id",
    ]


def supervise(
    settings: Settings,
    plan: Sequence[ServiceProcess],
    stores: Stores,
    envoy_yaml: Path,
    console: Console,
    started_at: float,
    after_ready: Callable[[], None] | None = None,
) -> int:
    """Runs the children until one exits or a signal stops them; returns the exit code.
    `after_ready` runs (on the readiness thread) once the banner is printed."""
    stopped = threading.Event()
    deadline = time.monotonic() + READY_TIMEOUT_S

    def watch() -> None:
        with contextlib.ExitStack() as channels:
            failing = wait_until_ready(
                readiness_checks(settings, plan, stores.redis_url, channels), deadline, stopped
            )
        if failing is None:
            return
        if failing:
            detail = "; ".join(f"{check.what}: {check.last}" for check in failing)
            console.say(f"error: not ready after {READY_TIMEOUT_S:.0f} s: {detail}")
            manager.fail(f"it was not ready after {READY_TIMEOUT_S:.0f} s (see above)")
            return
        console.raw(banner(settings, plan, stores, time.monotonic() - started_at))
        if after_ready is not None:
            after_ready()

    watcher = threading.Thread(target=watch, name="foretell-up-ready", daemon=True)
    manager = Supervisor(console, watcher.start)
    for process in plan:
        argv = [*foretell_command(), "serve", process.service]
        manager.add_process(process.name, shell(argv), env=child_env(settings, stores, process))
    # One worker per lane (builds, live runs, dry runs, replays), each with its own queue and
    # concurrency; they read the same stores as the services.
    for lane in WORKER_LANES:
        manager.add_process(
            f"worker-{lane}",
            shell([*foretell_command(), "worker", "--lane", lane]),
            env=child_env(settings, stores, plan[0]),
        )
    manager.add_process("envoy", shell(envoy_argv(envoy_binary(), envoy_yaml)))

    # honcho SIGKILLs whatever is left KILL_WAIT seconds after it asked the children to stop;
    # its default (5 s) is shorter than the services' drain time plus their shutdown.
    honcho.manager.KILL_WAIT = max(
        honcho.manager.KILL_WAIT, settings.shutdown_grace_s + KILL_MARGIN_S
    )
    try:
        manager.loop()
    finally:
        stopped.set()
    watcher.join(timeout=5)
    code, message = exit_status(manager.returncodes(), manager.cause, by_signal=manager.by_signal)
    console.say(message)
    return code


def exit_status(
    returncodes: Mapping[str, int], cause: str | None, *, by_signal: bool
) -> tuple[int, str]:
    """The exit code of `foretell up` and the line that explains it: 0 only after a stop by
    signal in which every child stopped cleanly."""
    # A child stopped by our SIGTERM may report it as -15 instead of exiting 0 itself.
    unclean = {n: c for n, c in returncodes.items() if c not in (0, -signal.SIGTERM)}
    if by_signal and not unclean:
        return 0, f"stopped ({cause})"
    if by_signal:
        listed = ", ".join(f"{n} (rc={c})" for n, c in unclean.items())
        return 1, f"stopped ({cause}), but not cleanly: {listed}"
    return 1, f"stopped because {cause}"
