"""Conversions every servicer needs."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp, or None (field left unset) for None."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts
