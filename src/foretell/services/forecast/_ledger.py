"""GetLedger: a page of a model's chain with payloads rebuilt from the current rows, and (on
the first page) its checkpoints, their keys and any live run missing from the chain."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from foretell.db import Database
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.ledger import chain
from foretell.services._convert import timestamp as _ts

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
_UNLEDGERED = text("""
SELECT r.id FROM runs r LEFT JOIN ledger_entries e ON e.run_id = r.id
WHERE r.model_id = :model_id AND r.kind = 'live' AND e.run_id IS NULL ORDER BY r.as_of, r.id
""")


async def ledger_page(
    db: Database, model_id: uuid.UUID, name: str, limit: int, after: int
) -> pb.GetLedgerResponse:
    params = {"model_id": model_id, "after": after, "limit": limit + 1}
    async with db.read.connect() as conn, conn.begin():
        # One snapshot: the entries and the rows their payloads are rebuilt from agree.
        await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rows = (await conn.execute(_ENTRIES, params)).all()
        head = await conn.scalar(_HEAD, params)
        built = await chain.payloads(conn, [r[1] for r in rows[:limit]])
        response = pb.GetLedgerResponse(model=name, head_sequence=head or 0)
        for sequence, run_id, prev_hash, entry_hash in rows[:limit]:
            payload = built.get(run_id)
            response.entries.append(
                pb.LedgerEntry(
                    sequence=sequence,
                    run_id=str(run_id),
                    prev_hash=prev_hash,
                    entry_hash=entry_hash,
                    payload=payload.decode() if payload is not None else "",
                )
            )
        if len(rows) > limit:
            response.next_page_token = f"seq:{rows[limit - 1][0]}"
        if after == 0:
            for sequence, head_hash, signed_at, key_id, signature in await conn.execute(
                _CHECKPOINTS, params
            ):
                response.checkpoints.append(
                    pb.LedgerCheckpoint(
                        sequence=sequence,
                        head_hash=head_hash,
                        sign_time=_ts(signed_at),
                        key_id=key_id,
                        signature=signature,
                    )
                )
            for key_id, public_key in await conn.execute(_KEYS, params):
                response.keys.append(pb.LedgerKey(key_id=key_id, public_key=public_key))
            response.unledgered_run_ids.extend(
                str(r[0]) for r in await conn.execute(_UNLEDGERED, params)
            )
    return response
