"""A store that does not answer is UNAVAILABLE to clients, never INTERNAL: the errors that
PostgreSQL and Redis clients really raise when their server is down, classified."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest
import redis.asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url

from foretell.db import connect
from foretell.errors import Unavailable
from foretell.runtime._outage import outage


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_database_that_refuses_connections_is_an_outage() -> None:
    db = connect(f"postgresql://foretell@127.0.0.1:{_closed_port()}/foretell", pool_size=1)
    try:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - whatever SQLAlchemy wraps
            async with db.read.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await db.close()
    found = outage(caught.value)
    assert isinstance(found, Unavailable)
    assert "try again" in found.message


async def test_a_redis_that_refuses_connections_is_an_outage() -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=_closed_port())
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            await client.ping()
    finally:
        await client.aclose()
    assert isinstance(outage(caught.value), Unavailable)


async def test_a_dropped_database_connection_is_an_outage(database_url: str) -> None:
    db = connect(database_url, pool_size=1)
    try:
        async with db.read.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            async with db.engine.connect() as other:
                await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(Exception) as caught:  # noqa: PT011 - whatever SQLAlchemy wraps
                await conn.execute(text("SELECT 1"))
    finally:
        await db.close()
    assert isinstance(outage(caught.value), Unavailable)


async def test_a_pooled_connection_the_server_ended_is_replaced_at_checkout(
    database_url: str,
) -> None:
    """As after a PostgreSQL restart: the backend behind the pool's only connection ends
    while the connection is idle in the pool; the next checkout gets a new connection and its
    request succeeds, with no round trip spent on a ping."""
    db = connect(database_url, pool_size=1)
    try:
        async with db.read.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            raw = await conn.get_raw_connection()
            pooled = raw.driver_connection
        assert pooled is not None
        ended = asyncio.Event()
        pooled.add_termination_listener(lambda _connection: ended.set())
        other = await asyncpg.connect(make_url(database_url).render_as_string(False))
        try:
            assert await other.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await other.close()
        # The end of the stream reaches the idle connection through the event loop.
        await asyncio.wait_for(ended.wait(), 10)
        async with db.read.connect() as conn:
            assert await conn.scalar(text("SELECT pg_backend_pid()")) != pid
    finally:
        await db.close()


def test_a_programming_error_stays_internal() -> None:
    bug = ValueError("a bug")
    bug.__cause__ = KeyError("missing")
    assert outage(bug) is None
    # A connection error anywhere down the chain is what counts.
    wrapped = RuntimeError("query failed")
    wrapped.__context__ = ConnectionResetError("reset by peer")
    assert isinstance(outage(wrapped), Unavailable)
