"""The PostgreSQL NOTIFY channel on which recorded runs are announced.

`execute_run` calls `announce_run` inside the transaction that records a run: PostgreSQL
delivers a notification only when (and if) its transaction commits, so listeners never hear of
a run they cannot read yet, nor of one that was rolled back. StreamForecasts listens.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

FORECASTS_CHANNEL = "foretell_forecasts"

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


@dataclass(frozen=True)
class RunRecorded:
    """The payload: which run was recorded, for which model, of which kind. Small (well under
    NOTIFY's 8,000-byte limit); listeners read the forecasts themselves."""

    run_id: uuid.UUID
    model_id: uuid.UUID
    kind: str

    def encode(self) -> str:
        return json.dumps({"run": str(self.run_id), "model": str(self.model_id), "kind": self.kind})

    @classmethod
    def decode(cls, payload: str) -> RunRecorded | None:
        """The notice in a payload; None for a payload of another shape."""
        try:
            data = json.loads(payload)
            return cls(uuid.UUID(data["run"]), uuid.UUID(data["model"]), str(data["kind"]))
        except (ValueError, KeyError, TypeError):
            return None


async def announce_run(session: AsyncSession, notice: RunRecorded) -> None:
    """Queues the notice in the session's transaction; it is sent when the transaction commits."""
    await session.execute(_NOTIFY, {"channel": FORECASTS_CHANNEL, "payload": notice.encode()})


# Who may read a model's forecasts may have changed (a subscription moved, the model's
# visibility changed): open StreamForecasts calls of that model re-check their caller.
ACCESS_CHANNEL = "foretell_access"


async def announce_access(session: AsyncSession, model_id: uuid.UUID) -> None:
    """Queues an access-changed notice for the model; sent when the transaction commits."""
    await session.execute(_NOTIFY, {"channel": ACCESS_CHANNEL, "payload": str(model_id)})


# Bars were stored: "SYMBOL RESOLUTION LAST_CLOSE" (the last stored bar's close, in seconds
# since the epoch). The scheduler listens, so a slot runs as soon as its bars have landed.
BARS_CHANNEL = "foretell_bars"


async def announce_bars(
    session: AsyncSession, symbol: str, resolution: str, last_close: int
) -> None:
    """Queues a bars-stored notice; sent when the transaction commits."""
    payload = f"{symbol} {resolution} {last_close}"
    await session.execute(_NOTIFY, {"channel": BARS_CHANNEL, "payload": payload})
