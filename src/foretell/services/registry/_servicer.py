from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpc import aio

from foretell import paging as _paging
from foretell import resolutions
from foretell.auth.policy import Role
from foretell.auth.principal import current_principal
from foretell.build import BuildState, enqueue_build, follow_build_log
from foretell.build.states import FINAL, TAKEABLE
from foretell.bundle import Limits, Manifest, read_bundle
from foretell.clock import timestamp as _ts
from foretell.db import Version
from foretell.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Violations,
)
from foretell.logs import get_logger
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runs.outcomes import OUTCOME_ENUM
from foretell.runtime.lanes import build_cap
from foretell.runtime.resources import Resources
from foretell.services.registry import _queries, _summaries, _validate
from foretell.services.registry._queries import ModelView, Upload
from foretell.symbols import SYMBOL

log = get_logger("foretell.registry")

if TYPE_CHECKING:
    # Generic only in the type stubs.
    Context = aio.ServicerContext[Any, Any]

_BUILD_STATES = {
    BuildState.QUEUED: pb.BUILD_STATE_QUEUED,
    BuildState.BUILDING: pb.BUILD_STATE_BUILDING,
    BuildState.READY: pb.BUILD_STATE_READY,
    BuildState.FAILED: pb.BUILD_STATE_FAILED,
}
_LOG_BATCH = 200
# A build can wait in its lane or run a silent step (a long pip install) for minutes; a message
# this often keeps the stream from looking idle to Envoy (stream_idle_timeout, 5 min) or any
# proxy in between, whose idle limit would otherwise cut a long build's log.
HEARTBEAT_S = 15.0


def model_pb(view: ModelView) -> pb.Model:
    model = view.model
    return pb.Model(
        name=model.name,
        title=model.title,
        description=model.description,
        symbols=model.symbols,
        resolution=resolutions.TO_ENUM[model.resolution],
        horizon=model.horizon,
        tags=model.tags,
        visibility=_validate.VISIBILITY_ENUM[model.visibility],
        owner_id=str(model.owner_id),
        owner_display_name=view.owner_display_name,
        live_version=model.live_version or 0,
        latest_version=view.latest_version,
        create_time=_ts(model.created_at),
        update_time=_ts(model.updated_at),
    )


def version_pb(model: ModelView, version: Version) -> pb.Version:
    m = Manifest.from_json(version.manifest)
    return pb.Version(
        model=model.model.name,
        number=version.number,
        digest=version.digest,
        bundle_size=version.bundle_size,
        manifest=pb.Manifest(
            entrypoint=m.entrypoint,
            symbols=m.symbols,
            resolution=resolutions.TO_ENUM[m.resolution],
            horizon=m.horizon,
            lookback=m.lookback,
            requirements=m.requirements,
        ),
        build_state=_BUILD_STATES[BuildState(version.build_state)],
        failure_reason=version.failure_reason,
        image_digest=version.image_digest or "",
        live=model.model.live_version == version.number,
        create_time=_ts(version.created_at),
        build_finish_time=_ts(version.build_finished_at),
        publish_time=_ts(version.published_at),
    )


