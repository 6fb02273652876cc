"""`foretell worker`: runs the platform's background jobs (arq) until SIGTERM.

One worker serves one lane (foretell.runtime.lanes): builds, live runs (with the periodic jobs:
the scheduler cycle, billing, ledger checkpoints), dry runs or simulated replays, each from its
own queue with its own concurrency, so no amount of one kind of work delays another.

Jobs are delivered at least once (a crash or a restart re-runs them), so every job is
idempotent: it reads the state it is about to change and does nothing when already done.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any, Literal

import asyncpg
from arq import Worker, cron, func
from arq.connections import RedisSettings
from sqlalchemy import text

from foretell import metrics, outbox
from foretell.billing.payments import processor_for
from foretell.billing.settle import run_billing
from foretell.build import build_job_timeout_s, build_version
from foretell.clock import Clock, utc_now
from foretell.ledger import chain
from foretell.logs import get_logger
from foretell.marketdata import warm_calendars
from foretell.runs import (
    close_warm_templates,
    dry_run,
    prewarm_templates,
    replay_run,
    run_job_timeout_s,
)
from foretell.runtime.lanes import Lane, concurrency, queue_name
from foretell.runtime.resources import open_resources
from foretell.sandbox import SandboxUnavailable, detect_cgroups, sdk_dir, sweep_stale_run_cgroups
from foretell.scheduler import RUN_TRIES, BarsListener, run_version, schedule_runs
from foretell.settings import Settings
from foretell.webhooks import Dispatcher

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


async def scheduler_cycle(ctx: dict[str, Any]) -> dict[str, int]:
    """The minute cron: a scheduler cycle, and the bars listener back if it lost PostgreSQL."""
    listener: BarsListener | None = ctx.get("bars_listener")
    if listener is not None:
        try:
            await listener.ensure_listening()
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("bars listener not connected", error=str(error))
    return await schedule_runs(ctx)


async def send_notices(ctx: dict[str, Any]) -> int:
    """Sends the outbox's notices to account owners (FORETELL_SMTP_URL)."""
    res = ctx["resources"]
    sent = await outbox.deliver(res.db, res.settings, res.clock())
    if sent:
        log.info("notices sent", count=sent)
    return sent


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


def _functions(settings: Settings, lane: Lane) -> list[Any]:
    run_timeout = run_job_timeout_s(settings)
    return {
        Lane.BUILD: [func(build_version, timeout=build_job_timeout_s(settings), max_tries=3)],
        Lane.LIVE: [func(run_version, timeout=run_timeout, max_tries=RUN_TRIES)],
        # A dry run's caller waits for it: a retry would come too late to answer, so one try.
        Lane.DRY: [func(dry_run, timeout=run_timeout, max_tries=1)],
        Lane.REPLAY: [func(replay_run, timeout=run_timeout, max_tries=3)],
    }[lane]


