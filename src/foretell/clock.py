"""The platform's time: the clock services read (injected so tests can move it), the one
conversion of a time to the protobuf Timestamp every API serves, and the one check of a
Timestamp a client sends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from foretell.errors import Violations

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp, or None (field left unset) for None."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


# Bounds of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
TIMESTAMP_MIN_S, TIMESTAMP_MAX_S = -62135596800, 253402300799
_NANOS = 1_000_000_000


def checked_time(v: Violations, field: str, value: Timestamp) -> datetime | None:
    """The time a request's Timestamp names (UTC), or None with a violation when it is out of
    the Timestamp's range (seconds from year 1 to 9999, nanos 0 to 999,999,999)."""
    if not (TIMESTAMP_MIN_S <= value.seconds <= TIMESTAMP_MAX_S and 0 <= value.nanos < _NANOS):
        v.add(field, "not a valid time: between 0001-01-01 and 9999-12-31, nanos 0 to 999999999")
        return None
    return value.ToDatetime(tzinfo=UTC)