def _check_manifest(view: ModelView, upload: Upload) -> None:
    """A version must forecast what its model promises."""
    model, manifest = view.model, upload.manifest
    v = Violations()
    if manifest.resolution != model.resolution:
        v.add("manifest.resolution", f"{manifest.resolution!r}, but model {model.name!r} "
              f"runs on {model.resolution!r}")  # fmt: skip
    if manifest.horizon != model.horizon:
        v.add("manifest.horizon", f"{manifest.horizon}, but model {model.name!r} forecasts "
              f"{model.horizon} bars ahead")  # fmt: skip
    extra = sorted(set(manifest.symbols) - set(model.symbols))
    if extra:
        v.add("manifest.symbols", f"{', '.join(extra)} not among the model's symbols "
              f"({', '.join(model.symbols)})")  # fmt: skip
    v.raise_if_any()


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, resources: Resources) -> None:
        self._res = resources

    async def CreateModel(
        self, request: pb.CreateModelRequest, context: Context
    ) -> pb.CreateModelResponse:
        fields = _validate.create_model(request.model)
        view = await _queries.create_model(
            self._res.db, current_principal(), fields, self._res.clock()
        )
        return pb.CreateModelResponse(model=model_pb(view))

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.GetModelResponse:
        name = _validate.require_name("name", request.name)
        view = await _queries.get_view(self._res.db, name, current_principal())
        return pb.GetModelResponse(model=model_pb(view))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        v = Violations()
        limit = _validate.page_size(v, request.page_size)
        after = self._res.page_tokens.open(v, "ListModels", request.page_token)
        if after is not None and not isinstance(after, str):
            _paging.reject_token(v)
        resolution = None
        if request.resolution:
            resolution = resolutions.BY_ENUM.get(request.resolution)
            if resolution is None:
                v.add("resolution", resolutions.ENUM_RULE)
        # Filters reach SQL: text PostgreSQL refuses (NUL) must be a 400, not a 500.
        if request.tag and not _validate.TAG.fullmatch(request.tag):
            v.add("tag", "a tag: 1 to 32 characters, a-z, 0-9 and '-'")
        if request.symbol and not SYMBOL.fullmatch(request.symbol):
            v.add("symbol", "a symbol: 1 to 32 characters, A-Z, 0-9, '.', '_', '-'")
        v.raise_if_any()
        views = await _queries.list_models(
            self._res.db,
            current_principal(),
            after=after if isinstance(after, str) else None,
            limit=limit + 1,
            symbol=request.symbol,
            tag=request.tag,
            resolution=resolution,
            only_mine=request.only_mine,
        )
        token = ""
        if len(views) > limit:
            token = self._res.page_tokens.seal("ListModels", views[limit - 1].model.name)
        return pb.ListModelsResponse(
            models=[model_pb(view) for view in views[:limit]], next_page_token=token
        )

    async def UpdateModel(
        self, request: pb.UpdateModelRequest, context: Context
    ) -> pb.UpdateModelResponse:
        name, changes = _validate.update_model(request)
        view = await _queries.update_model(
            self._res.db, current_principal(), name, changes, self._res.clock()
        )
        return pb.UpdateModelResponse(model=model_pb(view))

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: Context
    ) -> pb.DeleteModelResponse:
        name = _validate.require_name("name", request.name)
        await _queries.delete_model(self._res.db, current_principal(), name)
        return pb.DeleteModelResponse()

    async def UploadVersion(
        self, request_iterator: AsyncIterator[pb.UploadVersionRequest], context: Context
    ) -> pb.UploadVersionResponse:
        principal = current_principal()
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument(
                [FieldViolation("header", "the first message must be the header")]
            )
        header = first.header
        _validate.upload_header(header, self._res.settings.max_bundle_bytes)
        # Ownership first: nobody uploads megabytes into someone else's model.
        await _queries.model_for_upload(self._res.db, principal, header.model)
        store = self._res.store
        scratch = store.scratch(UPLOADS)
        try:
            path = await self._receive(request_iterator, header, scratch / "bundle.tar")
            limits = Limits(max_bundle_bytes=self._res.settings.max_bundle_bytes)
            contents = await asyncio.to_thread(read_bundle, path, limits)
            upload = Upload(header.model, contents.digest, contents.size, contents.manifest)
            view = await _queries.get_view(self._res.db, header.model, principal)
            _check_manifest(view, upload)
            await asyncio.to_thread(store.put_bundle, path, contents.digest)
            # The provider's slot in the build lane, taken before the version exists: past the
            # cap the upload is refused whole (RESOURCE_EXHAUSTED) and nothing is recorded. An
            # identical upload of a built version queues nothing and is answered anyway.
            try:
                hold = await build_cap(self._res.settings).take(
                    self._res.redis, self._res.settings, principal.user_id
                )
            except ResourceExhausted:
                if await _queries.needs_build(self._res.db, view.model.id, contents.digest):
                    raise
                hold = None
            try:
                version, created, queued = await _queries.add_version(
                    self._res.db, principal, upload, self._res.clock()
                )
                if queued:
                    # The build job releases the hold when it is done.
                    await enqueue_build(self._res, version.id, hold)
            except BaseException:
                if hold is not None:
                    await hold.release(self._res.redis)
                raise
            if hold is not None and not queued:
                await hold.release(self._res.redis)
        finally:
            # Whatever ended the upload (done, refused, the client gone, the server stopping):
            # synchronous, so a cancellation cannot skip it.
            shutil.rmtree(scratch, ignore_errors=True)
        view = await _queries.get_view(self._res.db, header.model, principal)
        return pb.UploadVersionResponse(version=version_pb(view, version), created=created)

    async def _receive(
        self,
        request_iterator: AsyncIterator[pb.UploadVersionRequest],
        header: pb.UploadHeader,
        path: Path,
    ) -> Path:
        digest, received = hashlib.sha256(), 0
        # Local disk writes of at most 1 MiB each: cheaper inline than through a thread.
        with open(path, "wb") as out:  # noqa: ASYNC230
            async for message in request_iterator:
                if not message.HasField("chunk"):
                    raise _validate.bundle_problem("only the first message may be a header")
                chunk = message.chunk
                if len(chunk) > _validate.MAX_CHUNK:
                    raise _validate.bundle_problem("chunks must be at most 1 MiB")
                received += len(chunk)
                if received > header.size:
                    raise _validate.bundle_problem(
                        f"more bytes than the {header.size} the header announced"
                    )
                digest.update(chunk)
                out.write(chunk)
        if received != header.size:
            raise _validate.bundle_problem(
                f"received {received} bytes, the header announced {header.size}"
            )
        if f"sha256:{digest.hexdigest()}" != header.digest:
            raise _validate.bundle_problem("the bytes received do not match the header's digest")
        return path

    async def GetVersion(
        self, request: pb.GetVersionRequest, context: Context
    ) -> pb.GetVersionResponse:
        name, number = _validate.version_ref(request.model, request.number)
        view, version = await _queries.get_version(self._res.db, current_principal(), name, number)
        return pb.GetVersionResponse(version=version_pb(view, version))

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: Context
    ) -> pb.ListVersionsResponse:
        v = Violations()
        name = _validate.model_name(v, "model", request.model)
        limit = _validate.page_size(v, request.page_size)
        before = self._res.page_tokens.open(v, f"ListVersions:{name}", request.page_token)
        if before is not None and not isinstance(before, int):
            _paging.reject_token(v)
        v.raise_if_any()
        view, versions = await _queries.list_versions(
            self._res.db,
            current_principal(),
            name,
            before=before if isinstance(before, int) else None,
            limit=limit + 1,
        )
        token = ""
        if len(versions) > limit:
            token = self._res.page_tokens.seal(f"ListVersions:{name}", versions[limit - 1].number)
        return pb.ListVersionsResponse(
            versions=[version_pb(view, version) for version in versions[:limit]],
            next_page_token=token,
        )

    async def StreamBuildLog(
        self, request: pb.StreamBuildLogRequest, context: Context
    ) -> AsyncIterator[pb.StreamBuildLogResponse]:
        name, number = _validate.version_ref(request.model, request.number)
        principal = current_principal()
        view, version = await _queries.get_version(self._res.db, principal, name, number)
        if view.model.owner_id != principal.user_id and principal.role != Role.ADMIN:
            # Build logs can hold a provider's paths and package names: owner only.
            raise NotFound(f"model {name!r} has no version {number} of yours")
        sent = 0
        if version.build_state in TAKEABLE:
            loop = asyncio.get_running_loop()
            quiet_since = loop.time()
            async for batch in follow_build_log(self._res.redis, str(version.id)):
                if batch is None:
                    _, version = await _queries.get_version(self._res.db, principal, name, number)
                    if version.build_state in FINAL:
                        break
                    if loop.time() - quiet_since >= HEARTBEAT_S:
                        quiet_since = loop.time()
                        yield pb.StreamBuildLogResponse(
                            build_state=_BUILD_STATES[BuildState(version.build_state)]
                        )
                    continue
                sent += len(batch)
                quiet_since = loop.time()
                yield pb.StreamBuildLogResponse(lines=batch, build_state=pb.BUILD_STATE_BUILDING)
            _, version = await _queries.get_version(self._res.db, principal, name, number)
        # The stored log is the record: send whatever the live stream did not.
        lines = version.build_log.split("\n")[sent:] if version.build_log else []
        for start in range(0, len(lines), _LOG_BATCH):
            yield pb.StreamBuildLogResponse(
                lines=lines[start : start + _LOG_BATCH],
                build_state=_BUILD_STATES[BuildState(version.build_state)],
            )
        yield pb.StreamBuildLogResponse(
            build_state=_BUILD_STATES[BuildState(version.build_state)],
            failure_reason=version.failure_reason,
        )

    async def PublishVersion(
        self, request: pb.PublishVersionRequest, context: Context
    ) -> pb.PublishVersionResponse:
        name, number = _validate.version_ref(request.model, request.number)
        view, version = await _queries.publish(
            self._res.db, current_principal(), name, number, self._res.clock()
        )
        return pb.PublishVersionResponse(model=model_pb(view), version=version_pb(view, version))

    async def TakeOffline(
        self, request: pb.TakeOfflineRequest, context: Context
    ) -> pb.TakeOfflineResponse:
        name = _validate.require_name("name", request.name)
        view = await _queries.take_offline(
            self._res.db, current_principal(), name, self._res.clock(), retire=request.retire
        )
        return pb.TakeOfflineResponse(model=model_pb(view))

    async def ListModelSummaries(
        self, request: pb.ListModelSummariesRequest, context: Context
    ) -> pb.ListModelSummariesResponse:
        v = Violations()
        limit = _validate.page_size(v, request.page_size)
        after = self._res.page_tokens.open(v, "ListModelSummaries", request.page_token)
        if after is not None and not isinstance(after, str):
            _paging.reject_token(v)
        v.raise_if_any()
        since = _summaries.month_start(self._res.clock())
        found = await _summaries.summaries(
            self._res.db,
            current_principal(),
            after=after if isinstance(after, str) else None,
            limit=limit + 1,
            since=since,
        )
        token = ""
        if len(found) > limit:
            token = self._res.page_tokens.seal(
                "ListModelSummaries", found[limit - 1].view.model.name
            )
        return pb.ListModelSummariesResponse(
            summaries=[_summary_pb(summary) for summary in found[:limit]],
            next_page_token=token,
            month_start_time=_ts(since),
        )


