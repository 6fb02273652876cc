"""A real model's run: numpy, pandas and scikit-learn (bench/models/realmodel: 48 hourly bars, a
logistic regression), built by the platform's builder and run as the platform runs it.

Measured in one run, each repeated and interleaved, median and spread printed:

- (a) a scheduled live run end to end through the live lane's worker: `run_version` enqueued,
  the worker takes it, verifies the image, serves the run-scoped DataFeed, forks the run from
  the layer's warm template (FORETELL_WARM_STARTS, on by default; `--cold` turns it off),
  records the run and its forecasts; timed from enqueue to the job's result;
- (a0) the same for the same image without its bytecode (as images were built before pycs:
  the simple alternative, and what existing images still do);
- (b) the same `predict` through the same runner (`python -m foretell.sdk.run`, same argv and
  run-scoped server) in a cold plain Python outside the jail, with the image's bytecode;
- (c) `predict` through the same runner called again in a process that has already imported
  everything (the floor: what a warm start could reach at best);

and a slot of `--slot-models` live versions of the model sharing the image, all due at once:
time from the scheduler cycle to the last run recorded, the worker's peak memory and the
templates' memory, and the CPU each run cost in the worker process, in the templates and in
the runs' own processes (the figure that bounds runs per second on this machine's cores). The
load average is printed with each part: other work on the machine slows the jails first (they
run at nice 19).

    .venv/bin/python bench/realmodel.py [--runs 7] [--slot-models 20]
        [--index-url file:///opt/pypi/simple]

Needs root (nsjail) and a package index holding the wheels (no network here: the local one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _fleet import add_live
from _stores import database, redis
from sqlalchemy import func, select

from foretell.build import MemoryLog, NativeBuilder
from foretell.bundle import Manifest, pack_dir, parse_manifest
from foretell.db.models import Model, Run, Version
from foretell.demo import load_demo_bars
from foretell.runs import DatabaseBars, RunScope, RunServer, warm_templates
from foretell.runtime.lanes import Lane, queue_name
from foretell.runtime.resources import Resources, open_resources
from foretell.sandbox import prepare_run_dir, sdk_dir, system_python
from foretell.scheduler import run_job_id, schedule_runs
from foretell.settings import Settings
from foretell.worker import close_worker, create_worker

MODEL_DIR = Path(__file__).parent / "models" / "realmodel"
# The last EURUSD bar of the backtesting package's hourly data closes at 16:00 on this day.
LAST_CLOSE = datetime(2018, 2, 7, 16, tzinfo=UTC)

# (c): imports the runner once, then runs it once per line of stdin (a JSON [socket, argv]),
# printing each run's seconds.
WARM = """
import json, os, sys, time
import numpy, pandas, sklearn.linear_model
from foretell.sdk import run
for line in sys.stdin:
    socket, argv = json.loads(line)
    os.environ["FORETELL_SOCKET"] = socket
    started = time.perf_counter()
    code = run.main(argv)
    print(json.dumps([code, time.perf_counter() - started]), flush=True)
