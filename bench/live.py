"""From bars landing to forecasts arriving: 100 live trivial models on 3 symbols; a data
feeder pushes the bars that close the current hour's slot through IngestBars; every model's
forecast is awaited on its own open StreamForecasts. The delay, per forecast, is from its
symbol's IngestBars call returning to the forecast arriving on the stream (p50, p99).

Measured twice in one run, on the same platform:

- (a) data-driven: the worker's bars listener hears the ingest's NOTIFY and runs a scheduler
  cycle at once;
- (b) the minute cron alone (the same worker with FORETELL_SCHEDULER=cron, no LISTEN): the
  same ingest waits for the cron's next cycle at second 0 of a minute. (b) uses 100 other
  models on 3 other symbols, so that both measure the same slot.

The platform as `foretell up` runs it on one machine: every service on one gRPC server (port
0) in this process, and a live-lane worker in a process of its own (`foretell worker --lane
live`, its default job concurrency), the runs in the sandbox. Setup, not timed: a throwaway
database and Redis (`_stores`), the models (`_fleet`: one shared image of a trivial model,
version 1 READY and live since half an hour before the slot), an admin whose token reads the
streams, a feeder granted the symbols.
The clock is the real one: the slot is the latest hourly close, 24/7 (crypto) symbols, and the
data deadline is two hours so the slot is still due.

    .venv/bin/python bench/live.py [--models 100]

Needs root (nsjail).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _fleet import add_models
from _stores import platform
from arq.jobs import Job
from grpc import aio

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.auth.policy import Role
from foretell.common.v1 import common_pb2
from foretell.composition import SERVICES, start_services
from foretell.datafeed.v1 import datafeed_service_pb2 as feed_pb
from foretell.datafeed.v1 import datafeed_service_pb2_grpc as feed_grpc
from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.runtime.lanes import Lane, concurrency, queue_name
from foretell.runtime.resources import open_resources
from foretell.scheduler import run_job_id
from foretell.services.account import create_user
from foretell.services.datafeed import admin as feeders
from foretell.settings import Address, Settings

# A throwaway account in a throwaway database.
PASSWORD = "bench-password-1"
DATA_DRIVEN = ["BTCUSD", "ETHUSD", "SOLUSD"]
CRON_ONLY = ["XRPUSD", "ADAUSD", "LTCUSD"]
# How long to wait for every forecast of one part: the cron's minute and then the runs.
WAIT_S = 300.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread_over(symbols: list[str]) -> Callable[[int], list[str]]:
    """Model i forecasts one symbol, the models spread evenly over `symbols`."""
    return lambda i: [symbols[i % len(symbols)]]


def bar_closing_at(slot: datetime) -> feed_pb.Bars:
    opened = int(slot.timestamp()) - 3600
    return feed_pb.Bars(
        open_times_unix=[opened], opens=[100.0], highs=[101.0], lows=[99.0], closes=[100.5],
        volumes=[10.0],
    )  # fmt: skip


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclasses.dataclass
class Part:
    label: str
    symbols: list[str]
    names: dict[str, str]  # model name -> its symbol
    versions: dict[str, uuid.UUID]  # model name -> its live version
    listening: set[str] = dataclasses.field(default_factory=set)
    arrived: dict[str, float] = dataclasses.field(default_factory=dict)
    ingested: dict[str, float] = dataclasses.field(default_factory=dict)
    # The same moments on the wall clock, to compare with arq's job times.
    ingested_at: dict[str, datetime] = dataclasses.field(default_factory=dict)
    # Per run job: (enqueued, started, finished).
    jobs: dict[str, tuple[datetime, datetime, datetime]] = dataclasses.field(default_factory=dict)

    def delays(self) -> list[float]:
        return [self.arrived[n] - self.ingested[s] for n, s in self.names.items()]


async def follow(
    forecasts: fc_grpc.ForecastServiceAsyncStub, who: Any, name: str, part: Part
) -> None:
    """Waits on the model's stream for its first forecast and notes when it came."""
    stream = forecasts.StreamForecasts(fc_pb.StreamForecastsRequest(model=name), metadata=who)
    # The server sends its headers once it listens: every later run reaches this stream.
    await stream.initial_metadata()
    part.listening.add(name)
    async for message in stream:
        if message.forecasts:
            part.arrived[name] = time.perf_counter()
            stream.cancel()
            return


async def measure(
    part: Part,
    forecasts: fc_grpc.ForecastServiceAsyncStub,
    feed: feed_grpc.DataFeedServiceAsyncStub,
    reader: Any,
    feeder: Any,
    slot: datetime,
) -> None:
    followers = [asyncio.create_task(follow(forecasts, reader, name, part)) for name in part.names]
    await wait_for(lambda: len(part.listening) == len(part.names), 60, "the streams")
    for symbol in part.symbols:
        header = feed_pb.IngestBarsHeader(
            symbol=symbol, resolution=common_pb2.RESOLUTION_1H,
            on_conflict=feed_pb.CONFLICT_POLICY_UPSERT,
        )  # fmt: skip
        messages = [
            feed_pb.IngestBarsRequest(header=header),
            feed_pb.IngestBarsRequest(bars=bar_closing_at(slot)),
        ]
        await feed.IngestBars(iter(messages), metadata=feeder)
        part.ingested[symbol] = time.perf_counter()
        part.ingested_at[symbol] = datetime.now(UTC)
    done, pending = await asyncio.wait(followers, timeout=WAIT_S)
    for task in pending:
        task.cancel()
    for task in done:
        task.result()
    if pending:
        raise SystemExit(f"{part.label}: {len(pending)} forecasts never arrived")


