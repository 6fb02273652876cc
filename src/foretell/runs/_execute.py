"""One run of a version, from image check to recorded forecasts."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select, text

from foretell import metrics
from foretell.build import BuildState
from foretell.clock import utc_now
from foretell.db import Database
from foretell.db.models import Model, Run, Version
from foretell.db.notify import RunRecorded, announce_run
from foretell.ledger import chain
from foretell.logs import get_logger
from foretell.marketdata import model_calendar
from foretell.runs._scope import RunScope
from foretell.runs._server import BarSource, DatabaseBars, RunServer
from foretell.runs._validate import AcceptedForecast
from foretell.sandbox import (
    JailDidNotRun,
    Outcome,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    TemplateFailed,
    TemplatePool,
    how_nsjail_ended,
    prepare_run_dir,
    run_in_sandbox,
)
from foretell.store import ArtifactCorrupt, ArtifactStore

_log = get_logger("foretell.runs")

RunKind = Literal["live", "dry", "simulated"]
# Characters of captured output kept with a run (the sandbox already caps each stream).
LOG_CAP = 64 * 1024


class NotRunnable(Exception):
    """The version cannot be run (not built, or its image is missing or modified)."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: uuid.UUID
    outcome: str
    detail: str
    log: str
    duration_s: float
    # The forecasts recorded with this run (none unless the outcome is ok).
    forecasts: tuple[AcceptedForecast, ...]
    # False when an earlier execution of the same (version, as_of, kind) had recorded it:
    # nothing was run or written this time (or this execution's results were dropped).
    recorded: bool


def _cap(log: str) -> str:
    return log if len(log) <= LOG_CAP else "[… earlier output dropped]\n" + log[-LOG_CAP:]


def _judge(result: SandboxResult, server: RunServer) -> tuple[str, str, list[AcceptedForecast]]:
    """The recorded outcome, its detail and the forecasts to record. A refused submission makes
    the run invalid_output whatever the model did after (the runner exits non-zero then); an
    empty list is a legitimate abstention (ok, nothing recorded). Forecasts are recorded only
    from runs that ended ok: half a run's output is not a forecast the provider stands by."""
    rejections = server.forecasts.rejections
    if rejections and result.outcome in (Outcome.OK, Outcome.MODEL_ERROR):
        return Outcome.INVALID_OUTPUT.value, "forecasts refused: " + "; ".join(rejections), []
    if result.outcome is not Outcome.OK:
        return result.outcome.value, result.detail, []
    return Outcome.OK.value, result.detail, list(server.forecasts.accepted)


async def _existing(db: Database, version_id: uuid.UUID, as_of: datetime, kind: str) -> Run | None:
    async with db.read_session() as session:
        found: Run | None = await session.scalar(
            select(Run).where(Run.version_id == version_id, Run.as_of == as_of, Run.kind == kind)
        )
        return found


async def _record(existing: Run) -> RunRecord:
    return RunRecord(existing.id, existing.outcome, existing.detail, existing.log,
                     existing.duration_s, (), recorded=False)  # fmt: skip


_INSERT_RUN = text("""
INSERT INTO runs (id, model_id, version_id, as_of, kind, outcome, duration_s, detail, log,
                  created_at)
VALUES (:id, :model_id, :version_id, :as_of, :kind, :outcome, :duration_s, :detail, :log, :now)
ON CONFLICT (version_id, as_of, kind) DO NOTHING
RETURNING id
""")
_INSERT_FORECAST = text("""
INSERT INTO forecasts (run_id, model_id, version_id, kind, symbol, as_of, target_time,
                       direction, predicted_return, probability, recorded_at)
VALUES (:run_id, :model_id, :version_id, :kind, :symbol, :as_of, :target_time, :direction,
        :predicted_return, :probability, :now)
ON CONFLICT (version_id, as_of, symbol, target_time, kind) DO NOTHING
""")


_INTERPRETER = ["-B", "-m", "foretell.sdk.run"]


def _argv(scope: RunScope, manifest: Mapping[str, Any]) -> list[str]:
    """The runner's own arguments (a cold start puts `_INTERPRETER` before them)."""
    return [
        "--as-of", scope.as_of.isoformat(),
        "--symbols", ",".join(scope.symbols),
        "--resolution", scope.resolution,
        "--horizon", str(scope.horizon),
        "--target-time", scope.target_time.isoformat(),
        "--lookback", str(int(manifest.get("lookback", 500))),
        "--entrypoint", str(manifest["entrypoint"]),
    ]  # fmt: skip


