"""The build job: turns an uploaded version into an image, once, whatever arq redelivers.

`build_version` is the arq job (with a lock and a live log in Redis); `build` is the work it
does, which `foretell demo` also calls directly, with no worker and a log kept in memory."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select

from foretell import metrics
from foretell.build._log import BuildLog
from foretell.build._native import BuildFailed, NativeBuilder
from foretell.build.states import TAKEABLE, BuildState
from foretell.bundle import Manifest
from foretell.clock import Clock
from foretell.db import Database, Version
from foretell.logs import get_logger
from foretell.runtime.lanes import Hold, Lane, queue_name
from foretell.runtime.resources import Resources
from foretell.sandbox import sdk_dir
from foretell.settings import Settings
from foretell.store import ArtifactCorrupt, ArtifactStore

log = get_logger("foretell.build")


class LogSink(Protocol):
    """Where a build writes its log: `BuildLog` (Redis, followed live) or `MemoryLog`."""

    async def start(self) -> None: ...

    async def write(self, line: str) -> None: ...

    async def close(self) -> None: ...

    def text(self) -> str: ...


@dataclass
class MemoryLog:
    """A build log kept in memory, for builds that nobody follows live."""

    lines: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.lines.clear()

    async def write(self, line: str) -> None:
        self.lines.append(line.rstrip("\n"))

    async def close(self) -> None:
        return None

    def text(self) -> str:
        return "\n".join(self.lines)


def build_job_id(version_id: uuid.UUID, attempt: int) -> str:
    return f"build:{version_id}:{attempt}"


async def enqueue_build(res: Resources, version_id: uuid.UUID, hold: Hold | None = None) -> None:
    """Queues the version's build in the build lane; the job releases `hold` (the provider's
    slot in the build cap, foretell.runtime.lanes) when it is done."""
    # Each upload that (re)queues a build is a new attempt: arq keeps a finished job's id for
    # an hour, and a retry of a failed build must not be swallowed as a duplicate.
    attempt = await res.redis.incr(f"foretell:build-attempt:{version_id}")
    job = await res.redis.enqueue_job(
        "build_version",
        str(version_id),
        *((hold.key, hold.member) if hold else ()),
        _job_id=build_job_id(version_id, attempt),
        _queue_name=queue_name(res.settings, Lane.BUILD),
    )
    if job is None and hold is not None:
        await hold.release(res.redis)


def build_job_timeout_s(settings: Settings) -> int:
    """Longer than the build's own timeout, which fails the build with its reason first."""
    return settings.build_timeout_s + settings.job_grace_s


async def build_version(
    ctx: dict[str, Any], version_id: str, hold_key: str = "", hold_member: str = ""
) -> str:
    """Builds a queued version; returns its final state. Idempotent: a version that is
    already built, or not queued, is left alone. Releases the provider's hold on the build
    cap (`hold_key`, `hold_member`) when done, whatever the outcome."""
    res: Resources = ctx["resources"]
    vid = uuid.UUID(version_id)
    # One build per version at a time, whatever the queue delivers twice. The lock outlives a
    # crashed build only until the job timeout, after which arq's retry may take over.
    lock = f"foretell:build-lock:{version_id}"
    if not await res.redis.set(lock, b"1", nx=True, ex=build_job_timeout_s(res.settings)):
        return "busy"
    started = time.monotonic()
    try:
        state = await build(
            res.db, res.store, res.settings, res.clock, vid, BuildLog(res.redis, version_id)
        )
    finally:
        await res.redis.delete(lock)
        if hold_key:
            await Hold(hold_key, hold_member).release(res.redis)
    if state in (BuildState.READY, BuildState.FAILED):
        metrics.BUILDS.labels(state).inc()
        metrics.BUILD_SECONDS.labels(state).observe(time.monotonic() - started)
    return state


async def build(
    db: Database,
    store: ArtifactStore,
    settings: Settings,
    clock: Clock,
    vid: uuid.UUID,
    build_log: LogSink,
    *,
    takeable: Collection[BuildState] = TAKEABLE,
) -> str:
    """Takes the version (from a `takeable` state to building, under a row lock), builds its
    image with the native builder and records the outcome and log. Returns the final state,
    or the state it found when the version was not to be taken."""
    async with db.session.begin() as session:
        version = await session.scalar(select(Version).where(Version.id == vid).with_for_update())
        if version is None or version.build_state not in takeable:
            return version.build_state if version else "missing"
        version.build_state = BuildState.BUILDING
        digest, manifest = version.digest, Manifest.from_json(version.manifest)
    await build_log.start()
    builder = NativeBuilder(
        store,
        pip_index_url=settings.pip_index_url,
        wheelhouse=settings.wheelhouse,
        timeout_s=settings.build_timeout_s,
        sdk=sdk_dir(settings.data_dir),
    )
    image_digest, reason = None, ""
    try:
        image_digest = await builder.build(store.read_bundle(digest), manifest, build_log.write)
    except (BuildFailed, ArtifactCorrupt) as error:
        reason = str(error)
    except asyncio.CancelledError:
        reason = f"the build took longer than {settings.build_timeout_s} s"
        raise
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        log.exception("build crashed", version_id=str(vid), error_id=error_id)
        reason = f"internal error while building; reference {error_id}"
    finally:
        await build_log.write(f"build {'ready' if image_digest else 'failed: ' + reason}")
        await _finish(db, clock, vid, image_digest, reason, build_log.text())
        await build_log.close()
    return BuildState.READY if image_digest else BuildState.FAILED


async def _finish(
    db: Database, clock: Clock, vid: uuid.UUID, image_digest: str | None, reason: str, text: str
) -> None:
    async with db.session.begin() as session:
        version = await session.get(Version, vid, with_for_update=True)
        assert version is not None
        version.build_state = BuildState.READY if image_digest else BuildState.FAILED
        version.image_digest = image_digest
        version.failure_reason = reason
        version.build_log = text
        version.build_finished_at = clock()
