"""Webhook delivery delay for N subscribers of one model: from the commit that records a live
forecast to each subscriber's endpoint receiving its POST, p50 and p99; (a) the worker's
`Dispatcher` (woken by the run's NOTIFY, FORETELL_WEBHOOK_CONCURRENCY POSTs in flight) against
(b) the simple alternative, one job that sends the same deliveries one after the other, started
the instant the forecast commits (no wake-up delay at all), in the same run.

Setup, not timed: a throwaway database (the PostgreSQL at 127.0.0.1:5432 when it answers, else
an embedded one), one model with a READY version, N subscribers each with an active
subscription and an endpoint on one receiver at 127.0.0.1 (FORETELL_WEBHOOKS_ALLOW_PRIVATE=on),
which runs in a thread with its own event loop and notes when each body has arrived. Each round
records one run with one forecast (one transaction, announced as `execute_run` does), which
the trigger turns into N deliveries.

    .venv/bin/python bench/webhooks.py [--subscribers 100] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _stores import database, redis
from sqlalchemy import func, select

from foretell.db.models import (
    Forecast,
    Model,
    Run,
    Subscription,
    User,
    Version,
    WebhookDelivery,
    WebhookEndpoint,
)
from foretell.db.notify import RunRecorded, announce_run
from foretell.runtime.resources import Resources, open_resources
from foretell.settings import Settings
from foretell.webhooks import Dispatcher, deliver_due, new_secret

BASE = datetime(2024, 3, 4, tzinfo=UTC)
# Nobody signs in as the benchmark's users.
NO_LOGIN = "!"


class Receiver:
    """An HTTP endpoint in a thread of its own: arrival times by request path."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
        await reader.readexactly(length)
        arrived = time.time()
        self.arrivals[f"{lines[0].split(' ')[1]} {reader_id(head)}"] = arrived
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()


def reader_id(head: bytes) -> str:
    """The webhook-id header: one per delivery."""
    for line in head.decode().split("\r\n"):
        if line.lower().startswith("webhook-id:"):
            return line.split(":", 1)[1].strip()
    return ""


@dataclasses.dataclass(frozen=True)
class Setup:
    model_id: uuid.UUID
    version_id: uuid.UUID


async def setup(res: Resources, receiver: Receiver, subscribers: int) -> Setup:
    now = datetime.now(UTC)
    async with res.db.session.begin() as session:
        owner = User(
            id=uuid.uuid4(),
            email=f"p-{uuid.uuid4().hex[:8]}@example.com",
            display_name="P",
            role="provider",
            password_hash=NO_LOGIN,
            created_at=now,
        )
        session.add(owner)
        await session.flush()
        model = Model(
            id=uuid.uuid4(),
            name=f"m-{uuid.uuid4().hex[:10]}",
            owner_id=owner.id,
            title="Bench",
            description="",
            symbols=["EURUSD"],
            resolution="1h",
            horizon=1,
            tags=[],
            visibility="public",
            live_version=None,
            live_since=None,
            created_at=now,
            updated_at=now,
        )
        session.add(model)
        await session.flush()
        version = Version(
            id=uuid.uuid4(),
            model_id=model.id,
            number=1,
            digest="sha256:" + "1" * 64,
            bundle_size=1,
            created_at=now,
            manifest={"entrypoint": "model:predict"},
            build_state="ready",
            failure_reason="",
            image_digest="sha256:" + "0" * 64,
            build_finished_at=now,
            build_log="",
            published_at=None,
        )
        session.add(version)
        for i in range(subscribers):
            user = User(
                id=uuid.uuid4(),
                email=f"s{i}-{uuid.uuid4().hex[:8]}@example.com",
                display_name="S",
                role="subscriber",
                password_hash=NO_LOGIN,
                created_at=now,
            )
            session.add(user)
            await session.flush()
            sub = Subscription(
                id=uuid.uuid4(),
                model_id=model.id,
                subscriber_id=user.id,
                state="active",
                trial_end=None,
                anchor=now - timedelta(days=1),
                period_index=0,
                period_start=now - timedelta(days=1),
                period_end=now + timedelta(days=29),
                cancel_at_period_end=False,
                past_due_since=None,
                ended_at=None,
                end_reason=None,
                created_at=now,
                updated_at=now,
            )
            session.add(sub)
            await session.flush()
            session.add(
                WebhookEndpoint(
                    id=uuid.uuid4(),
                    subscription_id=sub.id,
                    url=f"http://127.0.0.1:{receiver.port}/hooks/{i}",
                    description="",
                    secret=new_secret(),
                    created_at=now,
                )
            )
    return Setup(model.id, version.id)


