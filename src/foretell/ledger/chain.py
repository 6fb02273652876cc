"""Appending to a model's chain (in the transaction that records the run), rebuilding entry
payloads from the current rows, and signing checkpoints of chain heads.

Only live runs are ledgered (every outcome: ok, failed, missed): dry runs and simulated
replays are not track record and have no chain.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from foretell.db import Database
from foretell.ledger import canonical
from foretell.ledger.keys import signing_key

# Each column is labelled with the name of its field in RunRow or ForecastRow.
RUNS_BY_ID = text("""
SELECT r.id AS run_id, m.name AS model, v.number AS version, v.digest AS version_digest,
       r.kind, r.as_of, r.created_at AS recorded_at, r.outcome, r.duration_s, r.detail, r.log
FROM runs r JOIN models m ON m.id = r.model_id JOIN versions v ON v.id = r.version_id
WHERE r.id = ANY(:ids)
""")
FORECASTS_BY_RUN = text("""
SELECT run_id, symbol, as_of, target_time, kind, direction, predicted_return, probability,
       recorded_at
FROM forecasts WHERE run_id = ANY(:ids)
""")
_HEAD = text("""
INSERT INTO ledger_heads (model_id, sequence, head_hash) VALUES (:model_id, 0, :genesis)
ON CONFLICT (model_id) DO NOTHING
""")
_LOCK_HEAD = text(
    "SELECT sequence, head_hash FROM ledger_heads WHERE model_id = :model_id FOR UPDATE"
)
_INSERT_ENTRY = text("""
INSERT INTO ledger_entries (model_id, sequence, run_id, prev_hash, entry_hash, created_at)
VALUES (:model_id, :sequence, :run_id, :prev_hash, :entry_hash, :now)
""")
_MOVE_HEAD = text("""
UPDATE ledger_heads SET sequence = :sequence, head_hash = :entry_hash WHERE model_id = :model_id
""")

Executor = AsyncSession | AsyncConnection


class RunRow(NamedTuple):
    """A row of `RUNS_BY_ID`: what a run's entry payload is made of."""

    run_id: uuid.UUID
    model: str
    version: int
    version_digest: str
    kind: str
    as_of: datetime
    recorded_at: datetime
    outcome: str
    duration_s: float | None
    detail: str
    log: str


class ForecastRow(NamedTuple):
    """A row of `FORECASTS_BY_RUN`."""

    run_id: uuid.UUID
    symbol: str
    as_of: datetime
    target_time: datetime
    kind: str
    direction: str
    predicted_return: float | None
    probability: float | None
    recorded_at: datetime


def payload(run: RunRow, forecasts: Iterable[ForecastRow]) -> bytes:
    """The canonical payload of one run with its forecasts (see `canonical` for the format)."""
    return canonical.encode(
        {
            "v": canonical.VERSION,
            "model": run.model,
            "run_id": str(run.run_id),
            "version": run.version,
            "version_digest": run.version_digest,
            "kind": run.kind,
            "as_of": canonical.time(run.as_of),
            "recorded_at": canonical.time(run.recorded_at),
            "outcome": run.outcome,
            "duration_s": canonical.number(run.duration_s),
            "detail_sha256": canonical.digest(run.detail),
            "log_sha256": canonical.digest(run.log),
            "forecasts": canonical.sort_forecasts(
                [
                    canonical.forecast(
                        symbol=f.symbol,
                        as_of=f.as_of,
                        target_time=f.target_time,
                        kind=f.kind,
                        direction=f.direction,
                        predicted_return=f.predicted_return,
                        probability=f.probability,
                        recorded_at=f.recorded_at,
                    )
                    for f in forecasts
                ]
            ),
        }
    )