def _summary_pb(summary: _summaries.Summary) -> pb.ModelSummary:
    counts = summary.subscribers
    return pb.ModelSummary(
        model=model_pb(summary.view),
        subscribers=pb.SubscriberCounts(
            trialing=counts.get("trialing", 0),
            incomplete=counts.get("incomplete", 0),
            active=counts.get("active", 0),
            past_due=counts.get("past_due", 0),
            canceled=counts.get("canceled", 0),
            expired=counts.get("expired", 0),
        ),
        revenue=[
            pb.Money(amount_minor=amount, currency=currency)
            for currency, amount in sorted(summary.revenue.items())
        ],
        recent_runs=[
            pb.RecentRun(
                id=str(run.id), version=run.version, as_of=_ts(run.as_of),
                outcome=OUTCOME_ENUM[run.outcome],
            )
            for run in summary.recent_runs
        ],
    )  # fmt: skip


# The store's scratch space for uploads in progress, and how long one may go without a write
# before a starting registry takes it for the leftover of a process that died mid-upload.
UPLOADS = "uploads"
STALE_UPLOAD = timedelta(minutes=10)


def add_to_server(server: aio.Server, resources: Resources) -> None:
    removed = resources.store.sweep_scratch(UPLOADS, STALE_UPLOAD, resources.clock())
    if removed:
        log.info("swept leftover uploads", count=removed)
    pb_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(resources), server)
