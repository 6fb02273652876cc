"""Recorded runs as they are committed, from PostgreSQL LISTEN/NOTIFY, fanned out to the
process's open StreamForecasts calls.

One listening connection per process, opened with the first subscriber and closed with the
last. Each subscriber has a bounded queue of notices; a subscriber that falls too far behind
gets `LOST` and its stream ends UNAVAILABLE (the client opens it again and fills the gap with
ListForecasts).

When the connection is lost (PostgreSQL restarted), the feed listens again as soon as the
database answers, with back-off, and then gives every subscriber `RESYNC`: notices sent while
nobody listened are gone, so each stream reads what was recorded meanwhile. Only when the
database stays away longer than `RECONNECT_FOR_S` do the streams get `LOST`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
from sqlalchemy.engine import make_url

from foretell.db.notify import ACCESS_CHANNEL, FORECASTS_CHANNEL, RunRecorded

LOST: Final = None
# Who may read the model may have changed: each stream re-checks its caller.
ACCESS_CHANGED: Final = "access"
# Listening again after the connection was lost: what was recorded meanwhile is unannounced.
RESYNC: Final = "resync"
_QUEUE = 1000
RECONNECT_FOR_S = 60.0
_FIRST_RETRY_S = 0.25
_MAX_RETRY_S = 4.0

Notices = asyncio.Queue[RunRecorded | str | None]


class ForecastFeed:
    def __init__(self, database_url: str) -> None:
        self._dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
        self._subscribers: dict[uuid.UUID, set[Notices]] = {}
        self._connection: Any = None
        self._lock = asyncio.Lock()
        self._reconnecting: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def subscribe(self, model_id: uuid.UUID) -> AsyncIterator[Notices]:
        """Notices of the model's recorded runs, from the moment this returns."""
        queue: Notices = asyncio.Queue(_QUEUE + 1)
        async with self._lock:
            if self._connection is None:
                await self._listen()
            self._subscribers.setdefault(model_id, set()).add(queue)
        try:
            yield queue
        finally:
            async with self._lock:
                queues = self._subscribers.get(model_id, set())
                queues.discard(queue)
                if not queues:
                    self._subscribers.pop(model_id, None)
                if not self._subscribers:
                    if self._reconnecting is not None:
                        self._reconnecting.cancel()
                        self._reconnecting = None
                    if self._connection is not None:
                        connection, self._connection = self._connection, None
                        await connection.close()

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        try:
            connection.add_termination_listener(self._lost)
            await connection.add_listener(FORECASTS_CHANNEL, self._notified)
            await connection.add_listener(ACCESS_CHANNEL, self._access_changed)
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        notice = RunRecorded.decode(payload)
        if notice is None:
            return
        for queue in self._subscribers.get(notice.model_id, ()):
            if queue.qsize() >= _QUEUE:
                if queue.qsize() == _QUEUE:
                    queue.put_nowait(LOST)
                continue
            queue.put_nowait(notice)

    def _access_changed(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            model_id = uuid.UUID(payload)
        except ValueError:
            return
        for queue in self._subscribers.get(model_id, ()):
            if queue.qsize() < _QUEUE:
                queue.put_nowait(ACCESS_CHANGED)

    def _lost(self, connection: Any) -> None:
        if connection is not self._connection:
            return  # closed by us, after the last subscriber left
        self._connection = None
        if self._subscribers and self._reconnecting is None:
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name="foretell-forecast-feed-reconnect"
            )

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_FOR_S
        delay = _FIRST_RETRY_S
        try:
            while True:
                try:
                    async with self._lock:
                        if self._connection is None:
                            await self._listen()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    if loop.time() + delay > deadline:
                        self._tell_everyone(LOST)
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_RETRY_S)
                else:
                    self._tell_everyone(RESYNC)
                    return
        finally:
            self._reconnecting = None

    def _tell_everyone(self, notice: str | None) -> None:
        for queues in self._subscribers.values():
            for queue in queues:
                if not queue.full():
                    queue.put_nowait(notice)
