"""The build job: turns an uploaded version into an image, once, whatever arq redelivers."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from sqlalchemy import select

from foretell import metrics
from foretell.build import BuildFailed, BuildLog, NativeBuilder
from foretell.db import Version
from foretell.logs import get_logger
from foretell.runtime.resources import Resources
from foretell.services.registry._store import manifest_from_json
from foretell.settings import Settings
from foretell.store import ArtifactCorrupt

log = get_logger("foretell.build")


def build_job_id(version_id: uuid.UUID, attempt: int) -> str:
    return f"build:{version_id}:{attempt}"


async def enqueue_build(res: Resources, version_id: uuid.UUID) -> None:
    # Each upload that (re)queues a build is a new attempt: arq keeps a finished job's id for
    # an hour, and a retry of a failed build must not be swallowed as a duplicate.
    attempt = await res.redis.incr(f"foretell:build-attempt:{version_id}")
    await res.redis.enqueue_job(
        "build_version",
        str(version_id),
        _job_id=build_job_id(version_id, attempt),
        _queue_name=res.settings.queue_name,
    )


def build_job_timeout_s(settings: Settings) -> int:
    """Longer than the build's own timeout, which fails the build with its reason first."""
    return settings.build_timeout_s + settings.job_grace_s


async def build_version(ctx: dict[str, Any], version_id: str) -> str:
    """Builds a queued version; returns its final state. Idempotent: a version that is
    already built, or not queued, is left alone."""
    res: Resources = ctx["resources"]
    vid = uuid.UUID(version_id)
    # One build per version at a time, whatever the queue delivers twice. The lock outlives a
    # crashed build only until the job timeout, after which arq's retry may take over.
    lock = f"foretell:build-lock:{version_id}"
    if not await res.redis.set(lock, b"1", nx=True, ex=build_job_timeout_s(res.settings)):
        return "busy"
    started = time.monotonic()
    try:
        state = await _build(res, vid)
    finally:
        await res.redis.delete(lock)
    if state in ("ready", "failed"):
        metrics.BUILDS.labels(state).inc()
        metrics.BUILD_SECONDS.labels(state).observe(time.monotonic() - started)
    return state


async def _build(res: Resources, vid: uuid.UUID) -> str:
    version_id = str(vid)
    async with res.db.session.begin() as session:
        version = await session.scalar(select(Version).where(Version.id == vid).with_for_update())
        if version is None or version.build_state not in ("queued", "building"):
            return version.build_state if version else "missing"
        version.build_state = "building"
        digest, manifest = version.digest, manifest_from_json(version.manifest)
    settings = res.settings
    # Imported here: foretell.runs reads bars through the datafeed service, which imports this.
    from foretell.runs import sdk_dir

    builder = NativeBuilder(
        res.store,
        pip_index_url=settings.pip_index_url,
        wheelhouse=settings.wheelhouse,
        timeout_s=settings.build_timeout_s,
        sdk=sdk_dir(settings.data_dir),
    )
    build_log = BuildLog(res.redis, version_id)
    await build_log.start()
    image_digest, reason = None, ""
    try:
        image_digest = await builder.build(res.store.read_bundle(digest), manifest, build_log.write)
    except (BuildFailed, ArtifactCorrupt) as error:
        reason = str(error)
    except asyncio.CancelledError:
        reason = f"the build took longer than {settings.build_timeout_s} s"
        raise
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        log.exception("build crashed", version_id=version_id, error_id=error_id)
        reason = f"internal error while building; reference {error_id}"
    finally:
        await build_log.write(f"build {'ready' if image_digest else 'failed: ' + reason}")
        await _finish(res, vid, image_digest, reason, build_log.text())
        await build_log.close()
    return "ready" if image_digest else "failed"


async def _finish(
    res: Resources, vid: uuid.UUID, image_digest: str | None, reason: str, text: str
) -> None:
    async with res.db.session.begin() as session:
        version = await session.get(Version, vid, with_for_update=True)
        assert version is not None
        version.build_state = "ready" if image_digest else "failed"
        version.image_digest = image_digest
        version.failure_reason = reason
        version.build_log = text
        version.build_finished_at = res.clock()
