"""Warm starts: hostile models run through the platform's run path (`execute_run` with the
worker's templates, real nsjail), each rule of issue 13 as an attack that must fail."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import types
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client import generate_latest

from foretell import metrics
from foretell.db.models import Model, Version
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runs import RunRecord, execute_run
from foretell.runtime import Resources
from foretell.sandbox import SandboxLimits, Template, TemplatePool, detect_cgroups, sdk_dir
from foretell.sdk import _fork
from foretell.settings import Settings
from tests.conftest import MovableClock, SignUp
from tests.test_runs import AS_OF, model_from_source

if TYPE_CHECKING:
    from grpc import aio

pytestmark = pytest.mark.timeout(240)

LIMITS = SandboxLimits(wall_seconds=20, cpu_seconds=20, memory_mib=512)

# Leaves state of every kind behind, and reports what an earlier run left: a module global, a
# file and a directory it cannot read in /tmp, a thread, a daemon process; then forecasts.
STATEFUL = """
import os, subprocess, sys, threading, time
from foretell.sdk import Forecast

RUNS = []

def predict(ctx):
    RUNS.append(ctx.as_of)
    print("globals", len(RUNS), flush=True)
    print("tmp", sorted(os.listdir("/tmp")), flush=True)
    print("threads", sorted(t.name for t in threading.enumerate()), flush=True)
    print("procs", sorted(p for p in os.listdir("/proc") if p.isdigit()), flush=True)
    open("/tmp/left-behind", "w").write("x")
    os.makedirs("/tmp/locked/inner", exist_ok=True)
    os.chmod("/tmp/locked", 0)
    threading.Thread(target=time.sleep, args=(600,), name="lingering", daemon=True).start()
    if os.fork() == 0:
        os.setsid()
        time.sleep(600)
        os._exit(0)
    return [Forecast(s, ctx.target_time, "up") for s in ctx.symbols]
"""

# An import-time side effect on everything a later run in the same process would use.
POISONER = """
import foretell.sdk
import foretell.sdk._context as context
context.Forecast.__init__ = None
foretell.sdk.POISONED = True
open("/tmp/poison", "w").write("x")
import builtins
builtins.POISONED = True

def predict(ctx):
    return []
"""

CLEAN = """
import builtins, os
import foretell.sdk
from foretell.sdk import Forecast

def predict(ctx):
    print("poisoned", hasattr(foretell.sdk, "POISONED"), hasattr(builtins, "POISONED"),
          os.path.exists("/tmp/poison"), flush=True)
    return [Forecast(s, ctx.target_time, "up") for s in ctx.symbols]
"""

# Two of its runs at different as_of at once: each tries to read bars through every other
# socket it can name (its sibling's run-scoped server serves a later as_of), and to signal
# every other process it can see.
SIBLING = """
import glob, os, signal, time
from datetime import timedelta
import grpc
from foretell.sdk import Forecast
from foretell.sdk._context import Context

def sockets():
    found = set()
    for directory, dirs, files in os.walk("/"):
        if directory == "/" and "proc" in dirs:
            dirs.remove("proc")
        for name in files:
            path = os.path.join(directory, name)
            try:
                if os.stat(path).st_mode & 0o170000 == 0o140000:
                    found.add(path)
            except OSError:
                pass
    found.update(glob.glob("/proc/*/root/run/foretell/*"))
    found.update(glob.glob("/proc/*/cwd/../../run/foretell/*"))
    return sorted(found)

def predict(ctx):
    time.sleep(1.5)
    mine = os.environ["FORETELL_SOCKET"]
    for path in sockets():
        try:
            with grpc.insecure_channel("unix://" + path) as channel:
                other = Context(channel, as_of=ctx.as_of + timedelta(days=1),
                                symbols=ctx.symbols, resolution=ctx.resolution,
                                horizon=ctx.horizon, lookback=48)
                bars = other.bars(ctx.symbols[0], lookback=48)
            latest = bars.time[-1] if len(bars) else None
            own = os.path.realpath(path) == os.path.realpath(mine)
            late = latest is not None and latest + timedelta(hours=1) > ctx.as_of
            print(path, "own" if own else "other", "LOOKAHEAD" if late else "in range", flush=True)
        except Exception as e:
            print(path, "blocked", type(e).__name__, flush=True)
    # PID 1 is the template: the kernel drops signals it has no handler for (asserted alive
    # by the test); any other process would be a sibling.
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        os.kill(1, number)
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) not in (1, os.getpid()):
            try:
                os.kill(int(pid), signal.SIGTERM)
                print("signalled", pid, "ESCAPED", flush=True)
            except OSError as e:
                print("signal", pid, "blocked", e.errno, flush=True)
    bars = ctx.bars(ctx.symbols[0], lookback=48)
    print("own latest", bars.time[-1], flush=True)
    return [Forecast(s, ctx.target_time, "up") for s in ctx.symbols]
"""

SLOW = """
import time
from foretell.sdk import Forecast

def predict(ctx):
    time.sleep(2)
    return [Forecast(s, ctx.target_time, "up") for s in ctx.symbols]