"""


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def spread(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"median {statistics.median(ms):7.0f} ms   min {ms[0]:7.0f}   max {ms[-1]:7.0f}"


def without_bytecode(res: Resources, image: Path) -> str:
    """The same image with every __pycache__ removed, stored under its own digest."""
    copy = res.store.scratch() / "image"
    shutil.copytree(image, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for directory, _dirs, _files in os.walk(copy):
        os.chmod(directory, 0o755)  # noqa: S103 - the jail's user reads it
    return res.store.put_image(copy)


async def add_versions(
    res: Resources, image_digest: str, manifest: Manifest, count: int, live_since: datetime
) -> list[tuple[Model, Version]]:
    """`count` live models of `manifest` on the stored image."""
    return await add_live(res, image_digest, [manifest.to_json()] * count, live_since)


def runner_argv(as_of: datetime, manifest: Manifest) -> list[str]:
    return [
        "--as-of", as_of.isoformat(), "--symbols", "EURUSD", "--resolution", "1h",
        "--horizon", "1", "--lookback", str(manifest.lookback),
        "--entrypoint", manifest.entrypoint,
    ]  # fmt: skip


async def live_run(res: Resources, version: Version, as_of: datetime) -> float:
    started = time.perf_counter()
    job = await res.redis.enqueue_job(
        "run_version", str(version.id), as_of.isoformat(),
        _job_id=run_job_id(version.id, as_of), _queue_name=queue_name(res.settings, Lane.LIVE),
    )  # fmt: skip
    assert job is not None
    outcome = await job.result(timeout=120, poll_delay=0.005)
    elapsed = time.perf_counter() - started
    if outcome != "ok":
        async with res.db.session() as session:
            run = await session.scalar(
                select(Run).where(Run.version_id == version.id, Run.as_of == as_of)
            )
        detail = (run.detail + run.log)[-3000:] if run else ""
        raise SystemExit(f"live run at {as_of}: {outcome}: {detail}")
    return elapsed


async def plain_run(
    res: Resources, image: Path, sdk: Path, root: Path, as_of: datetime, manifest: Manifest
) -> float:
    run_dir = root / uuid.uuid4().hex[:8]
    scope = RunScope(("EURUSD",), "1h", 1, as_of)
    server = RunServer(DatabaseBars(res.db), scope, prepare_run_dir(run_dir))
    await server.start()
    try:
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            str(system_python().executable), "-s", "-B", "-m", "foretell.sdk.run",
            *runner_argv(as_of, manifest),
            cwd=image / "app", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**_plain_env(image, sdk), "FORETELL_SOCKET": str(run_dir / "sock/feed.sock")},
        )  # fmt: skip
        _out, err = await process.communicate()
        elapsed = time.perf_counter() - started
    finally:
        await server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    if process.returncode != 0 or not server.forecasts.accepted:
        raise SystemExit(f"plain run failed: {err.decode()[-2000:]}")
    return elapsed


def _plain_env(image: Path, sdk: Path) -> dict[str, str]:
    # The jail's PYTHONPATH, at the host paths.
    return {"PYTHONPATH": f"{sdk}:{image / 'app'}:{image / 'site-packages'}", "LANG": "C.UTF-8"}


class Warm:
    """A plain Python outside the jail that has imported everything once."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, image: Path, sdk: Path) -> Warm:
        process = await asyncio.create_subprocess_exec(
            str(system_python().executable), "-s", "-B", "-c", WARM,
            cwd=image / "app", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**_plain_env(image, sdk), "FORETELL_SOCKET": ""},
        )  # fmt: skip
        return cls(process)

    async def run(self, res: Resources, root: Path, as_of: datetime, manifest: Manifest) -> float:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        run_dir = root / uuid.uuid4().hex[:8]
        scope = RunScope(("EURUSD",), "1h", 1, as_of)
        server = RunServer(DatabaseBars(res.db), scope, prepare_run_dir(run_dir))
        await server.start()
        try:
            line = json.dumps([str(run_dir / "sock/feed.sock"), runner_argv(as_of, manifest)])
            self.process.stdin.write(line.encode() + b"\n")
            await self.process.stdin.drain()
            code, elapsed = json.loads(await self.process.stdout.readline())
        finally:
            await server.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
        if code != 0 or not server.forecasts.accepted:
            raise SystemExit("warm run failed")
        return float(elapsed)

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await self.process.wait()


def _cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of a process itself and of the children it reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(f) / os.sysconf("SC_CLK_TCK") for f in fields[11:15])
    return utime + stime, cutime + cstime


def jail_cpu(res: Resources) -> dict[int, tuple[float, float]]:
    """Per template (the first process of each template's nsjail), its own CPU seconds and its
    reaped runs'."""
    pool = warm_templates(res.settings)
    found = {}
    for template in pool.templates if pool is not None else ():
        nsjail = template.process.pid
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{nsjail}/task/{nsjail}/children").read_text().split():
                found[int(child)] = _cpu_s(int(child))
    return found


async def slot(res: Resources, image_digest: str, manifest: Manifest, count: int) -> None:
    """`count` live versions sharing the image, one slot due for all: the scheduler cycle, then
    the live lane's worker until every run is recorded."""
    due = LAST_CLOSE
    async with res.db.session.begin() as session:
        # The versions measured above are taken offline: the slot is the new ones'.
        for model in await session.scalars(select(Model)):
            model.live_version, model.live_since = None, None
    clock: Any = res.clock
    clock.now = due - timedelta(minutes=30)
    await add_versions(res, image_digest, manifest, count, due - timedelta(minutes=30))
    clock.now = due + timedelta(seconds=5)
    print(f"slot of {count}: {load()} before")
    jails_before = jail_cpu(res)
    worker_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    scheduled = await schedule_runs({"resources": res})
    worker = create_worker(res.settings, lane=Lane.LIVE, burst=True, clock=clock)
    try:
        await worker.async_run()
        elapsed = time.perf_counter() - started
        worker_after = resource.getrusage(resource.RUSAGE_SELF)
        jails_after = jail_cpu(res)
        # Before the worker's shutdown closes them.
        templates(res)
    finally:
        await close_worker(worker)
    async with res.db.session() as session:
        ok = await session.scalar(
            select(func.count()).where(Run.as_of == due, Run.kind == "live", Run.outcome == "ok")
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"slot: {count} live versions ({scheduled['enqueued']} enqueued, {ok} ok) recorded in "
        f"{elapsed:.1f} s with {res.settings.live_concurrency} jobs at once "
        f"({count / elapsed:.2f} runs/s; 1,000 would take {1000 / (count / elapsed):.0f} s); "
        f"peak RSS of this process (the worker) {peak_mib:.0f} MiB; each jail has its own "
        f"memory limit ({res.settings.run_memory_mib} MiB); {load()} after"
    )
    in_worker = sum(
        getattr(worker_after, f) - getattr(worker_before, f) for f in ("ru_utime", "ru_stime")
    )
    own = runs = 0.0
    for pid, (after_own, after_runs) in jails_after.items():
        before_own, before_runs = jails_before.get(pid, (0.0, 0.0))
        own, runs = own + after_own - before_own, runs + after_runs - before_runs
    started_templates = len(set(jails_after) - set(jails_before))
    per_run = [1000 * x / count for x in (in_worker, own, runs)]
    print(
        f"CPU per run: worker process {per_run[0]:.1f} ms, templates {per_run[1]:.1f} ms "
        f"(with starting {started_templates} of them), the runs' processes {per_run[2]:.1f} ms: "
        f"{sum(per_run):.0f} ms in all, at most {2000 / sum(per_run):.0f} runs/s on 2 cores "
        "(PostgreSQL and Redis not counted)"
    )


