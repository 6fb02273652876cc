"""A run as the platform makes it: the site's run directory, SDK and limits, read from the
settings in one place for the scheduler, dry runs and the demo replay."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from foretell.db import Database
from foretell.db.models import Model, Version
from foretell.runs._execute import RunKind, RunRecord, execute_run
from foretell.sandbox import SandboxLimits, sdk_dir
from foretell.settings import Settings
from foretell.store import ArtifactStore


def run_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        wall_seconds=settings.run_wall_s,
        cpu_seconds=settings.run_cpu_s,
        memory_mib=settings.run_memory_mib,
    )


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
    )