async def job_times(part: Part, res: Any, slot: datetime) -> None:
    """When arq enqueued, started and finished each run (kept results)."""
    queue = queue_name(res.settings, Lane.LIVE)
    for name, version_id in part.versions.items():
        job = Job(run_job_id(version_id, slot), res.redis, _queue_name=queue)
        info = await job.result_info()
        if info is None:
            raise SystemExit(f"{part.label}: no result for {name}'s run")
        part.jobs[name] = (info.enqueue_time, info.start_time, info.finish_time)


def stages(part: Part) -> str:
    """Medians of where the delay goes: ingest to enqueued, in the queue, the run."""
    waits, queued, ran = [], [], []
    for name, (enqueued, started, finished) in part.jobs.items():
        waits.append((enqueued - part.ingested_at[part.names[name]]).total_seconds())
        queued.append((started - enqueued).total_seconds())
        ran.append((finished - started).total_seconds())
    return (
        f"    ingest to enqueued: median {statistics.median(waits):6.2f} s, max {max(waits):6.2f}"
        f";  queued: median {statistics.median(queued):6.2f} s"
        f";  run: median {statistics.median(ran):5.2f} s"
    )


def report(part: Part) -> tuple[float, float]:
    delays = part.delays()
    p50, p99 = statistics.median(delays), percentile(delays, 0.99)
    print(
        f"{part.label:<52} {len(delays)} forecasts   first {min(delays):6.2f} s"
        f"   p50 {p50:6.2f} s   p99 {p99:6.2f} s   last {max(delays):6.2f} s"
    )
    print(stages(part))
    return p50, p99


@contextlib.asynccontextmanager
async def worker_process(settings: Settings, scheduler: str) -> AsyncIterator[None]:
    """`foretell worker --lane live` in a process of its own, as `foretell up` starts it, on
    this platform's database, Redis, store and queue; `scheduler` is its FORETELL_SCHEDULER
    (`on`: woken by the ingest's NOTIFY; `cron`: the minute cron alone). Ready once it says
    it started (after its start-up: the SDK directory, the calendars, the listener)."""
    assert settings.database_url
    assert settings.redis_url
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FORETELL_")},
        "FORETELL_DATABASE_URL": settings.database_url,
        "FORETELL_REDIS_URL": settings.redis_url,
        "FORETELL_DATA_DIR": str(settings.data_dir),
        "FORETELL_QUEUE_NAME": settings.queue_name,
        "FORETELL_DATA_DEADLINE_S": str(settings.data_deadline_s),
        "FORETELL_SCHEDULER": scheduler,
    }
    foretell = Path(sys.executable).with_name("foretell")
    process = await asyncio.create_subprocess_exec(
        str(foretell), "worker", "--lane", "live", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    started = asyncio.Event()

    async def drain(stream: asyncio.StreamReader) -> None:
        # Read to the end (a full pipe would stop the worker); only start-up is of interest.
        async for line in stream:
            if b"worker started" in line:
                started.set()

    draining = asyncio.create_task(drain(process.stdout))
    try:
        await asyncio.wait_for(started.wait(), 120)
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()
        await draining


async def signed_in(channel: aio.Channel, res: Any) -> tuple[tuple[str, str], ...]:
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    await create_user(
        res.db, email=email, password=PASSWORD, display_name="Bench", role=Role.ADMIN,
        now=res.clock(),
    )  # fmt: skip
    login = await account_grpc.AccountServiceStub(channel).Login(
        account_pb.LoginRequest(email=email, password=PASSWORD)
    )
    return (("authorization", f"Bearer {login.tokens.access_token}"),)


async def main_async(args: argparse.Namespace) -> None:
    async with platform("ftbli-", data_deadline_s=7200) as settings:
        now = datetime.now(UTC)
        slot = now.replace(minute=0, second=0, microsecond=0)
        published = slot - timedelta(minutes=30)
        async with open_resources(settings) as res:
            parts = []
            for label, symbols in (
                ("(a) data-driven (ingest NOTIFY wakes the scheduler)", DATA_DRIVEN),
                ("(b) minute cron only (no wake-up on ingest)", CRON_ONLY),
            ):
                made = await add_models(res, args.models, published, spread_over(symbols))
                names = {model.name: model.symbols[0] for model, _ in made}
                versions = {model.name: version.id for model, version in made}
                parts.append(Part(label, symbols, names, versions))
            feeder = await feeders.create(
                settings, "feed@bench.example", "Bench feed", DATA_DRIVEN + CRON_ONLY
            )
            feeder_key = (("authorization", f"Bearer {feeder.api_key}"),)
            server = await start_services(res, list(SERVICES), Address("127.0.0.1", 0))
            try:
                async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                    reader = await signed_in(channel, res)
                    forecasts = fc_grpc.ForecastServiceStub(channel)
                    feed = feed_grpc.DataFeedServiceStub(channel)
                    print(
                        f"{args.models} live models per part on 3 symbols, slot {slot:%H:%MZ}, "
                        f"{concurrency(settings, Lane.LIVE)} jobs at once, the worker in a "
                        "process of its own"
                    )
                    # (b) the same worker with FORETELL_SCHEDULER=cron: no LISTEN.
                    for part, scheduler in zip(parts, ("on", "cron"), strict=True):
                        async with worker_process(settings, scheduler):
                            await measure(part, forecasts, feed, reader, feeder_key, slot)
                        await job_times(part, res, slot)
            finally:
                await server.stop(0.5)
        p50, p99 = report(parts[0])
        report(parts[1])
        verdict = "met" if p50 <= 1 and p99 <= 3 else "not met"
        print(f"data-driven: p50 {p50:.2f} s, p99 {p99:.2f} s (target p50 <= 1 s, p99 <= 3 s: "
              f"{verdict})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