async def record(res: Resources, made: Setup, as_of: datetime) -> float:
    """One live run with one forecast, as execute_run records it; the commit's time."""
    run_id, now = uuid.uuid4(), datetime.now(UTC)
    async with res.db.session.begin() as session:
        session.add(
            Run(
                id=run_id,
                model_id=made.model_id,
                version_id=made.version_id,
                as_of=as_of,
                kind="live",
                outcome="ok",
                duration_s=0.1,
                detail="",
                log="",
                created_at=now,
            )
        )
        await session.flush()
        session.add(
            Forecast(
                run_id=run_id,
                model_id=made.model_id,
                version_id=made.version_id,
                kind="live",
                symbol="EURUSD",
                as_of=as_of,
                target_time=as_of + timedelta(hours=1),
                direction="up",
                predicted_return=0.001,
                probability=0.6,
                recorded_at=now,
            )
        )
        await announce_run(session, RunRecorded(run_id, made.model_id, "live"))
    return time.time()


async def _all_delivered(res: Resources) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with res.db.session() as session:
            pending = await session.scalar(
                select(func.count()).where(WebhookDelivery.state == "pending")
            )
        if not pending:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("deliveries still pending after 60 s")


async def _round(
    res: Resources,
    made: Setup,
    receiver: Receiver,
    as_of: datetime,
    subscribers: int,
    sequential: bool,
) -> list[float]:
    before = set(receiver.arrivals)
    committed = await record(res, made, as_of)
    if sequential:
        one_at_a_time = dataclasses.replace(res.settings, webhook_concurrency=1)
        await deliver_due(res.db, one_at_a_time, res.clock)
    deadline = time.monotonic() + 60
    while len(receiver.arrivals) - len(before) < subscribers:
        if time.monotonic() > deadline:
            raise TimeoutError("not every subscriber received the event")
        await asyncio.sleep(0.005)
    await _all_delivered(res)
    return [t - committed for key, t in receiver.arrivals.items() if key not in before]


def _figures(label: str, delays: list[float]) -> str:
    cuts = statistics.quantiles(delays, n=100)
    return (
        f"{label:<44} p50 {cuts[49] * 1000:8.1f} ms   p99 {cuts[98] * 1000:8.1f} ms   "
        f"max {max(delays) * 1000:8.1f} ms"
    )


async def main(subscribers: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="foretell-bench-") as tmp:
        async with database(Path(tmp)) as url, redis(Path(tmp)) as redis_url:
            settings = dataclasses.replace(
                Settings(),
                database_url=url,
                redis_url=redis_url,
                data_dir=Path(tmp) / "data",
                webhooks_allow_private="on",
            )
            async with open_resources(settings) as res:
                receiver = Receiver()
                made = await setup(res, receiver, subscribers)
                concurrent: list[float] = []
                sequential: list[float] = []
                dispatcher = Dispatcher(res.db, settings, res.clock)
                for k in range(rounds):
                    as_of = BASE + timedelta(hours=2 * k)
                    # (a) the worker's dispatcher, running only for its rounds.
                    await dispatcher.start()
                    concurrent += await _round(res, made, receiver, as_of, subscribers, False)
                    await dispatcher.close()
                    dispatcher = Dispatcher(res.db, settings, res.clock)
                    # (b) one job, one POST after the other.
                    sequential += await _round(
                        res, made, receiver, as_of + timedelta(hours=1), subscribers, True
                    )
                print(
                    f"Webhook delivery delay, {subscribers} subscribers of one model, "
                    f"{rounds} forecasts each way (commit → receiver has the body):"
                )
                label = f"(a) Dispatcher, {settings.webhook_concurrency} in flight"
                print(_figures(label, concurrent))
                print(_figures("(b) one job, sequential POSTs", sequential))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.subscribers, args.rounds))
