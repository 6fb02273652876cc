"""Upgrading a database that already holds a track record: the live runs recorded before the
ledger existed become its first entries, and their chains verify."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from foretell.cli._verify import Ledger, check_ledger
from foretell.db import connect
from foretell.db.migrate import upgrade
from foretell.paging import PageTokens
from foretell.services.forecast._ledger import ledger_page

BASE = datetime(2024, 3, 4, 9, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def scratch_url(server_database_url: str) -> AsyncIterator[str]:
    name = f"foretell_migrate_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_dsn(server_database_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _record_before_the_ledger(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    """A model with three live runs (two with forecasts, one missed) and a simulated one, as
    the platform wrote them at revision 0006."""
    owner, model, version = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    await conn.execute(
        "INSERT INTO users (id, email, display_name, role, password_hash, created_at)"
        " VALUES ($1, $2, 'Owner', 'provider', 'x', $3)",
        owner, f"{name}@example.com", now,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO models (id, name, owner_id, title, description, symbols, resolution,"
        " horizon, tags, visibility, created_at, updated_at)"
        " VALUES ($1, $2, $3, 'Old', '', ARRAY['EURUSD'], '1h', 1, ARRAY[]::text[], 'public',"
        " $4, $4)",
        model, name, owner, now,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO versions (id, model_id, number, digest, bundle_size, manifest, created_at,"
        " build_state, failure_reason, build_log) VALUES ($1, $2, 1, $3, 1, '{}', $4, 'ready',"
        " '', '')",
        version, model, "sha256:" + "ab" * 32, now,
    )  # fmt: skip
    for i, outcome in enumerate(("ok", "missed", "ok")):
        run, as_of = uuid.uuid4(), BASE + i * HOUR
        for kind in ("live", "simulated"):
            run_id = run if kind == "live" else uuid.uuid4()
            await conn.execute(
                "INSERT INTO runs (id, model_id, version_id, as_of, kind, outcome, duration_s,"
                " detail, log, created_at) VALUES ($1, $2, $3, $4, $5, $6, 0.5, '', 'out', $7)",
                run_id, model, version, as_of, kind, outcome, now + i * HOUR,
            )  # fmt: skip
            if outcome == "ok":
                await conn.execute(
                    "INSERT INTO forecasts (run_id, model_id, version_id, kind, symbol, as_of,"
                    " target_time, direction, predicted_return, probability, recorded_at)"
                    " VALUES ($1, $2, $3, $4, 'EURUSD', $5, $6, 'up', 0.001, 0.6, $7)",
                    run_id, model, version, kind, as_of, as_of + HOUR, now + i * HOUR,
                )  # fmt: skip
    return model


async def test_live_runs_recorded_before_the_ledger_are_chained_by_the_upgrade(
    scratch_url: str,
) -> None:
    await upgrade(scratch_url, "0006")
    conn = await asyncpg.connect(_dsn(scratch_url))
    try:
        model = await _record_before_the_ledger(conn, "old-model")
    finally:
        await conn.close()
    await upgrade(scratch_url)
    db = connect(scratch_url, pool_size=1)
    try:
        page = await ledger_page(db, PageTokens(bytes(32)), model, "old-model", 100, 0)
    finally:
        await db.close()
    assert [e.sequence for e in page.entries] == [1, 2, 3]
    assert [e.withheld for e in page.entries] == [False] * 3
    assert not page.unledgered_run_ids
    assert ['"outcome":"missed"' in e.payload for e in page.entries] == [False, True, False]
    ledger = Ledger()
    ledger.add(page)
    verdict = check_ledger("old-model", ledger, None)
    assert verdict.ok, verdict.problem
