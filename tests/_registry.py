"""Helpers for registry tests: model folders, uploads, running the build worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from arq import Worker

from foretell.bundle import Manifest, pack_dir
from foretell.clock import Clock, utc_now
from foretell.common.v1 import common_pb2
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.runtime.lanes import Lane
from foretell.settings import Settings
from foretell.worker import close_worker, create_worker

if TYPE_CHECKING:
    from foretell.registry.v1.registry_service_pb2_grpc import RegistryServiceAsyncStub

Metadata = tuple[tuple[str, str], ...]

MODEL_PY = """\
def predict(ctx):
    return []
"""


def model_name() -> str:
    return f"m-{uuid.uuid4().hex[:12]}"


def write_model(
    directory: Path,
    *,
    source: str = MODEL_PY,
    requirements: str | None = None,
    symbols: tuple[str, ...] = ("EURUSD",),
    resolution: str = "1h",
    horizon: int = 1,
    extra: dict[str, str] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.py").write_text(source)
    if requirements is not None:
        (directory / "requirements.txt").write_text(requirements)
    for name, text in (extra or {}).items():
        (directory / name).write_text(text)
    manifest = Manifest(
        entrypoint="model:predict",
        symbols=symbols,
        resolution=resolution,
        horizon=horizon,
        lookback=24,
        requirements="requirements.txt" if requirements is not None else "",
    )
    (directory / "foretell.toml").write_text(manifest.to_toml())
    return directory


async def create_model(
    registry: RegistryServiceAsyncStub,
    metadata: Metadata,
    name: str | None = None,
    *,
    visibility: int = pb.VISIBILITY_PRIVATE,
) -> pb.Model:
    response = await registry.CreateModel(
        pb.CreateModelRequest(
            model=pb.Model(
                name=name or model_name(),
                title="Test model",
                symbols=["EURUSD", "GBPUSD"],
                resolution=common_pb2.RESOLUTION_1H,
                horizon=1,
                visibility=visibility,  # type: ignore[arg-type]
            )
        ),
        metadata=metadata,
    )
    return response.model


async def _messages(
    header: pb.UploadHeader, data: bytes, chunk: int
) -> AsyncIterator[pb.UploadVersionRequest]:
    yield pb.UploadVersionRequest(header=header)
    for start in range(0, len(data), chunk):
        yield pb.UploadVersionRequest(chunk=data[start : start + chunk])


async def upload_bytes(
    registry: RegistryServiceAsyncStub,
    metadata: Metadata,
    model: str,
    data: bytes,
    digest: str,
    *,
    size: int | None = None,
    chunk: int = 64 * 1024,
) -> pb.UploadVersionResponse:
    header = pb.UploadHeader(model=model, size=len(data) if size is None else size, digest=digest)
    response: pb.UploadVersionResponse = await registry.UploadVersion(
        _messages(header, data, chunk), metadata=metadata
    )
    return response


async def push(
    registry: RegistryServiceAsyncStub, metadata: Metadata, model: str, directory: Path
) -> pb.UploadVersionResponse:
    packed = pack_dir(directory)
    return await upload_bytes(registry, metadata, model, packed.data, packed.digest)


async def run_builds(settings: Settings) -> None:
    """Runs the build lane's worker until its queue is empty (arq burst mode)."""
    worker = create_worker(settings, lane=Lane.BUILD, burst=True)
    try:
        await worker.async_run()
    finally:
        await close_worker(worker)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, lane: Lane, clock: Clock = utc_now, *, scheduler: bool = False
) -> AsyncIterator[Worker]:
    """A worker serving `lane` in the background (not a burst) until the block ends; with
    `scheduler`, also the scheduler (its cron and the bars listener), as `foretell worker`."""
    worker = create_worker(
        settings, lane=lane, clock=clock, scheduler=scheduler, handle_signals=False
    )
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close_worker(worker)
