"""Which failures are outages of a store (PostgreSQL or Redis restarting, unreachable, or
dropping connections): the client gets UNAVAILABLE, which says "try again", never INTERNAL."""

from __future__ import annotations

import asyncpg
import redis.exceptions
import sqlalchemy.exc

from foretell.errors import Unavailable

# asyncpg's errors when the server is gone, shutting down, starting, or full.
_POSTGRES = (
    asyncpg.exceptions.PostgresConnectionError,  # connection failures, "cannot connect now"
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)
_REDIS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# Refused, reset, or a connect that timed out (TimeoutError is an OSError).
_SOCKET = (ConnectionError, TimeoutError)


def outage(error: BaseException) -> Unavailable | None:
    """An Unavailable to answer instead of `error`, when `error` (or what caused it) is a
    store's outage; None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_outage(current):
            return Unavailable("the service is briefly unavailable; try again shortly")
        current = current.__cause__ or current.__context__
    return None


def _is_outage(error: BaseException) -> bool:
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    # The pool found no connection in time: the database is not answering.
    if isinstance(error, sqlalchemy.exc.TimeoutError):
        return True
    return isinstance(error, (*_POSTGRES, *_REDIS, *_SOCKET))
