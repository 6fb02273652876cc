"""`foretell worker`: runs the platform's background jobs (arq) until SIGTERM.

Jobs are delivered at least once (a crash or a restart re-runs them), so every job is
idempotent: it reads the state it is about to change and does nothing when already done.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any, Literal

from arq import Worker, cron, func
from arq.connections import RedisSettings
from sqlalchemy import text

from foretell import metrics
from foretell.billing.payments import processor_for
from foretell.billing.settle import run_billing
from foretell.build import build_job_timeout_s, build_version
from foretell.clock import Clock, utc_now
from foretell.ledger import chain
from foretell.logs import get_logger
from foretell.runtime.resources import open_resources
from foretell.sandbox import SandboxUnavailable, detect_cgroups, sweep_stale_run_cgroups
from foretell.scheduler import run_job_timeout_s, run_version, schedule_runs
from foretell.settings import Settings

log = get_logger("foretell.worker")

# Ledger checkpoints: every ten minutes, each chain that grew gets its head signed.
CHECKPOINT_MINUTES = set(range(0, 60, 10))

# What one worker process does. "all": jobs and periodic jobs (one machine). On a cluster the
# two are apart: "jobs" workers run builds and runs (they need the sandbox and scale out);
# one "cron" worker enqueues the scheduled runs, bills and signs checkpoints, on a queue of
# its own so that neither kind ever takes a job it has no function for.
WorkerRole = Literal["all", "jobs", "cron"]
CRON_QUEUE_SUFFIX = ":cron"


async def checkpoint_ledgers(ctx: dict[str, Any]) -> int:
    res = ctx["resources"]
    written = await chain.checkpoint(res.db, res.settings.ledger_keys_dir, res.clock)
    if written:
        log.info("ledger checkpoints signed", count=written)
    metrics.LEDGER_CHECKPOINTS.inc(written)
    metrics.LEDGER_CHECKPOINT_TIME.set_to_current_time()
    return written


_BUSINESS_QUERIES = (
    text("SELECT state, count(*) FROM subscriptions GROUP BY state"),
    text("SELECT count(*) FROM subscriptions WHERE trial_end IS NOT NULL"),
    text("SELECT currency, sum(amount_minor) FROM payments GROUP BY currency"),
)


async def observe_business(ctx: dict[str, Any]) -> None:
    """Refreshes the business figures this process exports (foretell.metrics.set_business)."""
    res = ctx["resources"]
    states, trials, revenue = _BUSINESS_QUERIES
    async with res.db.session() as session:
        by_state = {str(s): int(n) for s, n in (await session.execute(states)).all()}
        trials_started = int(await session.scalar(trials) or 0)
        paid = {str(c): int(n) for c, n in (await session.execute(revenue)).all()}
    metrics.set_business(by_state, trials_started, paid)


async def bill_subscriptions(ctx: dict[str, Any]) -> int:
    """The daily billing run: trial ends, renewals (invoices), due dates, grace ends. Idempotent:
    a second run at the same time fires nothing and issues no invoice twice."""
    resources = ctx["resources"]
    settings = resources.settings
    fired = await run_billing(resources.db, settings, resources.clock(), processor_for(settings))
    log.info("billing run", events=fired)
    return fired


def _sweep_cgroups(settings: Settings) -> None:
    """A worker killed mid-run (SIGKILL, a crash) leaves its run's empty cgroups behind: remove
    those older than any job may last."""
    try:
        host = detect_cgroups()
    except SandboxUnavailable:
        return
    oldest = max(run_job_timeout_s(settings), build_job_timeout_s(settings)) + 60
    if swept := sweep_stale_run_cgroups(host, oldest):
        log.info("stale run cgroups removed", count=len(swept))


def create_worker(
    settings: Settings,
    *,
    burst: bool = False,
    clock: Clock = utc_now,
    scheduler: bool | None = None,
    role: WorkerRole = "all",
) -> Worker:
    """A worker for every job, with the process's resources in ctx["resources"] (their clock
    is `clock`, for tests). The scheduler cron runs when `scheduler` is true; by default when
    FORETELL_SCHEDULER is on and the worker is not a burst (test) worker. `role` (WorkerRole)
    splits jobs from periodic jobs."""
    assert settings.redis_url
    if scheduler is None:
        scheduler = settings.scheduler == "on" and not burst
    cron_timeout = settings.cron_timeout_s
    cron_jobs = [
        # Every minute at second 0; unique, so two workers never run a cycle at once.
        cron(schedule_runs, minute=None, second=0, run_at_startup=True, timeout=cron_timeout)
    ]
    # Daily at 00:05 UTC (and at start-up, to catch up after downtime). Reads and subscription
    # calls also settle the caller's subscription, so billing is never a day late for access.
    billing = cron(
        bill_subscriptions, hour=0, minute=5, second=0, run_at_startup=True, timeout=cron_timeout
    )
    # Not tied to the scheduler setting: chains also grow from runs recorded elsewhere.
    ledger_cron = cron(
        checkpoint_ledgers,
        minute=CHECKPOINT_MINUTES,
        second=30,
        run_at_startup=True,
        timeout=cron_timeout,
    )

    async def startup(ctx: dict[str, Any]) -> None:
        stack = AsyncExitStack()
        ctx["stack"] = stack
        ctx["resources"] = await stack.enter_async_context(open_resources(settings, clock))
        if role != "cron":
            _sweep_cgroups(settings)
        log.info("worker started", role=role, scheduler=scheduler and role != "jobs")

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["stack"].aclose()

    jobs = [
        func(build_version, timeout=build_job_timeout_s(settings), max_tries=3),
        func(run_version, timeout=run_job_timeout_s(settings), max_tries=3),
    ]
    # Every minute at second 45: the business figures the dashboards show.
    business = cron(observe_business, second=45, run_at_startup=True, timeout=cron_timeout)
    periodic = [*(cron_jobs if scheduler else []), billing, ledger_cron, business]
    return Worker(
        functions=jobs if role != "cron" else [],
        cron_jobs=periodic if role != "jobs" and not burst else None,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        # The jobs the cron worker enqueues (runs) still go to settings.queue_name.
        queue_name=settings.queue_name + (CRON_QUEUE_SUFFIX if role == "cron" else ""),
        burst=burst,
        handle_signals=not burst,
        # A minute, not arq's default hour, so `arq --check` style probes notice a dead worker.
        health_check_interval=60,
        keep_result=3600,
    )
