"""The command itself: each start-up step in order, then the children under supervision."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from foretell.auth.keys import load_or_create_keys
from foretell.gateway import render_envoy_config, validate_envoy_config
from foretell.settings import Settings
from foretell.up._checks import check_addresses, data_dir_lock, listeners
from foretell.up._console import Console
from foretell.up._errors import StartupError
from foretell.up._plan import WORKER_LANES, ServiceProcess, plan_services, upstreams
from foretell.up._stores import start_stores
from foretell.up._supervise import supervise


def run_up(settings: Settings, *, demo: bool = False, demo_models: bool = False) -> int:
    """Runs the platform until Ctrl-C, SIGTERM or a child's exit (see the package docstring).

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
    names = [p.name for p in plan] + [f"worker-{lane}" for lane in WORKER_LANES] + ["envoy"]
    console = Console(sys.stdout, names)

    with _startup_signals(), data_dir_lock(data_dir), contextlib.ExitStack() as stack:
        check_addresses(listeners(settings, plan))
        try:
            load_or_create_keys(settings.keys_dir)
            envoy_yaml = _envoy_config(settings, plan)
            stores = start_stores(settings, console, stack)
            if demo:
                _load_demo(stores.database_url, console)
        except KeyboardInterrupt:
            console.say("interrupted during start-up")
            return 0
        after_ready = (
            (lambda: _start_demo_catalog(settings, stores.database_url, console))
            if demo_models
            else None
        )
        return supervise(settings, plan, stores, envoy_yaml, console, started_at, after_ready)
    raise AssertionError("unreachable")  # pragma: no cover - the with block always returns


@contextlib.contextmanager
def _startup_signals() -> Iterator[None]:
    """Until the supervisor takes over, SIGTERM interrupts start-up like Ctrl-C does, so that the
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


def _envoy_config(settings: Settings, plan: Sequence[ServiceProcess]) -> Path:
    path = settings.data_dir / "envoy.yaml"
    try:
        path.write_text(render_envoy_config(settings, upstreams(plan)))
        validate_envoy_config(path)
    except (ValueError, OSError) as error:
        raise StartupError(f"the Envoy config cannot be used: {error}") from error
    return path


def _load_demo(database_url: str, console: Console) -> None:
    """The demo market data, loaded before the services start (the same idempotent load as
    `foretell demo`); the demo models follow in the background (`_start_demo_catalog`)."""
    # Imported here: it pulls in the services' market-data code, which `--no-demo` never needs.
    from foretell.demo import DemoDataMissing, run_demo

    try:
        results = asyncio.run(run_demo(database_url))
    except DemoDataMissing as error:
        console.say(f"no demo data: {error}")
        return
    loaded = ", ".join(f"{r.symbol} {r.resolution} ({r.received} bars)" for r in results)
    console.say(f"demo market data: {loaded}")


def _start_demo_catalog(settings: Settings, database_url: str, console: Console) -> None:
    """The demo models (foretell.demo.DEMO_MODELS), set up in the background once the platform
    answers: their builds and replays (hundreds of sandboxed runs) take minutes, and the
    services serve meanwhile; each model is in the catalog as soon as it exists. Idempotent:
    a later start finds them and replays only what is missing. A failure is reported, never
    fatal: the platform runs without the demo."""

    def run() -> None:
        # Imported here, as in `_load_demo`: only a start with the demo needs them.
        from foretell.db import connect
        from foretell.demo import DEMO_CATALOG_REPLAY_SLOTS, ensure_demo_catalog

        async def setup() -> None:
            db = connect(database_url, pool_size=1)
            try:
                await ensure_demo_catalog(db, settings, replay=DEMO_CATALOG_REPLAY_SLOTS, say=say)
            finally:
                await db.close()

        def say(line: str) -> None:
            console.say(f"demo: {line}")

        try:
            asyncio.run(setup())
            console.say("demo: the demo models are ready")
        except Exception as error:  # noqa: BLE001 - reported; the platform runs without it
            console.say(f"demo: not set up ({type(error).__name__}: {error})")

    console.say(
        "demo: setting up the demo models in the background; they appear in the catalog as "
        "they are created"
    )
    threading.Thread(target=run, name="foretell-up-demo", daemon=True).start()
