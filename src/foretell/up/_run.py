"""The command itself: each start-up step in order, then the children under supervision."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
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
from foretell.up._plan import ServiceProcess, plan_services, upstreams
from foretell.up._stores import safe_url, start_stores
from foretell.up._supervise import supervise


def run_up(settings: Settings, *, demo: bool = False) -> int:
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
    names = [p.name for p in plan] + ["worker", "envoy"]
    console = Console(sys.stdout, names)

    with _startup_signals(), data_dir_lock(data_dir), contextlib.ExitStack() as stack:
        check_addresses(listeners(settings, plan))
        try:
            load_or_create_keys(settings.keys_dir)
            envoy_yaml = _envoy_config(settings, plan)
            stores = start_stores(settings, console, stack)
            if demo:
                _load_demo(stores.database_url, settings.data_dir, console)
        except KeyboardInterrupt:
            console.say("interrupted during start-up")
            return 0
        return supervise(settings, plan, stores, envoy_yaml, console, started_at)
    raise AssertionError("unreachable")  # pragma: no cover - the with block always returns


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


def _envoy_config(settings: Settings, plan: Sequence[ServiceProcess]) -> Path:
    path = settings.data_dir / "envoy.yaml"
    try:
        path.write_text(render_envoy_config(settings, upstreams(plan)))
        validate_envoy_config(path)
    except (ValueError, OSError) as error:
        raise StartupError(f"the Envoy config cannot be used: {error}") from error
    return path


def _load_demo(database_url: str, data_dir: Path, console: Console) -> None:
    """The demo market data: the same idempotent load as `foretell demo` (which also creates
    the demo provider and model and replays them; up only suggests it, to stay fast)."""
    # Imported here: it pulls in the services' market-data code, which `--no-demo` never needs.
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
        f"FORETELL_DATABASE_URL='{safe_url(database_url)}' FORETELL_DATA_DIR='{data_dir}' "
        "foretell demo"
    )
