"""A run as the platform makes it: the site's run directory, SDK and limits, read from the
settings in one place for the scheduler, dry runs and the demo replay."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from foretell.build import BuildState
from foretell.db import Database
from foretell.db.models import Model, Version
from foretell.logs import get_logger
from foretell.runs._execute import RunKind, RunRecord, execute_run, verified_image
from foretell.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    TemplatePool,
    detect_cgroups,
    sdk_dir,
)
from foretell.settings import Settings
from foretell.store import ArtifactCorrupt, ArtifactStore


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


_log = get_logger("foretell.runs")

# The live versions' images, most used first: their layers are the ones the next slot needs.
_LIVE_IMAGES = (
    select(Version.image_digest, func.count())
    .join(Model, (Model.id == Version.model_id) & (Model.live_version == Version.number))
    .where(Version.build_state == BuildState.READY, Version.image_digest.is_not(None))
    .group_by(Version.image_digest)
    .order_by(func.count().desc(), Version.image_digest)
)


async def prewarm_templates(
    db: Database, store: ArtifactStore, settings: Settings, *, within_s: float = 60.0
) -> int:
    """Starts warm templates for the layers of the live versions before the worker takes its
    first job, so that the first slot after a start or a restart does not wait for templates
    to import the SDK and the wheels. Every layer in use gets one template, most used first,
    and the rest of the bound goes round them again in that order (the runs of a slot share
    a few layers, and each template serves one run at a time).
    Returns how many templates were started; a template that does not start, or all of it
    taking longer than `within_s`, is no fault (those runs start cold, as they would have)."""
    pool = warm_templates(settings)
    if pool is None:
        return 0
    try:
        async with asyncio.timeout(within_s):
            return await _prewarm(db, store, settings, pool)
    except TimeoutError:
        _log.warning("warm templates not ready in time: the first runs may start cold")
        return 0


async def _prewarm(
    db: Database, store: ArtifactStore, settings: Settings, pool: TemplatePool
) -> int:
    async with db.read.connect() as conn:
        rows = (await conn.execute(_LIVE_IMAGES)).all()
    layers: Counter[tuple[Path, str]] = Counter()
    for image_digest, versions in rows:
        # Most used images first: once the bound's worth of layers is found, the rest would
        # get no template, and verifying them (a full hash each) would only delay the start.
        if len(layers) >= pool.max_templates:
            break
        if image_digest is None:
            continue
        try:
            image, site = await asyncio.to_thread(verified_image, store, image_digest)
        except (ArtifactCorrupt, OSError):
            continue  # a run of it is refused with the reason
        layers[(image, site)] += versions
    if not layers:
        return 0
    ranked = [layer for layer, _versions in layers.most_common()]
    # One per layer first, then round the most used again while the bound allows.
    chosen = list(itertools.islice(itertools.cycle(ranked), pool.max_templates))
    limits = run_limits(settings)
    held = 0
    all_held = asyncio.Event()

    async def hold(image: Path, site: str) -> bool:
        # Each holds its template until all have one: the same layer gets as many as chosen.
        nonlocal held
        async with pool.acquire(image, site, limits) as template:
            held += 1
            if held == len(chosen):
                all_held.set()
            await all_held.wait()
            return template is not None

    started = await asyncio.gather(*(hold(image, site) for image, site in chosen))
    return sum(started)


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