def templates(res: Resources) -> None:
    pool = warm_templates(res.settings)
    if pool is None:
        print("warm starts: off")
        return
    held = pool.templates
    total = sum(t.measure() for t in held) / 2**20
    each = ", ".join(f"{t.memory_bytes / 2**20:.0f}" for t in held)
    print(
        f"warm templates: {len(held)} held (bound {pool.max_templates}), {total:.0f} MiB charged "
        f"to their cgroups together ({each} MiB)"
    )


LABELS = {
    "a": "(a)  live run through the worker, image with bytecode",
    "a0": "(a0) the same, image without bytecode (warm too)",
    "b": "(b)  predict in a cold plain Python, with bytecode",
    "c": "(c)  predict in a warm process (the floor)",
}


def report(runs: int, timings: dict[str, list[float]]) -> None:
    print(f"{runs} runs each, interleaved:")
    for key, label in LABELS.items():
        print(f"{label:56} {spread(timings[key])}")
    a, a0, c = (statistics.median(timings[k]) for k in ("a", "a0", "c"))
    print(
        f"(a) is {a0 / a:.1f}x faster than (a0) and {(a - c) * 1000:.0f} ms above the floor "
        "(targets: (a) at most 150 ms, within 100 ms of (c))"
    )


async def main_async(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ftrm-", dir="/tmp"))
    root.chmod(0o711)
    try:
        async with database(root) as db_url, redis(root) as redis_url:
            settings = dataclasses.replace(
                Settings(),
                data_dir=root / "data",
                database_url=db_url,
                redis_url=redis_url,
                queue_name=f"foretell-bench:{uuid.uuid4().hex[:8]}",
                pip_index_url=args.index_url,
                scheduler="off",
                # Room for a cold image on a loaded machine: a timeout would hide the figure.
                run_wall_s=120,
                run_cpu_s=120,
                warm_starts="off" if args.cold else "on",
            )
            clock = Clock(LAST_CLOSE + timedelta(minutes=5))
            async with open_resources(settings, clock) as res:
                await load_demo_bars(res.db)
                manifest = parse_manifest((MODEL_DIR / "foretell.toml").read_text())
                sdk = sdk_dir(settings.data_dir)
                builder = NativeBuilder(res.store, pip_index_url=args.index_url, sdk=sdk)
                build_log = MemoryLog()
                started = time.perf_counter()
                try:
                    digest = await builder.build(
                        pack_dir(MODEL_DIR).data, manifest, build_log.write
                    )
                except Exception:
                    print(build_log.text()[-3000:], file=sys.stderr)
                    raise
                built_s = time.perf_counter() - started
                print(f"build: {built_s:.1f} s, image {digest[:19]}; {load()}")
                image = res.store.verified_image(digest)
                cold_digest = without_bytecode(res, image)
                (_m, pyc_version), (_n, cold_version) = [
                    (await add_versions(res, d, manifest, 1, LAST_CLOSE - timedelta(days=30)))[0]
                    for d in (digest, cold_digest)
                ]
                runs_root = root / "r"
                runs_root.mkdir()
                slots = [LAST_CLOSE - timedelta(hours=h) for h in range(1, 2 * args.runs + 3)]
                timings: dict[str, list[float]] = {"a": [], "a0": [], "b": [], "c": []}
                warm = await Warm.start(image, sdk)
                await warm.run(res, runs_root, slots[0], manifest)  # its imports, not timed
                worker = create_worker(settings, lane=Lane.LIVE, clock=clock, handle_signals=False)
                task = asyncio.create_task(worker.async_run())
                try:
                    # A first run of each kind warms the disk cache; not counted.
                    await live_run(res, pyc_version, slots[1])
                    for i in range(args.runs):
                        as_of = slots[2 + i]
                        timings["a"].append(await live_run(res, pyc_version, as_of))
                        timings["a0"].append(await live_run(res, cold_version, as_of))
                        timings["b"].append(
                            await plain_run(res, image, sdk, runs_root, as_of, manifest)
                        )
                        timings["c"].append(await warm.run(res, runs_root, as_of, manifest))
                    templates(res)
                    print(f"timed runs done: {load()}")
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await close_worker(worker)
                    await warm.stop()
                report(args.runs, timings)
                if args.slot_models:
                    await slot(res, digest, manifest, args.slot_models)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--slot-models", type=int, default=20)
    parser.add_argument("--index-url", default="file:///opt/pypi/simple")
    parser.add_argument("--cold", action="store_true", help="warm starts off: every run cold")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