def verified_image(store: ArtifactStore, image_digest: str) -> tuple[Path, str]:
    """The image's directory, checked against its digest (`ArtifactStore.verified_image`), and
    the digest of its site-packages (its dependency layer, which warm templates share), from
    the same hash: the files are not read again for it."""
    image = store.verified_image(image_digest)
    return image, store.verified_part(image_digest, "site-packages")


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """Where a run may start warm: the worker's templates, the image's digest and its
    site-packages' digest."""

    pool: TemplatePool
    image_digest: str
    site_digest: str


async def _warm(
    warm: WarmStart,
    image: Path,
    scope: RunScope,
    manifest: Mapping[str, Any],
    bars: BarSource,
    limits: SandboxLimits,
) -> tuple[SandboxResult, RunServer] | None:
    """The run forked from a template of its layer, or None when it must start cold: no
    template could be had, or the template failed before the run ended (what its child did,
    and the server it talked to, are dropped)."""
    try:
        async with warm.pool.acquire(image, warm.site_digest, limits) as template:
            if template is None:
                return None
            socket_path = template.socket_path
            socket_path.unlink(missing_ok=True)
            server = RunServer(bars, scope, socket_path)
            await server.start()
            try:
                result = await template.run(
                    image / "app", warm.image_digest, _argv(scope, manifest), limits
                )
            finally:
                await server.stop()
                socket_path.unlink(missing_ok=True)
            return result, server
    except TemplateFailed:
        return None


async def _sandboxed(
    image: Path,
    scope: RunScope,
    manifest: Mapping[str, Any],
    bars: BarSource,
    run_root: Path,
    sdk: Path,
    limits: SandboxLimits | None,
    warm: WarmStart | None = None,
) -> tuple[SandboxResult, RunServer]:
    if warm is not None:
        started = await _warm(warm, image, scope, manifest, bars, limits or SandboxLimits())
        if started is not None:
            return started
    run_dir = run_root / uuid.uuid4().hex[:12]
    server = RunServer(bars, scope, prepare_run_dir(run_dir))
    try:
        await server.start()
        try:
            result = await run_in_sandbox(
                image,
                run_dir,
                [*_INTERPRETER, *_argv(scope, manifest)],
                limits or SandboxLimits(),
                sdk_dir=sdk,
            )
        finally:
            await server.stop()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result, server


# The outcome of a run the platform failed to carry out (the jail never ran the model). It is
# recorded and chained like any run, shown to the provider with its reason, and never counted
# in the model's measures.
PLATFORM_ERROR = "platform_error"
# A jail that did not run the model is started again at once (nothing ran in it, so it is
# safe), well within the slot's window: this many attempts in all.
JAIL_ATTEMPTS = 3


async def _attempts(
    image: Path,
    scope: RunScope,
    manifest: Mapping[str, Any],
    bars: BarSource,
    run_root: Path,
    sdk: Path,
    limits: SandboxLimits | None,
    warm: WarmStart | None,
) -> tuple[SandboxResult, RunServer] | str:
    """The run, tried again when the jail did not run the model; after the last attempt, or
    when the sandbox itself is unusable, the reason the platform could not run it (for the
    provider: no host detail; operators get everything in the log)."""
    for attempt in range(1, JAIL_ATTEMPTS + 1):
        try:
            return await _sandboxed(image, scope, manifest, bars, run_root, sdk, limits, warm)
        except JailDidNotRun as error:
            _log.warning(
                "the jail did not run the model",
                attempt=attempt,
                reason=error.reason,
                nsjail_exit_status=error.exit_status,
                nsjail_log=error.log,
            )
            status = error.exit_status
        except SandboxError as error:
            _log.error("the sandbox cannot run models", error=str(error))
            return "the platform's sandbox is unavailable; the model was not run"
    ended = how_nsjail_ended(status)
    return (
        f"the platform could not start the model's sandbox ({ended} before the model ran; "
        f"tried {JAIL_ATTEMPTS} times). This is the platform's fault: the run does not count "
        "in the model's measures"
    )


@dataclasses.dataclass(frozen=True)
class LocalRun:
    outcome: str
    detail: str
    log: str
    duration_s: float
    forecasts: tuple[AcceptedForecast, ...]


async def run_local(
    image: Path,
    scope: RunScope,
    manifest: Mapping[str, Any],
    bars: BarSource,
    *,
    run_root: Path,
    sdk: Path,
    limits: SandboxLimits | None = None,
) -> LocalRun:
    """`foretell run --local`: an image built on this machine, run in the same sandbox with the
    same run-scoped server and the same judgement as `execute_run`, on `bars` instead of the
    platform's database, recording nothing."""
    result, server = await _sandboxed(image, scope, manifest, bars, run_root, sdk, limits)
    outcome, detail, forecasts = _judge(result, server)
    return LocalRun(outcome, detail, _cap(result.stdout + result.stderr), result.duration_s,
                    tuple(forecasts))  # fmt: skip


