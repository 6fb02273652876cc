"""Data feeders: accounts that push bars for the symbols an admin granted them, and nothing
else (the policy table keeps the role to IngestBars; this module keeps it to its symbols).
Admins grant and revoke symbols with `foretell admin feeders`."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

from sqlalchemy import text

from foretell.db import Database

_GRANTED = text("SELECT EXISTS (SELECT 1 FROM feeder_grants WHERE user_id = :u AND symbol = :s)")
_GRANT = text("""
INSERT INTO feeder_grants (user_id, symbol, granted_at, granted_by)
SELECT :u, s, :now, :by FROM unnest(CAST(:symbols AS text[])) AS s
ON CONFLICT DO NOTHING
""")
_REVOKE = text("DELETE FROM feeder_grants WHERE user_id = :u AND symbol = ANY(:symbols)")
_LIST = text("""
SELECT u.id, u.email, u.display_name,
       coalesce(array_agg(g.symbol ORDER BY g.symbol) FILTER (WHERE g.symbol IS NOT NULL), '{}')
FROM users u LEFT JOIN feeder_grants g ON g.user_id = u.id
WHERE u.role = 'feeder'
GROUP BY u.id, u.email, u.display_name
ORDER BY lower(u.email)
""")


@dataclasses.dataclass(frozen=True)
class Feeder:
    user_id: uuid.UUID
    email: str
    display_name: str
    symbols: list[str]


async def may_push(db: Database, user_id: uuid.UUID, symbol: str) -> bool:
    """Whether the feeder `user_id` was granted `symbol`."""
    async with db.read.connect() as conn:
        found = await conn.scalar(_GRANTED, {"u": user_id, "s": symbol})
    return bool(found)


async def grant(
    db: Database, user_id: uuid.UUID, symbols: list[str], *, by: str, now: datetime
) -> None:
    """Lets the feeder push bars for `symbols` (checked symbols; granted ones stay as
    they were)."""
    params = {"u": user_id, "symbols": symbols, "now": now, "by": by}
    async with db.session.begin() as session:
        await session.execute(_GRANT, params)


async def revoke(db: Database, user_id: uuid.UUID, symbols: list[str]) -> int:
    """Takes `symbols` from the feeder; how many it had."""
    async with db.session.begin() as session:
        result = await session.execute(_REVOKE, {"u": user_id, "symbols": symbols})
    return int(getattr(result, "rowcount", 0))


async def list_feeders(db: Database) -> list[Feeder]:
    """Every feeder account and its symbols, by email."""
    async with db.read.connect() as conn:
        rows = (await conn.execute(_LIST)).all()
    return [Feeder(r[0], r[1], r[2], list(r[3])) for r in rows]
