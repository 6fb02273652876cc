"""A run as the platform makes it: the site's run directory, SDK and limits, read from the
settings in one place for the scheduler, dry runs and the demo replay."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from foretell.db import Database
from foretell.db.models import Model, Version
from foretell.runs._execute import RunKind, RunRecord, execute_run
from foretell.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    TemplatePool,
    detect_cgroups,
    sdk_dir,
)
from foretell.settings import Settings
from foretell.store import ArtifactStore


def run_job_timeout_s(settings: Settings) -> int:
    """Longer than the sandbox's own wall clock, so the jail's limit fires first and the run is
    recorded as a timeout; past it, arq cancels the job, and cancelling kills the jail."""
    return settings.run_wall_s + settings.job_grace_s


def run_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        wall_seconds=settings.run_wall_s,
        cpu_seconds=settings.run_cpu_s,
        memory_mib=settings.run_memory_mib,
    )


# data directory -> this process's warm templates.
_pools: dict[Path, TemplatePool] = {}


def _sweep(root: Path) -> None:
    """Removes the template directories of worker processes that are gone (their jails died
    with them: nsjail runs under PR_SET_PDEATHSIG)."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.name.isdigit() and not Path("/proc", entry.name).exists():
            shutil.rmtree(entry, ignore_errors=True)


def warm_templates(settings: Settings) -> TemplatePool | None:
    """This process's warm templates for the site, or None when warm starts are off (or this
    host has no cgroups, where cold runs fail with the reason)."""
    if settings.warm_starts != "on":
        return None
    pool = _pools.get(settings.data_dir)
    if pool is None:
        try:
            cgroups = detect_cgroups()
        except SandboxUnavailable:
            return None
        root = settings.data_dir / "warm"
        _sweep(root)
        pool = _pools[settings.data_dir] = TemplatePool(
            root=root / str(os.getpid()),
            sdk_dir=sdk_dir(settings.data_dir),
            cgroups=cgroups,
            max_templates=settings.warm_templates,
            max_memory_bytes=settings.warm_memory_mib * 1024 * 1024,
        )
    return pool


async def close_warm_templates() -> None:
    """Closes every warm template of this process (the worker's shutdown)."""
    while _pools:
        _data_dir, pool = _pools.popitem()
        await pool.close()


async def run_on_platform(
    db: Database,
    store: ArtifactStore,
    settings: Settings,
    model: Model,
    version: Version,
    as_of: datetime,
    *,
    kind: RunKind,
    clock: Callable[[], datetime],
) -> RunRecord:
    """`execute_run` with the site's run directory, SDK and run limits."""
    return await execute_run(
        db,
        store,
        model,
        version,
        as_of,
        run_root=settings.data_dir / "runs",
        sdk=sdk_dir(settings.data_dir),
        kind=kind,
        limits=run_limits(settings),
        clock=clock,
        templates=warm_templates(settings),
    )