def build_payloads(
    runs: Iterable[Row[Any]], forecasts: Iterable[Row[Any]]
) -> dict[uuid.UUID, bytes]:
    """The canonical payloads of runs (rows of `RUNS_BY_ID`) with their forecasts (rows of
    `FORECASTS_BY_RUN`)."""
    # Built by column name: a column the row types do not name, or one missing, fails here
    # rather than shifting every field after it.
    by_run: dict[uuid.UUID, list[ForecastRow]] = {}
    for row in forecasts:
        forecast = ForecastRow(**row._mapping)
        by_run.setdefault(forecast.run_id, []).append(forecast)
    out: dict[uuid.UUID, bytes] = {}
    for row in runs:
        run = RunRow(**row._mapping)
        out[run.run_id] = payload(run, by_run.get(run.run_id, []))
    return out


async def payloads(db: Executor, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]:
    """The canonical payload of each run that exists, from its rows as they are now."""
    if not run_ids:
        return {}
    ids = {"ids": list(run_ids)}
    runs = (await db.execute(RUNS_BY_ID, ids)).all()
    forecasts = (await db.execute(FORECASTS_BY_RUN, ids)).all()
    return build_payloads(runs, forecasts)


async def append(
    session: AsyncSession, model_id: uuid.UUID, run_ids: Sequence[uuid.UUID], now: datetime
) -> None:
    """Appends the runs (already inserted in this transaction, with their forecasts) to their
    model's chain, in the order given. The head row is locked until the transaction ends:
    appends to one model are serialised, and an append rolled back leaves no trace."""
    if not run_ids:
        return
    built = await payloads(session, run_ids)
    await session.execute(_HEAD, {"model_id": model_id, "genesis": canonical.GENESIS})
    locked = (await session.execute(_LOCK_HEAD, {"model_id": model_id})).one()
    sequence: int = locked.sequence
    head: bytes = locked.head_hash
    entries = []
    for run_id in run_ids:
        sequence += 1
        entry_hash = canonical.entry_hash(head, built[run_id])
        entries.append(
            {
                "model_id": model_id, "sequence": sequence, "run_id": run_id, "prev_hash": head,
                "entry_hash": entry_hash, "now": now,
            }
        )  # fmt: skip
        head = entry_hash
    await session.execute(_INSERT_ENTRY, entries)
    await session.execute(_MOVE_HEAD, entries[-1])


_UNSIGNED = text("""
SELECT h.model_id, m.name AS model, h.sequence, h.head_hash
FROM ledger_heads h JOIN models m ON m.id = h.model_id
WHERE h.sequence > 0 AND h.sequence > COALESCE(
  (SELECT max(c.sequence) FROM ledger_checkpoints c WHERE c.model_id = h.model_id), 0)
""")
_INSERT_KEY = text("""
INSERT INTO ledger_keys (key_id, public_key, created_at) VALUES (:key_id, :public_key, :now)
ON CONFLICT (key_id) DO NOTHING
""")
_INSERT_CHECKPOINT = text("""
INSERT INTO ledger_checkpoints (model_id, sequence, head_hash, signed_at, key_id, signature)
VALUES (:model_id, :sequence, :head_hash, :now, :key_id, :signature)
ON CONFLICT (model_id, sequence) DO NOTHING
""")


async def checkpoint(db: Database, keys_dir: Path, clock: Callable[[], datetime]) -> int:
    """Signs the head of every chain that has grown since its last checkpoint; returns how
    many checkpoints it wrote."""
    key = signing_key(keys_dir)
    now = clock()
    written = 0
    async with db.session.begin() as session:
        heads = (await session.execute(_UNSIGNED)).all()
        if not heads:
            return 0
        await session.execute(
            _INSERT_KEY, {"key_id": key.key_id, "public_key": key.public_bytes, "now": now}
        )
        for h in heads:
            message = canonical.checkpoint_message(
                h.model, h.sequence, h.head_hash, now, key.key_id
            )
            result = await session.execute(
                _INSERT_CHECKPOINT,
                {
                    "model_id": h.model_id, "sequence": h.sequence, "head_hash": h.head_hash,
                    "now": now, "key_id": key.key_id, "signature": key.sign(message),
                },
            )  # fmt: skip
            written += getattr(result, "rowcount", 0) or 0
    return written
