"""GetLedger: a page of a model's chain with payloads rebuilt from the current rows, and (on
the first page) its checkpoints, their keys and any live run missing from the chain."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text

from foretell.clock import timestamp as _ts
from foretell.db import Database
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.ledger import chain
from foretell.services.forecast._validate import ledger_token

_ENTRIES = text("""
SELECT sequence, run_id, prev_hash, entry_hash FROM ledger_entries
WHERE model_id = :model_id AND sequence > :after ORDER BY sequence LIMIT :limit
""")
_HEAD = text("SELECT sequence FROM ledger_heads WHERE model_id = :model_id")
_CHECKPOINTS = text("""
SELECT sequence, head_hash, signed_at, key_id, signature FROM ledger_checkpoints
WHERE model_id = :model_id ORDER BY sequence
""")
_KEYS = text("""
SELECT key_id, public_key FROM ledger_keys WHERE key_id IN
  (SELECT DISTINCT key_id FROM ledger_checkpoints WHERE model_id = :model_id) ORDER BY key_id
""")
_RECENT = text("""
SELECT id FROM runs WHERE id = ANY(:ids) AND created_at >= :recorded_before
""")
_UNLEDGERED = text("""
SELECT r.id FROM runs r LEFT JOIN ledger_entries e ON e.run_id = r.id
WHERE r.model_id = :model_id AND r.kind = 'live' AND e.run_id IS NULL ORDER BY r.as_of, r.id
""")


async def ledger_page(
    db: Database,
    model_id: uuid.UUID,
    name: str,
    limit: int,
    after: int,
    recorded_before: datetime | None = None,
) -> pb.GetLedgerResponse:
    """`recorded_before`: the caller may read only forecasts recorded before then (the delayed
    sample); later runs' payloads are withheld. None: every payload."""
    params = {"model_id": model_id, "after": after, "limit": limit + 1}
    async with db.read.connect() as conn, conn.begin():
        # One snapshot: the entries and the rows their payloads are rebuilt from agree.
        await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rows = (await conn.execute(_ENTRIES, params)).all()
        head = await conn.scalar(_HEAD, params)
        run_ids = [entry.run_id for entry in rows[:limit]]
        withheld: set[uuid.UUID] = set()
        if recorded_before is not None:
            # The run's recording time is its forecasts' (one transaction, one clock reading),
            # so this cut agrees with the one ListForecasts applies to the same caller.
            cut = {"ids": run_ids, "recorded_before": recorded_before}
            withheld = {run.id for run in await conn.execute(_RECENT, cut)}
        # Withheld payloads are not even built: their forecasts are not read.
        built = await chain.payloads(conn, [i for i in run_ids if i not in withheld])
        response = pb.GetLedgerResponse(model=name, head_sequence=head or 0)
        for entry in rows[:limit]:
            payload = None if entry.run_id in withheld else built.get(entry.run_id)
            response.entries.append(
                pb.LedgerEntry(
                    sequence=entry.sequence,
                    run_id=str(entry.run_id),
                    prev_hash=entry.prev_hash,
                    entry_hash=entry.entry_hash,
                    payload=payload.decode() if payload is not None else "",
                    withheld=entry.run_id in withheld,
                )
            )
        if len(rows) > limit:
            response.next_page_token = ledger_token(name, rows[limit - 1].sequence)
        if after == 0:
            for point in await conn.execute(_CHECKPOINTS, params):
                response.checkpoints.append(
                    pb.LedgerCheckpoint(
                        sequence=point.sequence,
                        head_hash=point.head_hash,
                        sign_time=_ts(point.signed_at),
                        key_id=point.key_id,
                        signature=point.signature,
                    )
                )
            for key in await conn.execute(_KEYS, params):
                response.keys.append(pb.LedgerKey(key_id=key.key_id, public_key=key.public_key))
            response.unledgered_run_ids.extend(
                str(run.id) for run in await conn.execute(_UNLEDGERED, params)
            )
    return response
