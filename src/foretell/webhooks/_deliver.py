"""The worker side: deliveries that are due are claimed, POSTed, and recorded.

At least once: a delivery is claimed by pushing its next attempt past the POST's time limit (a
lease), so a worker that dies mid-POST leaves it to be claimed again once the lease has passed;
rows are claimed with SKIP LOCKED, so two workers never take the same one at once. A delivery
answered with a 2xx is marked delivered in the same statement that records the answer and is
never claimed again. Anything else (another status, a refused address, no answer) is retried
after an exponential back-off with jitter, up to FORETELL_WEBHOOK_MAX_ATTEMPTS POSTs, then
marked failed. A subscription that is no longer entitled (it lapsed, was canceled or its model
went private) has its pending deliveries canceled instead of sent."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import DateTime, Integer, insert, literal, select, text, update
from sqlalchemy.engine import make_url

from foretell.billing.entitlement import still_entitled
from foretell.clock import Clock
from foretell.db import Database
from foretell.db.models import (
    Forecast,
    Model,
    Subscription,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from foretell.db.notify import FORECASTS_CHANNEL
from foretell.logs import get_logger
from foretell.settings import Settings
from foretell.webhooks import _events, _signing
from foretell.webhooks._address import EndpointRefused, parse_url, resolve
from foretell.webhooks._http import SendFailed, post

log = get_logger("foretell.webhooks")

# Test events are announced here (a forecast's deliveries wake the worker through the run's
# own announcement on FORECASTS_CHANNEL).
WEBHOOKS_CHANNEL = "foretell_webhooks"
MAX_BACKOFF_S = 3600.0
_ERROR_CHARS = 500


def backoff_s(settings: Settings, attempts: int) -> float:
    """The wait before the next POST after `attempts` failed ones: doubling from
    FORETELL_WEBHOOK_BACKOFF_S up to an hour, the upper half of it random ("equal jitter"), so
    endpoints that failed together do not all come back at the same instant."""
    ceiling = min(MAX_BACKOFF_S, settings.webhook_backoff_s * 2.0 ** (attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")
# The due deliveries, oldest first, at most `cap` per endpoint less those of it already in
# flight (window functions cannot take FOR UPDATE: the rows are locked by id outside them).
_CLAIM = text("""
UPDATE webhook_deliveries SET next_attempt_at = :lease_until
WHERE id IN (
  SELECT id FROM webhook_deliveries
  WHERE id IN (
    SELECT ranked.id FROM (
      SELECT d.id, d.endpoint_id,
             row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id)
               AS n
      FROM webhook_deliveries d
      WHERE d.state = 'pending' AND d.next_attempt_at <= :now
    ) ranked
    LEFT JOIN unnest(CAST(:busy_ids AS uuid[]), CAST(:busy_counts AS int[]))
      AS busy(endpoint_id, n) ON busy.endpoint_id = ranked.endpoint_id
    WHERE ranked.n <= :cap - COALESCE(busy.n, 0)
  )
  ORDER BY next_attempt_at
  LIMIT :limit
  FOR UPDATE SKIP LOCKED
)
RETURNING id
""")


async def claim(
    db: Database,
    settings: Settings,
    now: datetime,
    limit: int,
    in_flight: Mapping[uuid.UUID, int] | None = None,
) -> list[uuid.UUID]:
    """Leases up to `limit` due deliveries, oldest first, and no more of one endpoint than
    FORETELL_WEBHOOK_ENDPOINT_CONCURRENCY less its deliveries `in_flight` (by endpoint id):
    an endpoint that answers slowly, or not at all, delays its own deliveries only."""
    lease = timedelta(seconds=settings.webhook_timeout_s + 30)
    busy = dict(in_flight or {})
    params = {
        "now": now, "lease_until": now + lease, "limit": limit,
        "cap": settings.webhook_endpoint_concurrency,
        "busy_ids": list(busy), "busy_counts": list(busy.values()),
    }  # fmt: skip
    async with db.session.begin() as session:
        # A lost lease is harmless: the delivery is claimed again.
        await session.execute(_ASYNC_COMMIT)
        rows = await session.execute(_CLAIM, params)
        return [row[0] for row in rows]


@dataclass(frozen=True)
class _Job:
    delivery: WebhookDelivery
    endpoint: WebhookEndpoint
    subscription: Subscription
    model: str
    forecast: Forecast | None


async def load(db: Database, delivery_ids: list[uuid.UUID]) -> list[_Job]:
    """Everything needed to send the claimed deliveries, in one query."""
    if not delivery_ids:
        return []
    query = (
        select(WebhookDelivery, WebhookEndpoint, Subscription, Model.name, Forecast)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(Subscription, Subscription.id == WebhookEndpoint.subscription_id)
        .join(Model, Model.id == Subscription.model_id)
        .outerjoin(Forecast, Forecast.id == WebhookDelivery.forecast_id)
        .where(WebhookDelivery.id.in_(delivery_ids))
    )
    async with db.session() as session:
        rows = (await session.execute(query)).all()
    return [_Job(row[0], row[1], row[2], row[3], row[4]) for row in rows]


async def _finish(
    db: Database,
    settings: Settings,
    job: _Job,
    started: datetime,
    duration_ms: int,
    status: int | None,
    error: str,
) -> str:
    number = job.delivery.attempts + 1
    ok = status is not None and 200 <= status < 300
    values: dict[str, Any] = {"attempts": number, "last_status": status, "last_error": error}
    if ok:
        values.update(state="delivered", delivered_at=started, next_attempt_at=None)
    elif number >= settings.webhook_max_attempts:
        values.update(state="failed", next_attempt_at=None)
    else:
        values["next_attempt_at"] = started + timedelta(seconds=backoff_s(settings, number))
    changed = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == job.delivery.id, WebhookDelivery.state == "pending")
        .values(**values)
        .returning(WebhookDelivery.id)
        .cte("changed")
    )
    # The answer and the attempt in one statement, one round trip (autocommit): the attempt is
    # logged only if the delivery was still pending.
    record = insert(WebhookAttempt).from_select(
        ["delivery_id", "number", "started_at", "duration_ms", "status_code", "error"],
        select(
            changed.c.id, literal(number), literal(started, DateTime(timezone=True)),
            literal(duration_ms), literal(status, Integer), literal(error[:_ERROR_CHARS]),
        ),
    )  # fmt: skip
    async with db.read.connect() as connection:
        await connection.execute(record)
    return str(values.get("state", "pending"))


async def _cancel(db: Database, delivery_id: uuid.UUID, why: str) -> None:
    async with db.session.begin() as session:
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == "pending")
            .values(state="canceled", next_attempt_at=None, last_error=why)
        )


async def send_one(db: Database, settings: Settings, clock: Clock, delivery_id: uuid.UUID) -> str:
    """POSTs one claimed delivery and records the attempt; returns the delivery's state."""
    jobs = await load(db, [delivery_id])
    return await send(db, settings, clock, jobs[0]) if jobs else "gone"


