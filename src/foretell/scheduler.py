"""The scheduler: runs each live version at its calendar's slots as soon as their bars land.

`schedule_runs` looks, for each model's live version, at the slots of its calendar (the
calendars of its symbols, `foretell.calendars`) after the model went live (`models.live_since`)
and after its last recorded or enqueued slot, and plans them with `foretell.runs.plan_slots`:
the newest slot whose bars have landed for all the model's symbols, within the data deadline,
is enqueued as `run_version` with job id `run:{version}:{as_of}` (arq never queues it twice);
older slots are recorded as runs with outcome 'missed' (their bars came but the platform did
not run them in time) or 'data_missing' (their bars had not come by the deadline), kind
'live', so they can never be run late. Closed-market slots do not exist; time a model spent
offline is neither run nor missed.

It runs every minute (the worker's cron, which catches up after downtime and records
deadlines that pass) and whenever bars are stored: `BarsListener` hears the ingest path's
NOTIFY and runs a cycle at once, so a slot starts within moments of its bars landing.
`run_version` re-checks that the version is still live and the slot has come, then calls
`execute_run`, which records the run and its forecasts exactly once whatever arq redelivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from arq import Retry
from arq.constants import result_key_prefix
from arq.jobs import deserialize_result
from sqlalchemy import and_, func, select, text
from sqlalchemy.engine import make_url

from foretell import calendars, metrics
from foretell.build import BuildState
from foretell.db.models import Model, Run, Version
from foretell.db.notify import BARS_CHANNEL
from foretell.ledger import chain
from foretell.logs import get_logger
from foretell.marketdata import calendar_names
from foretell.resolutions import STEP_S
from foretell.runs import (
    MAX_MISSED,
    NotRunnable,
    SlotPlan,
    plan_slots,
    run_job_timeout_s,
    run_on_platform,
)
from foretell.runtime import outage
from foretell.runtime.lanes import Lane, queue_name
from foretell.runtime.resources import Resources

log = get_logger("foretell.scheduler")

__all__ = ["RUN_TRIES", "run_job_id", "run_job_timeout_s", "run_version", "schedule_runs"]

MISSED_DETAIL = "missed: the platform was not running when this slot came due"
DATA_MISSING_DETAIL = (
    "data missing: no {resolution} bar closing at this slot had arrived for {symbols} by the "
    "data deadline ({deadline} s after the close); not run, and not counted against the model"
)
# How long the last enqueued slot of a version is remembered (it only has to outlive the
# queue): a slot queued but not yet recorded must not be taken for a missed one.
_LAST_TTL_S = 7 * 86400
# Enqueues in flight at once: each is a few Redis round trips, and a slot of hundreds of
# models would otherwise queue its last run hundreds of round trips after its first.
_ENQUEUE_AT_ONCE = 32

# One statement for every missed slot of a version; RETURNING names the rows it inserted
# (a slot recorded meanwhile is skipped), which are the ones the ledger gets.
_INSERT_MISSED = text("""
INSERT INTO runs (id, model_id, version_id, as_of, kind, outcome, duration_s, detail, log,
                  created_at)
SELECT m.id, :model_id, :version_id, m.as_of, 'live', m.outcome, 0, m.detail, '', :now
FROM unnest(CAST(:ids AS uuid[]), CAST(:as_ofs AS timestamptz[]), CAST(:outcomes AS text[]),
            CAST(:details AS text[]))
     AS m(id, as_of, outcome, detail)
ON CONFLICT (version_id, as_of, kind) DO NOTHING
RETURNING id
""")
# The open time of each series' newest bar (the primary key's index answers max()).
_LANDED = text("""
SELECT p.symbol, p.resolution,
       (SELECT max(b.open_time) FROM bars b
        WHERE b.symbol = p.symbol AND b.resolution = p.resolution)