async def execute_run(
    db: Database,
    store: ArtifactStore,
    model: Model,
    version: Version,
    as_of: datetime,
    *,
    run_root: Path,
    sdk: Path,
    kind: RunKind = "live",
    limits: SandboxLimits | None = None,
    clock: Callable[[], datetime] = utc_now,
    templates: TemplatePool | None = None,
) -> RunRecord:
    """Runs `version` of `model` at `as_of` in the sandbox, serving the run-scoped DataFeed and
    SubmitForecasts on its socket, and records the run and its forecasts in one transaction,
    which also announces the run on `foretell.db.notify.FORECASTS_CHANNEL` (delivered when it
    commits; StreamForecasts listens).
    Idempotent per (version, as_of, kind): a repeat returns the recorded run with
    `recorded=False`. `sdk` is the directory from `sdk_dir`; `run_root` holds the per-run
    directories (keep it short: the socket path is limited to ~107 bytes). Raises NotRunnable.
    A run the platform itself failed to carry out (after retries) is recorded as
    PLATFORM_ERROR, never raised. With `templates`, the run starts warm when one of them can
    serve it (foretell.sandbox.TemplatePool), cold otherwise."""
    if (found := await _existing(db, version.id, as_of, kind)) is not None:
        return await _record(found)
    if version.model_id != model.id:
        raise NotRunnable("the version belongs to another model")
    if version.build_state != BuildState.READY or not version.image_digest:
        raise NotRunnable(f"version {version.number} is not built ({version.build_state})")
    try:
        # Re-verified before every run: an image changed on disk must never run.
        # Off the event loop: walking a large image's tree takes a while, and other runs of
        # the worker go on meanwhile.
        image, site = await asyncio.to_thread(verified_image, store, version.image_digest)
    except (ArtifactCorrupt, OSError) as error:
        raise NotRunnable(str(error)) from None
    calendar = await model_calendar(db, list(model.symbols))
    try:
        scope = RunScope(tuple(model.symbols), model.resolution, model.horizon, as_of, calendar)
    except ValueError as error:
        raise NotRunnable(str(error)) from None
    warm = WarmStart(templates, version.image_digest, site) if templates is not None else None
    attempt = await _attempts(
        image, scope, version.manifest, DatabaseBars(db), run_root, sdk, limits, warm
    )
    forecasts: list[AcceptedForecast] = []
    if isinstance(attempt, str):
        outcome, detail, log, duration_s = PLATFORM_ERROR, attempt, "", 0.0
    else:
        result, server = attempt
        outcome, detail, forecasts = _judge(result, server)
        log, duration_s = _cap(result.stdout + result.stderr), result.duration_s
    run_id = uuid.uuid4()
    now = clock()
    async with db.session.begin() as session:
        inserted = await session.scalar(
            _INSERT_RUN,
            {
                "id": run_id, "model_id": model.id, "version_id": version.id, "as_of": as_of,
                "kind": kind, "outcome": outcome, "duration_s": duration_s,
                "detail": _cap(detail), "log": log, "now": now,
            },
        )  # fmt: skip
        if inserted is not None and forecasts:
            await session.execute(
                _INSERT_FORECAST,
                [
                    {
                        "run_id": run_id, "model_id": model.id, "version_id": version.id,
                        "kind": kind, "symbol": f.symbol, "as_of": as_of,
                        "target_time": f.target_time, "direction": f.direction,
                        "predicted_return": f.predicted_return, "probability": f.probability,
                        "now": now,
                    }
                    for f in forecasts
                ],
            )  # fmt: skip
        if inserted is not None and kind == "live":
            # The track record's hash chain grows in the same transaction as the run.
            await chain.append(session, model.id, [run_id], now)
        if inserted is not None:
            # NOTIFY is transactional: listeners hear of the run only once it is committed.
            await announce_run(session, RunRecorded(run_id, model.id, kind))
    if inserted is None:
        # Another execution recorded this slot while we ran: its record stands.
        found = await _existing(db, version.id, as_of, kind)
        assert found is not None
        return await _record(found)
    metrics.RUNS.labels(kind, outcome).inc()
    metrics.RUN_SECONDS.labels(kind).observe(duration_s)
    return RunRecord(run_id, outcome, detail, log, duration_s, tuple(forecasts), True)
