"""Dry runs and simulated replays as jobs in their own lanes (foretell.runtime.lanes).

API processes never start sandboxes: DryRun takes the provider's slot in the dry-run cap,
enqueues `dry_run` in the dry lane and waits for the run it recorded. A simulated replay is one
`replay_run` job per slot in the replay lane; a replay runs versions at past `as_of`s, several
at once, each with its own run-scoped server."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from foretell.clock import Clock
from foretell.db.models import Model, Version
from foretell.errors import FailedPrecondition, Unavailable
from foretell.logs import get_logger
from foretell.runs._execute import NotRunnable, RunKind, RunRecord
from foretell.runs._platform import run_job_timeout_s, run_on_platform
from foretell.runtime.lanes import Hold, Lane, dry_run_cap, queue_name
from foretell.runtime.resources import Resources

log = get_logger("foretell.runs")

# How often the waiting RPC looks for the job's result (arq polls; its default is 0.5 s).
_POLL_S = 0.02


def _fixed(moment: datetime) -> Clock:
    def clock() -> datetime:
        return moment

    return clock


async def _run(
    res: Resources, version_id: str, as_of: str, kind: RunKind, clock: Clock
) -> RunRecord | str:
    async with res.db.session() as session:
        version = await session.get(Version, uuid.UUID(version_id))
        model = await session.get(Model, version.model_id) if version else None
    if version is None or model is None:
        return "the version no longer exists"
    try:
        return await run_on_platform(
            res.db,
            res.store,
            res.settings,
            model,
            version,
            datetime.fromisoformat(as_of),
            kind=kind,
            clock=clock,
        )
    except NotRunnable as error:
        return str(error)


async def dry_run(
    ctx: dict[str, Any], version_id: str, as_of: str, hold_key: str = "", hold_member: str = ""
) -> dict[str, str]:
    """The dry-run job: {"run_id", "recorded"} of the dry run (recorded is "" when an earlier
    execution had recorded it), or {"not_runnable": why}.
    Releases the provider's hold on the dry-run cap when done."""
    res: Resources = ctx["resources"]
    try:
        record = await _run(res, version_id, as_of, "dry", res.clock)
    finally:
        if hold_key:
            await Hold(hold_key, hold_member).release(res.redis)
    if isinstance(record, str):
        return {"not_runnable": record}
    return {"run_id": str(record.run_id), "recorded": "yes" if record.recorded else ""}


async def replay_run(ctx: dict[str, Any], version_id: str, as_of: str) -> str:
    """One slot of a simulated replay, recorded as made when its slot came due."""
    res: Resources = ctx["resources"]
    record = await _run(res, version_id, as_of, "simulated", _fixed(datetime.fromisoformat(as_of)))
    return record if isinstance(record, str) else record.outcome


def replay_job_id(version_id: uuid.UUID | str, as_of: datetime) -> str:
    return f"replay:{version_id}:{as_of.isoformat()}"


async def enqueue_replay(res: Resources, version_id: uuid.UUID, slots: list[datetime]) -> int:
    """Queues a simulated run of `version_id` at each slot; returns how many were new."""
    queued = 0
    for slot in slots:
        job = await res.redis.enqueue_job(
            "replay_run",
            str(version_id),
            slot.isoformat(),
            _job_id=replay_job_id(version_id, slot),
            _queue_name=queue_name(res.settings, Lane.REPLAY),
        )
        queued += job is not None
    return queued


async def request_dry_run(
    res: Resources, provider_id: uuid.UUID, version_id: uuid.UUID, as_of: datetime
) -> tuple[uuid.UUID, bool]:
    """Runs a dry run on the dry lane's workers and returns the recorded run's id and whether
    this request recorded it (false: an earlier one had). Raises
    ResourceExhausted past the provider's cap, FailedPrecondition when the version cannot run,
    Unavailable when the platform could not run it or it took longer than a run may."""
    settings = res.settings
    hold = await dry_run_cap(settings).take(res.redis, settings, provider_id)
    try:
        job = await res.redis.enqueue_job(
            "dry_run",
            str(version_id),
            as_of.isoformat(),
            hold.key,
            hold.member,
            _job_id=f"dry:{version_id}:{uuid.uuid4().hex}",
            _queue_name=queue_name(settings, Lane.DRY),
        )
    except BaseException:
        await hold.release(res.redis)
        raise
    assert job is not None  # a fresh job id is never a duplicate
    try:
        # Long enough for a queue of other providers' dry runs ahead of it, each capped.
        outcome = await job.result(timeout=2 * run_job_timeout_s(settings), poll_delay=_POLL_S)
    except TimeoutError:
        raise Unavailable(
            "the dry run has not finished yet: ask again for the same as_of later"
        ) from None
    except Exception:
        log.exception("dry run job failed", version_id=str(version_id), as_of=as_of.isoformat())
        raise Unavailable("the platform could not run the dry run: try again") from None
    if "not_runnable" in outcome:
        raise FailedPrecondition(outcome["not_runnable"])
    return uuid.UUID(outcome["run_id"]), bool(outcome["recorded"])
