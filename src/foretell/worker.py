"""`foretell worker`: runs the platform's background jobs (arq) until SIGTERM.

Jobs are delivered at least once (a crash or a restart re-runs them), so every job is
idempotent: it reads the state it is about to change and does nothing when already done.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from arq import Worker, cron, func
from arq.connections import RedisSettings

from foretell.logs import get_logger
from foretell.runtime.resources import Clock, open_resources, utc_now
from foretell.scheduler import run_job_timeout_s, run_version, schedule_runs
from foretell.services.registry.build import build_job_timeout_s, build_version
from foretell.settings import Settings

log = get_logger("foretell.worker")


def create_worker(
    settings: Settings,
    *,
    burst: bool = False,
    clock: Clock = utc_now,
    scheduler: bool | None = None,
) -> Worker:
    """A worker for every job, with the process's resources in ctx["resources"] (their clock
    is `clock`, for tests). The scheduler cron runs when `scheduler` is true; by default when
    FORETELL_SCHEDULER is on and the worker is not a burst (test) worker."""
    assert settings.redis_url
    if scheduler is None:
        scheduler = settings.scheduler == "on" and not burst
    cron_jobs = [
        # Every minute at second 0; unique, so two workers never run a cycle at once.
        cron(schedule_runs, minute=None, second=0, run_at_startup=True, timeout=300)
    ]

    async def startup(ctx: dict[str, Any]) -> None:
        stack = AsyncExitStack()
        ctx["stack"] = stack
        ctx["resources"] = await stack.enter_async_context(open_resources(settings, clock))
        log.info("worker started", jobs=["build_version", "run_version"], scheduler=scheduler)

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["stack"].aclose()

    return Worker(
        functions=[
            func(build_version, timeout=build_job_timeout_s(settings), max_tries=3),
            func(run_version, timeout=run_job_timeout_s(settings), max_tries=3),
        ],
        cron_jobs=cron_jobs if scheduler else None,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        queue_name=settings.queue_name,
        burst=burst,
        handle_signals=not burst,
        # A minute, not arq's default hour, so `arq --check` style probes notice a dead worker.
        health_check_interval=60,
        keep_result=3600,
    )
