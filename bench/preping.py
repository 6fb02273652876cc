"""What a checkout's liveness check costs: a pooled connection checked out and used for one
`SELECT 1`, three ways, against the same PostgreSQL:

- `drop_closed` (foretell.db.connect): the pool asks asyncpg whether the server ended the
  connection (no round trip);
- SQLAlchemy's `pool_pre_ping` (what foretell.db.connect used before): BEGIN, a statement
  and ROLLBACK on every checkout;
- no check at all: the floor (and a failed request after every PostgreSQL restart).

    .venv/bin/python bench/preping.py [--checkouts 3000] [--repeat 3]

PostgreSQL as for the tests (bench/_stores.py: the local server when it answers).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from _stores import database
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from foretell.db import async_url, drop_closed

WAYS = ("none", "drop_closed", "pool_pre_ping")


async def per_checkout_us(url: str, *, way: str, checkouts: int) -> float:
    engine = create_async_engine(async_url(url), pool_size=5, pool_pre_ping=way == "pool_pre_ping")
    if way == "drop_closed":
        event.listen(engine.sync_engine, "checkout", drop_closed)
    read = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        for _ in range(50):  # warm the pool
            async with read.connect() as conn:
                await conn.execute(text("SELECT 1"))
        started = time.perf_counter()
        for _ in range(checkouts):
            async with read.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return (time.perf_counter() - started) / checkouts * 1e6
    finally:
        await engine.dispose()


async def main(checkouts: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        async with database(Path(root)) as url:
            figures: dict[str, list[float]] = {way: [] for way in WAYS}
            for _ in range(repeat):
                for way in WAYS:
                    figures[way].append(await per_checkout_us(url, way=way, checkouts=checkouts))
    floor = statistics.median(figures["none"])
    print(f"checkout + SELECT 1, median of {repeat} x {checkouts}:")
    for way in WAYS:
        median = statistics.median(figures[way])
        print(f"  {way:<14} {median:7.0f} µs   (+{median - floor:.0f} µs per checkout)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.checkouts, args.repeat))
