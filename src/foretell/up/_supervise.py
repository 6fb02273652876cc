"""The children of `foretell up`: their command lines, a readiness thread, and the exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from foretell.gateway import envoy_binary
from foretell.settings import Settings
from foretell.up._banner import banner
from foretell.up._children import Supervisor
from foretell.up._console import Console
from foretell.up._plan import WORKER_LANES, ServiceProcess
from foretell.up._ready import readiness_checks, wait_until_ready
from foretell.up._stores import Stores

READY_TIMEOUT_S = 60.0
# Extra time, on top of the services' grace period, before a child that ignores SIGTERM is killed.
KILL_MARGIN_S = 5.0


def foretell_command() -> list[str]:
    # The console script beside this Python (the virtualenv's), so children run this install.
    script = Path(sys.executable).parent / "foretell"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from foretell.cli import main; main()"]


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
    """Runs the children, restarting any that crashes, until a signal stops them or they do not
    become ready; returns the exit code. `after_ready` runs (on the readiness thread) once the
    banner is printed."""
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
            supervisor.stop(f"it was not ready after {READY_TIMEOUT_S:.0f} s (see above)")
            return
        console.raw(banner(settings, plan, stores, time.monotonic() - started_at))
        if after_ready is not None:
            after_ready()

    watcher = threading.Thread(target=watch, name="foretell-up-ready", daemon=True)
    supervisor = Supervisor(console, kill_wait_s=settings.shutdown_grace_s + KILL_MARGIN_S)
    if stores.redis_argv is not None:
        # The embedded Redis: restarted like the others when it crashes, stopped after them.
        supervisor.add("redis", stores.redis_argv, last=True)
    for process in plan:
        argv = [*foretell_command(), "serve", process.service]
        supervisor.add(process.name, argv, env=child_env(settings, stores, process))
    # One worker per lane (builds, live runs, dry runs, replays), each with its own queue and
    # concurrency; they read the same stores as the services.
    for lane in WORKER_LANES:
        supervisor.add(
            f"worker-{lane}",
            [*foretell_command(), "worker", "--lane", lane],
            env=child_env(settings, stores, plan[0]),
        )
    supervisor.add("envoy", envoy_argv(envoy_binary(), envoy_yaml))
    try:
        # The readiness thread starts after the first forks, so no gRPC thread exists then.
        supervisor.loop(on_started=watcher.start)
    finally:
        stopped.set()
    watcher.join(timeout=5)
    code, message = exit_status(
        supervisor.returncodes(), supervisor.cause, by_signal=supervisor.by_signal
    )
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