"""


@pytest.fixture
async def templates(settings: Settings, tmp_path: Path) -> AsyncIterator[TemplatePool]:
    # Short and searchable by the jail's user (pytest's tmp_path is neither).
    root = Path("/tmp") / f"ftw-{tmp_path.name[-12:]}"  # noqa: S108
    root.mkdir(mode=0o711)
    pool = TemplatePool(root, sdk_dir(settings.data_dir), detect_cgroups(), max_templates=4)
    try:
        yield pool
    finally:
        await pool.close()
        root.rmdir()


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> pb_grpc.RegistryServiceAsyncStub:
    return pb_grpc.RegistryServiceStub(channel)


async def run(
    resources: Resources,
    settings: Settings,
    pair: tuple[Model, Version],
    clock: MovableClock,
    pool: TemplatePool | None,
    as_of_hours: int = 0,
    limits: SandboxLimits = LIMITS,
) -> RunRecord:
    model, version = pair
    return await execute_run(
        resources.db, resources.store, model, version, AS_OF - timedelta(hours=as_of_hours),
        run_root=settings.data_dir / "runs", sdk=sdk_dir(settings.data_dir), kind="simulated",
        limits=limits, clock=clock, templates=pool,
    )  # fmt: skip


def warm_count(result: str) -> float:
    value = metrics.WARM_STARTS.labels(result)._value.get()
    return float(value)


async def test_no_state_crosses_runs_of_one_template(
    registry: pb_grpc.RegistryServiceAsyncStub, sign_up: SignUp, settings: Settings,
    resources: Resources, tmp_path: Path, clock: MovableClock, templates: TemplatePool,
) -> None:  # fmt: skip
    pair = await model_from_source(registry, sign_up, settings, resources, tmp_path, STATEFUL)
    first = await run(resources, settings, pair, clock, templates, 1)
    warm_before = warm_count("warm")
    second = await run(resources, settings, pair, clock, templates, 2)
    assert (first.outcome, second.outcome) == ("ok", "ok"), second.detail + second.log
    # The second run was forked from the same template as the first.
    assert warm_count("warm") == warm_before + 1
    assert len(templates.templates) == 1
    for record in (first, second):
        assert "globals 1\n" in record.log, record.log
        assert "tmp []\n" in record.log, record.log
        assert "threads ['MainThread']\n" in record.log, record.log
        # The template (PID 1) and this run's child: nothing the first run left.
        assert "procs ['1', " in record.log and record.log.count("', '") == 1, record.log
        assert len(record.forecasts) == 2


async def test_a_provider_module_never_poisons_the_template(
    registry: pb_grpc.RegistryServiceAsyncStub, sign_up: SignUp, settings: Settings,
    resources: Resources, tmp_path: Path, clock: MovableClock, templates: TemplatePool,
) -> None:  # fmt: skip
    poisoner = await model_from_source(
        registry, sign_up, settings, resources, tmp_path / "p", POISONER
    )
    clean = await run(
        resources, settings,
        await model_from_source(registry, sign_up, settings, resources, tmp_path / "c", CLEAN),
        clock, templates, 1,
    )  # fmt: skip
    assert clean.outcome == "ok"
    poisoned = await run(resources, settings, poisoner, clock, templates, 1)
    assert poisoned.outcome == "ok", poisoned.detail
    model, version = await model_from_source(
        registry, sign_up, settings, resources, tmp_path / "d", CLEAN
    )
    after = await run(resources, settings, (model, version), clock, templates, 2)
    # Three models of one layer (no wheels), one template served them all.
    assert len(templates.templates) == 1
    assert after.outcome == "ok", after.detail + after.log
    assert "poisoned False False False" in after.log, after.log
    assert len(after.forecasts) == 2


async def test_concurrent_runs_of_a_version_cannot_reach_each_other(
    registry: pb_grpc.RegistryServiceAsyncStub, sign_up: SignUp, settings: Settings,
    resources: Resources, tmp_path: Path, clock: MovableClock, templates: TemplatePool,
) -> None:  # fmt: skip
    pair = await model_from_source(registry, sign_up, settings, resources, tmp_path, SIBLING)
    # A first run starts the layer's template; the two after it run at once, as a replay's.
    await run(resources, settings, pair, clock, templates, 20)
    early, late = await asyncio.gather(
        run(resources, settings, pair, clock, templates, 10),
        run(resources, settings, pair, clock, templates, 0),
    )
    assert len(templates.templates) == 2
    assert all(template.alive for template in templates.templates)
    for record in (early, late):
        assert record.outcome == "ok", record.detail + record.log
        assert "LOOKAHEAD" not in record.log and "ESCAPED" not in record.log, record.log
        assert " other " not in record.log, record.log
        assert "/run/foretell/feed.sock own in range" in record.log, record.log


async def test_a_template_killed_mid_run_falls_back_to_a_cold_start(
    registry: pb_grpc.RegistryServiceAsyncStub, sign_up: SignUp, settings: Settings,
    resources: Resources, tmp_path: Path, clock: MovableClock, templates: TemplatePool,
) -> None:  # fmt: skip
    pair = await model_from_source(registry, sign_up, settings, resources, tmp_path, SLOW)
    await run(resources, settings, pair, clock, templates, 3)
    [template] = templates.templates
    cold_before = warm_count("cold")
    task = asyncio.create_task(run(resources, settings, pair, clock, templates, 2))
    deadline = time.monotonic() + 10
    while not template.busy:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    template.process.kill()
    record = await task
    assert record.outcome == "ok", record.detail + record.log
    assert len(record.forecasts) == 2
    assert template not in templates.templates
    # The next run gets a new template.
    again = await run(resources, settings, pair, clock, templates, 1)
    assert again.outcome == "ok"
    [replacement] = templates.templates
    assert replacement is not template and replacement.alive
    assert warm_count("cold") == cold_before


async def test_a_hung_template_is_replaced_and_the_run_still_succeeds(
    registry: pb_grpc.RegistryServiceAsyncStub, sign_up: SignUp, settings: Settings,
    resources: Resources, tmp_path: Path, clock: MovableClock, templates: TemplatePool,
) -> None:  # fmt: skip
    pair = await model_from_source(registry, sign_up, settings, resources, tmp_path, CLEAN)
    await run(resources, settings, pair, clock, templates, 3)
    [template] = templates.templates
    _stop(template)
    record = await run(resources, settings, pair, clock, templates, 2)
    assert record.outcome == "ok", record.detail + record.log
    assert template not in templates.templates and not template.alive


async def test_the_next_runs_child_killed_while_it_waits_is_replaced(
    registry: pb_grpc.RegistryServiceAsyncStub, sign_up: SignUp, settings: Settings,
    resources: Resources, tmp_path: Path, clock: MovableClock, templates: TemplatePool,
) -> None:  # fmt: skip
    """After each run the template forks the next run's child ahead of it; if that child is
    gone by then, the template forks another and the run still starts warm."""
    pair = await model_from_source(registry, sign_up, settings, resources, tmp_path, CLEAN)
    await run(resources, settings, pair, clock, templates, 3)
    [template] = templates.templates
    [first] = _children(template.process.pid)
    waiting = await _waiting_child(first)
    os.kill(waiting, signal.SIGKILL)
    # Not waited for: a child killed but not yet dead may still accept the run's request into
    # its socket; the template gives the run only to a child that says it took it.
    cold_before = warm_count("cold")
    record = await run(resources, settings, pair, clock, templates, 2)
    assert record.outcome == "ok", record.detail + record.log
    assert templates.templates == (template,) and template.alive
    assert warm_count("cold") == cold_before
    assert await _waiting_child(first) != waiting


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def _waiting_child(template_pid: int) -> int:
    """The template's one child between runs: forked just after it reported the last run."""
    deadline = time.monotonic() + 10
    while not (children := _children(template_pid)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    [child] = children
    return child


def _stop(template: Template) -> None:
    """SIGSTOP to the template (the jail's PID 1, nsjail's child)."""
    pid = template.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        os.kill(int(child), signal.SIGSTOP)
    assert children


async def test_templates_are_bounded_evicted_and_reported(
    registry: pb_grpc.RegistryServiceAsyncStub, sign_up: SignUp, settings: Settings,
    resources: Resources, tmp_path: Path, clock: MovableClock, templates: TemplatePool,
) -> None:  # fmt: skip
    pair = await model_from_source(registry, sign_up, settings, resources, tmp_path, CLEAN)
    templates.max_templates = 1
    await run(resources, settings, pair, clock, templates, 3)
    [first] = templates.templates
    assert first.memory_bytes > 0
    text = generate_latest().decode()
    assert "foretell_warm_templates 1.0" in text
    assert "foretell_warm_template_memory_bytes" in text
    # Other limits: another layer; the bound is one template, so the first is evicted.
    other = SandboxLimits(wall_seconds=21, cpu_seconds=20, memory_mib=512)
    record = await run(resources, settings, pair, clock, templates, 2, other)
    assert record.outcome == "ok"
    [second] = templates.templates
    assert second is not first and not first.alive
    # A memory bound below one template's footprint: it is closed after its run, the run ok.
    templates.max_memory_bytes = 1024 * 1024
    record = await run(resources, settings, pair, clock, templates, 1, other)
    assert record.outcome == "ok"
    assert templates.templates == ()
    assert "foretell_warm_templates 0.0" in generate_latest().decode()


def test_first_use_modules_are_preloaded_only_with_all_their_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The template adds a wheel's first-use modules from a fixed table, keyed by packages it
    already imported: what a layer's template holds depends on the layer alone, never on runs."""
    monkeypatch.setattr(_fork, "ON_FIRST_USE", {("ft_wheel", "ft_frames"): ("ft_wheel.frames",)})
    monkeypatch.setitem(sys.modules, "ft_wheel", types.ModuleType("ft_wheel"))
    monkeypatch.delitem(sys.modules, "ft_frames", raising=False)
    assert _fork._first_use() == []
    monkeypatch.setitem(sys.modules, "ft_frames", types.ModuleType("ft_frames"))
    assert _fork._first_use() == ["ft_wheel.frames"]