FROM unnest(CAST(:symbols AS text[]), CAST(:resolutions AS text[])) AS p(symbol, resolution)
""")


def run_job_id(version_id: uuid.UUID | str, as_of: datetime) -> str:
    return f"run:{version_id}:{as_of.isoformat()}"


def _last_key(version_id: uuid.UUID) -> str:
    return f"foretell:sched-last:{version_id}"


async def schedule_runs(ctx: dict[str, Any]) -> dict[str, int]:
    """One scheduler cycle; returns how many runs it enqueued and how many slots it recorded
    unrun (missed, and data missing)."""
    res: Resources = ctx["resources"]
    now = res.clock()
    last_run = (
        select(Run.version_id, func.max(Run.as_of).label("last"))
        .where(Run.kind == "live")
        .group_by(Run.version_id)
        .subquery()
    )
    query = (
        select(
            Model.id, Model.resolution, Model.symbols, Version.id, Model.live_since,
            last_run.c.last,
        )
        .join(Version, and_(Version.model_id == Model.id, Version.number == Model.live_version))
        .outerjoin(last_run, last_run.c.version_id == Version.id)
        .where(Model.live_version.is_not(None), Version.build_state == BuildState.READY)
    )  # fmt: skip
    async with res.db.read.connect() as conn:
        rows = (await conn.execute(query)).all()
    counts = {"enqueued": 0, "missed": 0, "data_missing": 0}
    if not rows:
        return counts
    series = sorted({(sym, row[1]) for row in rows for sym in row[2]})
    names = await calendar_names(res.db, sorted({sym for sym, _ in series}))
    landed = await _landed(res, series)
    recorded = [(row[3], row[5]) for row in rows]
    queued = await _still_queued(
        res, recorded, await res.redis.mget([_last_key(v) for v, _ in recorded])
    )
    deadline = timedelta(seconds=res.settings.data_deadline_s)
    due: list[tuple[uuid.UUID, datetime]] = []
    for (model_id, resolution, symbols, version_id, live_since, last_db), raw in zip(
        rows, queued, strict=True
    ):
        if live_since is None or not symbols:
            continue
        last = last_db
        if raw is not None:
            last_queued = datetime.fromisoformat(raw.decode())
            last = last_queued if last is None else max(last, last_queued)
        plan = plan_slots(
            calendars.joint(names[sym] for sym in symbols),
            resolution,
            last_as_of=last,
            now=now,
            live_since=live_since,
            landed={sym: landed.get((sym, resolution)) for sym in symbols},
            deadline=deadline,
        )
        if plan.unrun:
            await _record_unrun(res, model_id, version_id, resolution, plan, now)
            counts["missed"] += len(plan.missed)
            counts["data_missing"] += len(plan.data_missing)
        if plan.due is not None:
            due.append((version_id, plan.due))
    for start in range(0, len(due), _ENQUEUE_AT_ONCE):
        batch = due[start : start + _ENQUEUE_AT_ONCE]
        enqueued = await asyncio.gather(*(_enqueue(res, v, as_of) for v, as_of in batch))
        counts["enqueued"] += sum(enqueued)
    if any(counts.values()):
        log.info("scheduled", **counts)
    return counts


async def _still_queued(
    res: Resources,
    last: Sequence[tuple[uuid.UUID, datetime | None]],
    queued: list[bytes | None],
) -> list[bytes | None]:
    """`queued` (each version's last queued slot, from Redis, beside its last recorded slot
    in `last`) without the slots whose job has failed for good (arq keeps its result): no run
    was recorded for them, and taken as queued they would never be run nor recorded missed.
    Their job's result is removed so that the slot can be queued again (while its deadline
    allows; then it is recorded missed)."""
    pending: list[tuple[int, str]] = []
    for i, ((version_id, recorded), raw) in enumerate(zip(last, queued, strict=True)):
        if raw is None:
            continue
        slot = datetime.fromisoformat(raw.decode())
        if recorded is None or slot > recorded:
            pending.append((i, run_job_id(version_id, slot)))
    if not pending:
        return queued
    results = await res.redis.mget([result_key_prefix + job_id for _i, job_id in pending])
    kept = list(queued)
    for (i, job_id), raw_result in zip(pending, results, strict=True):
        if raw_result is None or deserialize_result(raw_result).success:
            continue
        log.warning("a live run's job failed: its slot is planned again", job_id=job_id)
        await res.redis.delete(result_key_prefix + job_id, _last_key(last[i][0]))
        kept[i] = None
    return kept


async def _enqueue(res: Resources, version_id: uuid.UUID, as_of: datetime) -> bool:
    """Queues the version's run at `as_of` (once: the job id is the slot's) and remembers the
    slot as its last queued one."""
    job = await res.redis.enqueue_job(
        "run_version",
        str(version_id),
        as_of.isoformat(),
        _job_id=run_job_id(version_id, as_of),
        _queue_name=queue_name(res.settings, Lane.LIVE),
    )
    await res.redis.set(_last_key(version_id), as_of.isoformat(), ex=_LAST_TTL_S)
    return job is not None


async def _landed(
    res: Resources, series: list[tuple[str, str]]
) -> dict[tuple[str, str], datetime | None]:
    """The close of the newest stored bar of each (symbol, resolution)."""
    params = {"symbols": [s for s, _ in series], "resolutions": [r for _, r in series]}
    async with res.db.read.connect() as conn:
        rows = (await conn.execute(_LANDED, params)).all()
    return {
        (sym, resolution): None
        if opened is None
        else opened + timedelta(seconds=STEP_S[resolution])
        for sym, resolution, opened in rows
    }


async def _record_unrun(
    res: Resources,
    model_id: uuid.UUID,
    version_id: uuid.UUID,
    resolution: str,
    plan: SlotPlan,
    now: datetime,
) -> None:
    deadline = res.settings.data_deadline_s
    slots: list[tuple[datetime, str, str]] = [(s, "missed", MISSED_DETAIL) for s in plan.missed]
    for slot, symbols in plan.data_missing.items():
        detail = DATA_MISSING_DETAIL.format(
            resolution=resolution, symbols=", ".join(symbols), deadline=deadline
        )
        slots.append((slot, "data_missing", detail))
    slots.sort()
    if plan.unrun_total > len(slots):
        # Only the most recent MAX_MISSED become rows; the oldest of them says how many more.
        as_of, outcome, detail = slots[0]
        note = (
            f"; {plan.unrun_total - len(slots)} earlier slots were not run and are not recorded "
            f"(at most {MAX_MISSED} at once)"
        )
        slots[0] = (as_of, outcome, detail + note)
    ids = [uuid.uuid4() for _ in slots]
    params = {
        "ids": ids, "as_ofs": [s[0] for s in slots], "outcomes": [s[1] for s in slots],
        "details": [s[2] for s in slots], "model_id": model_id, "version_id": version_id,
        "now": now,
    }  # fmt: skip
    async with res.db.session.begin() as session:
        inserted = set(await session.scalars(_INSERT_MISSED, params))
        # Each unrun slot is a ledger entry, in slot order, appended in this transaction.
        await chain.append(session, model_id, [i for i in ids if i in inserted], now)
    log.warning(
        "slots recorded unrun",
        version_id=str(version_id),
        missed=len(plan.missed),
        data_missing=len(plan.data_missing),
        total=plan.unrun_total,
    )
    metrics.SLOTS.labels("missed").inc(len(plan.missed))
    metrics.SLOTS.labels("data_missing").inc(len(plan.data_missing))


# A live run whose database or Redis went away is tried again this many times in all (arq's
# max_tries), after 1, 2, 4, 8 and 16 s: half a minute covers a store's restart, and the
# slot's bars are read as of the slot, so a run a few seconds late forecasts the same.
RUN_TRIES = 6


async def run_version(ctx: dict[str, Any], version_id: str, as_of: str) -> str:
    """Runs a live version at one slot and records it (once). Records nothing when the version
    is no longer its model's live version, is not built, or the slot has not come yet. When a
    store is out meanwhile, the job is tried again later (arq's Retry): a slot whose job just
    failed would otherwise stay queued in the scheduler's eyes and never be recorded."""
    try:
        return await _run_version(ctx, version_id, as_of)
    except Exception as error:
        if outage(error) is None:
            raise
        tried: int = ctx.get("job_try", 1)
        log.warning(
            "store unavailable during a live run: tried again later",
            version_id=version_id, as_of=as_of, job_try=tried, error=repr(error),
        )  # fmt: skip
        raise Retry(defer=2 ** (tried - 1)) from error


async def _run_version(ctx: dict[str, Any], version_id: str, as_of: str) -> str:
    res: Resources = ctx["resources"]
    slot = datetime.fromisoformat(as_of)
    if slot > res.clock():
        log.warning("slot not yet due", version_id=version_id, as_of=as_of)
        return "not_due"
    async with res.db.read_session() as session:
        version = await session.get(Version, uuid.UUID(version_id))
        model = await session.get(Model, version.model_id) if version else None
    if version is None or model is None or model.live_version != version.number:
        log.info("version no longer live: not run", version_id=version_id, as_of=as_of)
        return "not_live"
    settings = res.settings
    try:
        record = await run_on_platform(
            res.db, res.store, settings, model, version, slot, kind="live", clock=res.clock
        )
    except NotRunnable as error:
        log.warning("version not runnable", version_id=version_id, as_of=as_of, reason=str(error))
        return "not_runnable"
    return record.outcome


class BarsListener:
    """Runs a scheduler cycle whenever bars are stored: LISTEN on `BARS_CHANNEL`, which the
    ingest path notifies when its transaction commits. One cycle at a time; notices that
    arrive during a cycle make exactly one more. If the connection is lost, the minute cron
    still runs every slot (at most a minute late) and the listener reconnects on the next
    cycle of the cron (`ensure_listening`)."""

    def __init__(
        self, ctx: dict[str, Any], on_cycle: Callable[[dict[str, int]], None] | None = None
    ) -> None:
        self._ctx = ctx
        self._on_cycle = on_cycle
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None

    async def start(self) -> None:
        res: Resources = self._ctx["resources"]
        assert res.settings.database_url
        url = make_url(res.settings.database_url).set(drivername="postgresql")
        self._connection = await asyncpg.connect(url.render_as_string(hide_password=False))
        await self._connection.add_listener(BARS_CHANNEL, self._notified)
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="foretell-bars-listener")

    async def ensure_listening(self) -> None:
        if self._connection is None or self._connection.is_closed():
            # Bars stored while nobody listened were announced to no one: the cron's cycle,
            # which called this, runs right after and finds their slots.
            await self.start()

    def _notified(self, _connection: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                counts = await schedule_runs(self._ctx)
            except Exception:  # logged; the next notice or the cron tries again
                log.exception("scheduler cycle after new bars failed")
                continue
            if self._on_cycle is not None:
                self._on_cycle(counts)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