async def send(db: Database, settings: Settings, clock: Clock, job: _Job) -> str:
    """POSTs a claimed, loaded delivery and records the attempt; returns its state."""
    if job.delivery.state != "pending":
        return "gone"
    delivery_id = job.delivery.id
    now = clock()
    if not await still_entitled(db, settings, job.subscription, now):
        await _cancel(db, delivery_id, "the subscription is no longer entitled to forecasts")
        return "canceled"
    allow = settings.webhooks_allow_private == "on"
    payload = _events.body(job.delivery, str(job.subscription.id), job.model, job.forecast)
    timestamp = int(time.time())
    signed = _signing.headers(
        job.endpoint.secret, _events.message_id(job.delivery), timestamp, payload
    )
    status: int | None = None
    error = ""
    start = time.monotonic()
    try:
        # Checked again at every delivery, and the POST goes to exactly these addresses.
        target = parse_url(job.endpoint.url, allow_private=allow)
        addresses = await resolve(target, allow_private=allow)
        status = await post(target, addresses, signed, payload, settings.webhook_timeout_s)
    except EndpointRefused as refused:
        error = f"refused: {refused}"
    except SendFailed as failed:
        error = str(failed)
    if status is not None and not 200 <= status < 300:
        error = f"answered {status}"
    duration_ms = int((time.monotonic() - start) * 1000)
    return await _finish(db, settings, job, now, duration_ms, status, error)


async def deliver_due(db: Database, settings: Settings, clock: Clock) -> int:
    """Claims and sends every delivery due now, `webhook_concurrency` at a time; returns how
    many were attempted. What the Dispatcher does continuously, in one call."""
    attempted = 0
    while claimed := await claim(db, settings, clock(), settings.webhook_concurrency):
        jobs = await load(db, claimed)
        await asyncio.gather(*(send(db, settings, clock, job) for job in jobs))
        attempted += len(claimed)
    return attempted


class Dispatcher:
    """Sends deliveries as they come due, up to FORETELL_WEBHOOK_CONCURRENCY at once, for as
    long as it runs. It LISTENs for recorded runs and test events, so a new delivery leaves
    within milliseconds of its commit, and looks for due retries at least every second."""

    _IDLE_S = 1.0

    def __init__(self, db: Database, settings: Settings, clock: Clock) -> None:
        self._db, self._settings, self._clock = db, settings, clock
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[str], uuid.UUID] = {}  # task -> its endpoint
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None

    async def start(self) -> None:
        await self._listen()
        self._task = asyncio.create_task(self._loop(), name="foretell-webhooks")

    async def _listen(self) -> None:
        assert self._settings.database_url
        url = make_url(self._settings.database_url).set(drivername="postgresql")
        connection = await asyncpg.connect(url.render_as_string(hide_password=False))
        for channel in (FORECASTS_CHANNEL, WEBHOOKS_CHANNEL):
            await connection.add_listener(channel, self._notified)
        self._connection = connection

    async def _listening(self) -> None:
        """LISTEN again after PostgreSQL restarted (the connection ended with it); meanwhile
        the one-second tick still finds every due delivery."""
        if self._connection is None or self._connection.is_closed():
            self._connection = None
            await self._listen()

    def _notified(self, *_args: object) -> None:
        self._wake.set()

    def _done(self, task: asyncio.Task[str]) -> None:
        self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery failed", error=repr(task.exception()))
        self._wake.set()

    async def _cycle(self) -> None:
        free = self._settings.webhook_concurrency - len(self._inflight)
        if free <= 0:
            return
        per_endpoint = Counter(self._inflight.values())
        claimed = await claim(self._db, self._settings, self._clock(), free, per_endpoint)
        for job in await load(self._db, claimed):
            task = asyncio.create_task(send(self._db, self._settings, self._clock, job))
            self._inflight[task] = job.endpoint.id
            task.add_done_callback(self._done)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._listening()
                await self._cycle()
            except Exception:  # logged; the next wake or tick tries again
                log.exception("webhook dispatch cycle failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._IDLE_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()
