"""What `pool_pre_ping` costs: a pooled connection checked out and used for one `SELECT 1`,
with the ping that lets the pool outlive a PostgreSQL restart (foretell.db.connect), against
the same without it. The ping is one more round trip per checkout.

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
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from foretell.db import async_url


async def per_checkout_us(url: str, *, ping: bool, checkouts: int) -> float:
    engine = create_async_engine(async_url(url), pool_size=5, pool_pre_ping=ping)
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
            figures: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(repeat):
                for ping in (False, True):
                    figures[ping].append(await per_checkout_us(url, ping=ping, checkouts=checkouts))
    without, with_ping = statistics.median(figures[False]), statistics.median(figures[True])
    print(f"checkout + SELECT 1, median of {repeat} x {checkouts}:")
    print(f"  without pre-ping   {without:7.0f} µs")
    print(
        f"  with pre-ping      {with_ping:7.0f} µs   (+{with_ping - without:.0f} µs per checkout)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.checkouts, args.repeat))
