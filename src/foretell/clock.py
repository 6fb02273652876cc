"""The platform's time: the clock services read (injected so tests can move it) and the one
conversion of a time to the protobuf Timestamp every API serves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

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
