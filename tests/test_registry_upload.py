"""UploadVersion treats every upload as hostile: the stream, the archive, the manifest."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio

from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runtime import Resources
from foretell.services.registry import add_to_server
from foretell.services.registry._servicer import UPLOADS
from tests._errors import field_violations
from tests._registry import create_model, upload_bytes
from tests.conftest import SignUp

if TYPE_CHECKING:
    Stub = pb_grpc.RegistryServiceAsyncStub


@pytest.fixture(scope="session")
def registry(channel: aio.Channel) -> Stub:
    return pb_grpc.RegistryServiceStub(channel)


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _file(name: str, data: bytes = b"x = 1\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


# Where a successful escape would land.
ESCAPE = "/tmp/foretell-escape-test.py"  # noqa: S108

MANIFEST = (
    b'[model]\nentrypoint = "model:predict"\nsymbols = ["EURUSD"]\nresolution = "1h"\n'
    b"horizon = 1\nlookback = 24\n"
)

ATTACKS: dict[str, list[tuple[tarfile.TarInfo, bytes | None]] | None] = {
    "path traversal": [_file("../escape.py")],
    "absolute path": [_file(f"{ESCAPE}")],
    "symlink out": [_link("evil", "/etc/passwd", tarfile.SYMTYPE)],
    "hardlink out": [_link("evil", "/etc/passwd", tarfile.LNKTYPE)],
    "not a tar": None,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_malicious_bundles_are_refused_and_nothing_escapes(
    registry: Stub, sign_up: SignUp, resources: Resources, attack: str
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    entries = ATTACKS[attack]
    data = (
        b"\x89PNG not an archive at all" * 40
        if entries is None
        else _tar([_file("foretell.toml", MANIFEST), _file("model.py"), *entries])
    )
    before = set(resources.store.root.rglob("*")) if resources.store.root.exists() else set()
    with pytest.raises(grpc.RpcError) as caught:
        await upload_bytes(registry, me.metadata, model.name, data, _digest(data))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bundle" in field_violations(caught.value)
    after = set(resources.store.root.rglob("*"))
    assert {p for p in after - before if "bundles" in p.parts} == set()
    assert not Path(ESCAPE).exists()  # noqa: ASYNC240


async def _stream(*messages: pb.UploadVersionRequest) -> AsyncIterator[pb.UploadVersionRequest]:
    for message in messages:
        yield message


async def test_an_upload_must_start_with_its_header(registry: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    with pytest.raises(grpc.RpcError) as caught:
        await registry.UploadVersion(
            _stream(pb.UploadVersionRequest(chunk=b"data")), metadata=me.metadata
        )
    assert "header" in field_violations(caught.value)


async def test_the_bytes_must_match_the_header(registry: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    data = _tar([_file("foretell.toml", MANIFEST), _file("model.py")])
    cases = [
        (data, _digest(data), len(data) + 10, "announced"),
        (data, _digest(data), len(data) - 10, "announced"),
        (data, _digest(b"other"), None, "digest"),
    ]
    for payload, digest, size, words in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await upload_bytes(registry, me.metadata, model.name, payload, digest, size=size)
        assert words in field_violations(caught.value)["bundle"]


async def test_an_oversized_upload_is_refused_before_its_bytes(
    registry: Stub, sign_up: SignUp, resources: Resources
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    header = pb.UploadHeader(
        model=model.name, size=resources.settings.max_bundle_bytes + 1, digest=_digest(b"")
    )
    with pytest.raises(grpc.RpcError) as caught:
        await registry.UploadVersion(
            _stream(pb.UploadVersionRequest(header=header)), metadata=me.metadata
        )
    assert "over the limit" in field_violations(caught.value)["header.size"]


async def test_a_bad_manifest_is_refused_with_its_fields(registry: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    manifest = b'[model]\nentrypoint = "nocolon"\nsymbols = []\nresolution = "5m"\nhorizn = 1\n'
    data = _tar([_file("foretell.toml", manifest), _file("model.py")])
    with pytest.raises(grpc.RpcError) as caught:
        await upload_bytes(registry, me.metadata, model.name, data, _digest(data))
    fields = field_violations(caught.value)
    assert {"manifest.entrypoint", "manifest.symbols", "manifest.resolution"} <= set(fields)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Polls `condition` (the server's work happens on its own tasks) within a deadline."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_an_interrupted_upload_leaves_nothing_in_scratch_space(
    registry: Stub, sign_up: SignUp, resources: Resources
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    uploads = resources.store.root / "tmp" / "uploads"
    before = set(uploads.iterdir()) if uploads.is_dir() else set()
    size = 8 * 1024 * 1024
    header = pb.UploadHeader(model=model.name, size=size, digest=_digest(b"unknown"))

    async def hanging() -> AsyncIterator[pb.UploadVersionRequest]:
        yield pb.UploadVersionRequest(header=header)
        yield pb.UploadVersionRequest(chunk=b"x" * (1024 * 1024))
        # The client stalls mid-upload and then goes away.
        await asyncio.Event().wait()

    call = registry.UploadVersion(hanging(), metadata=me.metadata)

    def receiving() -> bool:
        mine = (set(uploads.iterdir()) if uploads.is_dir() else set()) - before
        return any((p / "bundle.tar").exists() and (p / "bundle.tar").stat().st_size for p in mine)

    await _until(receiving, "the server to receive the first chunk")
    call.cancel()
    await _until(lambda: not set(uploads.iterdir()) - before, "the scratch space to be cleaned")


async def test_leftover_uploads_are_swept_when_the_registry_starts(resources: Resources) -> None:
    store = resources.store
    stale, fresh = store.scratch(UPLOADS), store.scratch(UPLOADS)
    (stale / "bundle.tar").write_bytes(b"partial")
    (fresh / "bundle.tar").write_bytes(b"in progress")
    old = time.time() - 3600
    for path in (stale / "bundle.tar", stale):
        os.utime(path, (old, old))
    server = aio.server()
    add_to_server(server, resources)
    assert not stale.exists()
    assert (fresh / "bundle.tar").exists()
    shutil.rmtree(fresh)