def create_worker(
    settings: Settings,
    *,
    lane: Lane = Lane.LIVE,
    burst: bool = False,
    clock: Clock = utc_now,
    scheduler: bool | None = None,
    handle_signals: bool | None = None,
    role: WorkerRole = "all",
) -> Worker:
    """A worker for the jobs of `lane`, with the process's resources in ctx["resources"]
    (their clock is `clock`, for tests). The periodic jobs run on the live lane only; the
    scheduler cron when `scheduler` is true, by default when FORETELL_SCHEDULER is not off and
    the worker is not a burst (test) worker (with it `on`, bars landing wake it too). `role`
    (WorkerRole) splits the lane's jobs from the periodic jobs. Several workers in one
    process handle signals together (`handle_signals=False` for each, see `foretell worker`)."""
    assert settings.redis_url
    if scheduler is None:
        scheduler = settings.scheduler != "off" and not burst
    cron_timeout = settings.cron_timeout_s
    cron_jobs = [
        # Every minute at second 0; unique, so two workers never run a cycle at once. Bars
        # arriving wake the scheduler sooner (BarsListener); the cron catches up after
        # downtime and records data deadlines as they pass.
        cron(scheduler_cycle, minute=None, second=0, run_at_startup=True, timeout=cron_timeout)
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

    notices = cron(send_notices, minute=None, second=15, run_at_startup=True, timeout=cron_timeout)

    async def startup(ctx: dict[str, Any]) -> None:
        stack = AsyncExitStack()
        ctx["stack"] = stack
        ctx["resources"] = await stack.enter_async_context(open_resources(settings, clock))
        if role != "cron":
            _sweep_cgroups(settings)
            # The jail's SDK directory is assembled once per process (seconds: it compiles grpc
            # and protobuf): here, off the event loop, rather than inside the first job.
            await asyncio.to_thread(sdk_dir, settings.data_dir)
            stack.push_async_callback(close_warm_templates)
        # Calendars take seconds to build: before the first job, not inside its time limit.
        await warm_calendars(ctx["resources"].db)
        if lane is Lane.LIVE and role != "cron" and not burst:
            # The next slot's runs fork from templates that are already up.
            res = ctx["resources"]
            started = await prewarm_templates(res.db, res.store, settings)
            log.info("warm templates started", count=started)
        periodic_here = lane is Lane.LIVE and role != "jobs"
        if scheduler and periodic_here and not burst and settings.scheduler == "on":
            listener = BarsListener(ctx)
            await listener.start()
            stack.push_async_callback(listener.close)
            ctx["bars_listener"] = listener
        if periodic_here and not burst:
            # Webhooks leave from the one periodic worker, not from the sandbox lanes: a slow
            # endpoint holds a connection, never a run's slot.
            res = ctx["resources"]
            dispatcher = Dispatcher(res.db, settings, res.clock)
            await dispatcher.start()
            stack.push_async_callback(dispatcher.close)
        log.info(
            "worker started", lane=lane.value, role=role, scheduler=scheduler and periodic_here
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["stack"].aclose()

    # Every minute at second 45: the business figures the dashboards show.
    business = cron(observe_business, second=45, run_at_startup=True, timeout=cron_timeout)
    periodic = [*(cron_jobs if scheduler else []), billing, ledger_cron, notices, business]
    return Worker(
        functions=_functions(settings, lane) if role != "cron" else [],
        cron_jobs=periodic if lane is Lane.LIVE and role != "jobs" and not burst else None,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        # The runs the cron worker enqueues still go to the live lane's queue.
        queue_name=queue_name(settings, lane) + (CRON_QUEUE_SUFFIX if role == "cron" else ""),
        max_jobs=concurrency(settings, lane),
        # An idle worker looks for jobs this often (arq's default is 0.5 s). A live run and a
        # dry run someone waits for start within 20 ms of being queued (about 10 ms of a
        # 100 ms warm run, on average), for one Redis read per poll; builds and replays, which
        # take seconds, need not.
        poll_delay=0.02 if lane in (Lane.LIVE, Lane.DRY) else 0.05,
        burst=burst,
        handle_signals=not burst if handle_signals is None else handle_signals,
        # A minute, not arq's default hour, so `arq --check` style probes notice a dead worker.
        health_check_interval=60,
        keep_result=3600,
    )


async def close_worker(worker: Worker) -> None:
    """Stops `worker` and runs its shutdown (templates, listeners, the webhook dispatcher).

    arq's own close cancels the running jobs and then gathers them without
    `return_exceptions`: a job cancelled before its own error handling (while it still reads
    the job from Redis) raises CancelledError out of close, and `on_shutdown` never runs, so a
    dispatcher or listener would outlive its worker. The jobs are cancelled and awaited here
    first; each is delivered again after a restart, as any interrupted job is."""
    jobs = list(worker.tasks.values())
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    worker.tasks.clear()
    await worker.close()
