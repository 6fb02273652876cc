"""The scheduler: an every-minute cron that runs each live version at its latest closed slot.

`schedule_runs` finds, for each model's live version, the latest closed boundary of its
resolution not yet run since the model went live (`models.live_since`, see
`foretell.runs.due_slots`), records the slots missed while the platform was down as runs with
outcome 'missed' (kind 'live', so they can never be run late), and enqueues `run_version` with
job id `run:{version}:{as_of}`: arq never queues it twice. Time a model spent offline is
neither run nor missed.
`run_version` re-checks that the version is still live and the slot has come, then calls
`execute_run`, which records the run and its forecasts exactly once whatever arq redelivers.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, text

from foretell import metrics
from foretell.build import BuildState
from foretell.db.models import Model, Run, Version
from foretell.ledger import chain
from foretell.logs import get_logger
from foretell.runs import MAX_MISSED, NotRunnable, due_slots, missed_total, run_on_platform
from foretell.runtime.resources import Resources
from foretell.settings import Settings

log = get_logger("foretell.scheduler")

MISSED_DETAIL = "missed: the platform was not running when this slot came due"
# How long the last enqueued slot of a version is remembered (it only has to outlive the
# queue): a slot queued but not yet recorded must not be taken for a missed one.
_LAST_TTL_S = 7 * 86400

# One statement for every missed slot of a version; RETURNING names the rows it inserted
# (a slot recorded meanwhile is skipped), which are the ones the ledger gets.
_INSERT_MISSED = text("""
INSERT INTO runs (id, model_id, version_id, as_of, kind, outcome, duration_s, detail, log,
                  created_at)
SELECT m.id, :model_id, :version_id, m.as_of, 'live', 'missed', 0, m.detail, '', :now
FROM unnest(CAST(:ids AS uuid[]), CAST(:as_ofs AS timestamptz[]), CAST(:details AS text[]))
     AS m(id, as_of, detail)
ON CONFLICT (version_id, as_of, kind) DO NOTHING
RETURNING id
""")


def run_job_id(version_id: uuid.UUID | str, as_of: datetime) -> str:
    return f"run:{version_id}:{as_of.isoformat()}"


def _last_key(version_id: uuid.UUID) -> str:
    return f"foretell:sched-last:{version_id}"


def run_job_timeout_s(settings: Settings) -> int:
    """Longer than the sandbox's own wall clock, so the jail's limit fires first and the run is
    recorded as a timeout; past it, arq cancels the job, and cancelling kills the jail."""
    return settings.run_wall_s + settings.job_grace_s


async def schedule_runs(ctx: dict[str, Any]) -> dict[str, int]:
    """One scheduler cycle; returns how many runs it enqueued and missed slots it recorded."""
    res: Resources = ctx["resources"]
    now = res.clock()
    last_run = (
        select(Run.version_id, func.max(Run.as_of).label("last"))
        .where(Run.kind == "live")
        .group_by(Run.version_id)
        .subquery()
    )
    query = (
        select(Model.id, Model.resolution, Version.id, Model.live_since, last_run.c.last)
        .join(Version, and_(Version.model_id == Model.id, Version.number == Model.live_version))
        .outerjoin(last_run, last_run.c.version_id == Version.id)
        .where(Model.live_version.is_not(None), Version.build_state == BuildState.READY)
    )
    async with res.db.read.connect() as conn:
        rows = (await conn.execute(query)).all()
    if not rows:
        return {"enqueued": 0, "missed": 0}
    queued = await res.redis.mget([_last_key(row[2]) for row in rows])
    enqueued = missed_count = 0
    for (model_id, resolution, version_id, live_since, last_db), raw in zip(
        rows, queued, strict=True
    ):
        if live_since is None:
            continue
        last = last_db
        if raw is not None:
            last_queued = datetime.fromisoformat(raw.decode())
            last = last_queued if last is None else max(last, last_queued)
        due, missed = due_slots(resolution, last, now, live_since)
        if due is None:
            continue
        if missed:
            total = missed_total(resolution, last, due, live_since)
            missed_count += await _record_missed(res, model_id, version_id, missed, total, now)
        job = await res.redis.enqueue_job(
            "run_version",
            str(version_id),
            due.isoformat(),
            _job_id=run_job_id(version_id, due),
            _queue_name=res.settings.queue_name,
        )
        await res.redis.set(_last_key(version_id), due.isoformat(), ex=_LAST_TTL_S)
        enqueued += job is not None
    if enqueued or missed_count:
        log.info("scheduled", enqueued=enqueued, missed=missed_count)
    return {"enqueued": enqueued, "missed": missed_count}


async def _record_missed(
    res: Resources,
    model_id: uuid.UUID,
    version_id: uuid.UUID,
    missed: list[datetime],
    total: int,
    now: datetime,
) -> int:
    ids = [uuid.uuid4() for _ in missed]
    details = [MISSED_DETAIL] * len(missed)
    if total > len(missed):
        # Only the most recent MAX_MISSED become rows; the oldest of them says how many more.
        details[0] = (
            f"{MISSED_DETAIL}; {total - len(missed)} earlier missed slots are not recorded "
            f"(at most {MAX_MISSED} at once)"
        )
    params = {
        "ids": ids, "as_ofs": missed, "details": details, "model_id": model_id,
        "version_id": version_id, "now": now,
    }  # fmt: skip
    async with res.db.session.begin() as session:
        inserted = set(await session.scalars(_INSERT_MISSED, params))
        # Each missed slot is a ledger entry, in slot order, appended in this transaction.
        await chain.append(session, model_id, [i for i in ids if i in inserted], now)
    log.warning("missed slots recorded", version_id=str(version_id), count=len(missed), total=total)
    metrics.SLOTS.labels("missed").inc(len(missed))
    return len(missed)


async def run_version(ctx: dict[str, Any], version_id: str, as_of: str) -> str:
    """Runs a live version at one slot and records it (once). Records nothing when the version
    is no longer its model's live version, is not built, or the slot has not come yet."""
    res: Resources = ctx["resources"]
    slot = datetime.fromisoformat(as_of)
    if slot > res.clock():
        log.warning("slot not yet due", version_id=version_id, as_of=as_of)
        return "not_due"
    async with res.db.session() as session:
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
