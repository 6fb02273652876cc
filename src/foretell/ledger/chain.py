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
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from foretell.db import Database
from foretell.ledger import canonical
from foretell.ledger.keys import signing_key

RUNS_BY_ID = text("""
SELECT r.id, r.model_id, m.name, v.number, v.digest, r.kind, r.as_of, r.created_at, r.outcome,
       r.duration_s, r.detail, r.log
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


def build_payloads(
    runs: Iterable[Sequence[Any]], forecasts: Iterable[Sequence[Any]]
) -> dict[uuid.UUID, bytes]:
    """The canonical payloads of runs (rows of `RUNS_BY_ID`) with their forecasts (rows of
    `FORECASTS_BY_RUN`)."""
    by_run: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for f in forecasts:
        by_run.setdefault(f[0], []).append(
            canonical.forecast(
                symbol=f[1], as_of=f[2], target_time=f[3], kind=f[4], direction=f[5],
                predicted_return=f[6], probability=f[7], recorded_at=f[8],
            )
        )  # fmt: skip
    out: dict[uuid.UUID, bytes] = {}
    for r in runs:
        out[r[0]] = canonical.encode(
            {
                "v": canonical.VERSION,
                "model": r[2],
                "run_id": str(r[0]),
                "version": r[3],
                "version_digest": r[4],
                "kind": r[5],
                "as_of": canonical.time(r[6]),
                "recorded_at": canonical.time(r[7]),
                "outcome": r[8],
                "duration_s": canonical.number(r[9]),
                "detail_sha256": canonical.digest(r[10]),
                "log_sha256": canonical.digest(r[11]),
                "forecasts": canonical.sort_forecasts(by_run.get(r[0], [])),
            }
        )
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
    sequence, head = (await session.execute(_LOCK_HEAD, {"model_id": model_id})).one()
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
SELECT h.model_id, m.name, h.sequence, h.head_hash
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
        for model_id, name, sequence, head in heads:
            message = canonical.checkpoint_message(name, sequence, head, now, key.key_id)
            result = await session.execute(
                _INSERT_CHECKPOINT,
                {
                    "model_id": model_id, "sequence": sequence, "head_hash": head, "now": now,
                    "key_id": key.key_id, "signature": key.sign(message),
                },
            )  # fmt: skip
            written += getattr(result, "rowcount", 0) or 0
    return written
