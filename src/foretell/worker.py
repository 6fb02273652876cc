"""`foretell worker`: runs the platform's background jobs (arq) until SIGTERM.

Jobs are delivered at least once (a crash or a restart re-runs them), so every job is
idempotent: it reads the state it is about to change and does nothing when already done.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from arq import Worker, func
from arq.connections import RedisSettings

from foretell.logs import get_logger
from foretell.runtime.resources import open_resources
from foretell.services.registry.build import build_version
from foretell.settings import Settings

log = get_logger("foretell.worker")


def create_worker(settings: Settings, *, burst: bool = False) -> Worker:
    """A worker for every job, with the process's resources in ctx["resources"]."""
    assert settings.redis_url

    async def startup(ctx: dict[str, Any]) -> None:
        stack = AsyncExitStack()
        ctx["stack"] = stack
        ctx["resources"] = await stack.enter_async_context(open_resources(settings))
        log.info("worker started", jobs=["build_version"])

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["stack"].aclose()

    return Worker(
        functions=[func(build_version, timeout=settings.build_timeout_s + 60, max_tries=3)],
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
