"""RegistryService: models, immutable versions, builds, publication, access rules."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text
from sqlalchemy.engine import make_url

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.build import BuildState
from foretell.common.v1 import common_pb2
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runtime import Resources
from foretell.settings import Settings
from tests._errors import field_violations
from tests._registry import create_model, model_name, push, run_builds, write_model
from tests._wheels import make_wheel
from tests.conftest import SignUp

if TYPE_CHECKING:
    from grpc import aio

    Stub = pb_grpc.RegistryServiceAsyncStub


@pytest.fixture(scope="session")
def registry(channel: aio.Channel) -> Stub:
    return pb_grpc.RegistryServiceStub(channel)


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        await call  # type: ignore[misc]
    code: grpc.StatusCode = caught.value.code()
    return code


async def test_create_get_and_list_a_model(registry: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    created = await create_model(registry, me.metadata)
    assert created.visibility == pb.VISIBILITY_PRIVATE
    assert created.owner_id == me.user.id
    assert created.live_version == 0
    fetched = await registry.GetModel(pb.GetModelRequest(name=created.name), metadata=me.metadata)
    assert fetched.model == created
    listed = await registry.ListModels(pb.ListModelsRequest(only_mine=True), metadata=me.metadata)
    assert [m.name for m in listed.models] == [created.name]


BAD_MODELS = [
    ({"name": "A"}, "model.name"),
    ({"name": "ab"}, "model.name"),
    ({"name": "-abc"}, "model.name"),
    ({"title": ""}, "model.title"),
    ({"symbols": []}, "model.symbols"),
    ({"symbols": ["eurusd"]}, "model.symbols[0]"),
    ({"symbols": ["EURUSD", "EURUSD"]}, "model.symbols"),
    ({"resolution": common_pb2.RESOLUTION_UNSPECIFIED}, "model.resolution"),
    ({"horizon": 0}, "model.horizon"),
    ({"horizon": 1001}, "model.horizon"),
    ({"tags": ["Bad Tag"]}, "model.tags[0]"),
    ({"description": "x" * 10_001}, "model.description"),
]


@pytest.mark.parametrize(("change", "field"), BAD_MODELS)
async def test_bad_models_are_refused_with_the_field(
    registry: Stub, sign_up: SignUp, change: dict[str, object], field: str
) -> None:
    me = await sign_up()
    fields: dict[str, object] = {
        "name": model_name(),
        "title": "T",
        "symbols": ["EURUSD"],
        "resolution": common_pb2.RESOLUTION_1H,
        "horizon": 1,
    }
    fields.update(change)
    with pytest.raises(grpc.RpcError) as caught:
        await registry.CreateModel(
            pb.CreateModelRequest(model=pb.Model(**fields)),  # type: ignore[arg-type]
            metadata=me.metadata,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


async def test_names_are_global(registry: Stub, sign_up: SignUp) -> None:
    first, second = await sign_up(), await sign_up()
    model = await create_model(registry, first.metadata)
    code = await _code(create_model(registry, second.metadata, model.name))
    assert code == grpc.StatusCode.ALREADY_EXISTS


async def test_a_subscriber_cannot_create_models(registry: Stub, sign_up: SignUp) -> None:
    subscriber = await sign_up(account_pb.ROLE_SUBSCRIBER)
    assert await _code(create_model(registry, subscriber.metadata)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_private_models_are_invisible_to_others(registry: Stub, sign_up: SignUp) -> None:
    owner, other = await sign_up(), await sign_up(account_pb.ROLE_SUBSCRIBER)
    model = await create_model(registry, owner.metadata)
    get = registry.GetModel(pb.GetModelRequest(name=model.name), metadata=other.metadata)
    assert await _code(get) == grpc.StatusCode.NOT_FOUND
    listed = await registry.ListModels(pb.ListModelsRequest(page_size=100), metadata=other.metadata)
    assert model.name not in {m.name for m in listed.models}

    await registry.UpdateModel(
        pb.UpdateModelRequest(
            model=pb.Model(name=model.name, visibility=pb.VISIBILITY_PUBLIC),
            update_mask=FieldMask(paths=["visibility"]),
        ),
        metadata=owner.metadata,
    )
    seen = await registry.GetModel(pb.GetModelRequest(name=model.name), metadata=other.metadata)
    assert seen.model.visibility == pb.VISIBILITY_PUBLIC


async def test_a_provider_cannot_change_anothers_model(
    registry: Stub, sign_up: SignUp, tmp_path: Path
) -> None:
    owner, intruder = await sign_up(), await sign_up()
    private = await create_model(registry, owner.metadata)
    public = await create_model(registry, owner.metadata, visibility=pb.VISIBILITY_PUBLIC)
    for model, expected in (
        (private, grpc.StatusCode.NOT_FOUND),
        (public, grpc.StatusCode.PERMISSION_DENIED),
    ):
        update = registry.UpdateModel(
            pb.UpdateModelRequest(
                model=pb.Model(name=model.name, title="mine now"),
                update_mask=FieldMask(paths=["title"]),
            ),
            metadata=intruder.metadata,
        )
        assert await _code(update) == expected
        delete = registry.DeleteModel(
            pb.DeleteModelRequest(name=model.name), metadata=intruder.metadata
        )
        assert await _code(delete) == expected
        upload = push(registry, intruder.metadata, model.name, write_model(tmp_path / model.name))
        assert await _code(upload) == expected
        offline = registry.TakeOffline(
            pb.TakeOfflineRequest(name=model.name), metadata=intruder.metadata
        )
        assert await _code(offline) == expected


async def test_update_mask_is_checked(registry: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    for paths in ([], ["name"], ["symbols"], ["horizon"]):
        with pytest.raises(grpc.RpcError) as caught:
            await registry.UpdateModel(
                pb.UpdateModelRequest(
                    model=pb.Model(name=model.name), update_mask=FieldMask(paths=paths)
                ),
                metadata=me.metadata,
            )
        assert "update_mask" in field_violations(caught.value), paths
    updated = await registry.UpdateModel(
        pb.UpdateModelRequest(
            model=pb.Model(name=model.name, title="New", tags=["fx", "trend"]),
            update_mask=FieldMask(paths=["title", "tags"]),
        ),
        metadata=me.metadata,
    )
    assert (updated.model.title, list(updated.model.tags)) == ("New", ["fx", "trend"])
    assert updated.model.symbols == model.symbols


async def test_identical_pushes_are_idempotent(
    registry: Stub, sign_up: SignUp, tmp_path: Path
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    folder = write_model(tmp_path / "m")
    first = await push(registry, me.metadata, model.name, folder)
    again = await push(registry, me.metadata, model.name, folder)
    assert first.created and not again.created
    assert (again.version.number, again.version.digest) == (1, first.version.digest)
    (folder / "model.py").write_text("def predict(ctx):\n    return [] \n")
    changed = await push(registry, me.metadata, model.name, folder)
    assert changed.created and changed.version.number == 2
    assert changed.version.digest != first.version.digest


async def test_build_publish_offline_publish(
    registry: Stub, sign_up: SignUp, settings: Settings, tmp_path: Path
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    folder = write_model(tmp_path / "m")
    v1 = (await push(registry, me.metadata, model.name, folder)).version
    assert v1.build_state == pb.BUILD_STATE_QUEUED
    publish_early = registry.PublishVersion(
        pb.PublishVersionRequest(model=model.name, number=1), metadata=me.metadata
    )
    assert await _code(publish_early) == grpc.StatusCode.FAILED_PRECONDITION

    (folder / "extra.py").write_text("X = 1\n")
    await push(registry, me.metadata, model.name, folder)
    await run_builds(settings)
    versions = await registry.ListVersions(
        pb.ListVersionsRequest(model=model.name), metadata=me.metadata
    )
    assert [(v.number, v.build_state) for v in versions.versions] == [
        (2, pb.BUILD_STATE_READY),
        (1, pb.BUILD_STATE_READY),
    ]
    assert all(v.image_digest.startswith("sha256:") for v in versions.versions)

    published = await registry.PublishVersion(
        pb.PublishVersionRequest(model=model.name, number=1), metadata=me.metadata
    )
    assert published.model.live_version == 1 and published.version.live
    first_publish = published.version.publish_time
    second = await registry.PublishVersion(
        pb.PublishVersionRequest(model=model.name, number=2), metadata=me.metadata
    )
    assert second.model.live_version == 2
    retired = await registry.GetVersion(
        pb.GetVersionRequest(model=model.name, number=1), metadata=me.metadata
    )
    assert not retired.version.live
    assert retired.version.publish_time == first_publish

    offline = await registry.TakeOffline(
        pb.TakeOfflineRequest(name=model.name), metadata=me.metadata
    )
    assert offline.model.live_version == 0
    again = await registry.PublishVersion(
        pb.PublishVersionRequest(model=model.name, number=1), metadata=me.metadata
    )
    assert again.model.live_version == 1
    assert again.version.publish_time == first_publish

    delete = registry.DeleteModel(pb.DeleteModelRequest(name=model.name), metadata=me.metadata)
    assert await _code(delete) == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_model_never_published_can_be_deleted(
    registry: Stub, sign_up: SignUp, tmp_path: Path
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    await push(registry, me.metadata, model.name, write_model(tmp_path / "m"))
    await registry.DeleteModel(pb.DeleteModelRequest(name=model.name), metadata=me.metadata)
    get = registry.GetModel(pb.GetModelRequest(name=model.name), metadata=me.metadata)
    assert await _code(get) == grpc.StatusCode.NOT_FOUND


async def test_build_log_streams_and_is_kept(
    registry: Stub, sign_up: SignUp, settings: Settings, tmp_path: Path
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    await push(registry, me.metadata, model.name, write_model(tmp_path / "m"))
    await run_builds(settings)
    messages = [
        m
        async for m in registry.StreamBuildLog(
            pb.StreamBuildLogRequest(model=model.name, number=1), metadata=me.metadata
        )
    ]
    lines = [line for m in messages for line in m.lines]
    assert any("imported model:predict" in line for line in lines)
    assert messages[-1].build_state == pb.BUILD_STATE_READY

    other = await sign_up()
    stream = registry.StreamBuildLog(
        pb.StreamBuildLogRequest(model=model.name, number=1), metadata=other.metadata
    )
    with pytest.raises(grpc.RpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() in (grpc.StatusCode.NOT_FOUND,)


async def test_requirements_come_from_the_wheelhouse(
    registry: Stub, sign_up: SignUp, settings: Settings, tmp_path: Path
) -> None:
    assert settings.wheelhouse is not None
    make_wheel(settings.wheelhouse, "ft-signal-helpers", "1.2.0", "def sign(x):\n    return 1\n")
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    source = "import ft_signal_helpers\n\ndef predict(ctx):\n    return []\n"
    folder = write_model(tmp_path / "m", source=source, requirements="ft-signal-helpers==1.2.0\n")
    await push(registry, me.metadata, model.name, folder)
    await run_builds(settings)
    version = await registry.GetVersion(
        pb.GetVersionRequest(model=model.name, number=1), metadata=me.metadata
    )
    assert version.version.build_state == pb.BUILD_STATE_READY, version.version.failure_reason


@pytest.mark.parametrize(
    ("source", "requirements", "reason"),
    [
        ("def predict(ctx):\n    return []\n", "no-such-package-anywhere==9.9\n", "installing"),
        ("import not_installed_anywhere\n", None, "importing model:predict failed"),
        ("predict = 42\n", None, "not a callable"),
        ("raise SystemExit(3)\n", None, "importing model:predict failed"),
    ],
)
async def test_failed_builds_say_why(
    registry: Stub,
    sign_up: SignUp,
    settings: Settings,
    tmp_path: Path,
    source: str,
    requirements: str | None,
    reason: str,
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    await push(
        registry,
        me.metadata,
        model.name,
        write_model(tmp_path / "m", source=source, requirements=requirements),
    )
    await run_builds(settings)
    version = (
        await registry.GetVersion(
            pb.GetVersionRequest(model=model.name, number=1), metadata=me.metadata
        )
    ).version
    assert version.build_state == pb.BUILD_STATE_FAILED
    assert reason in version.failure_reason
    assert version.image_digest == ""


async def test_the_import_check_has_no_network(
    registry: Stub, sign_up: SignUp, settings: Settings, tmp_path: Path, grpc_target: str
) -> None:
    host, port = grpc_target.split(":")
    source = (
        "import socket\n"
        f"socket.create_connection(({host!r}, {port}), timeout=2)\n"
        "def predict(ctx):\n    return []\n"
    )
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    await push(registry, me.metadata, model.name, write_model(tmp_path / "m", source=source))
    await run_builds(settings)
    version = (
        await registry.GetVersion(
            pb.GetVersionRequest(model=model.name, number=1), metadata=me.metadata
        )
    ).version
    assert version.build_state == pb.BUILD_STATE_FAILED
    assert "operation not permitted" in version.failure_reason.lower()


async def test_same_bundle_same_image(
    registry: Stub, sign_up: SignUp, settings: Settings, tmp_path: Path
) -> None:
    me = await sign_up()
    first, second = [await create_model(registry, me.metadata) for _ in range(2)]
    folder = write_model(tmp_path / "m")
    await push(registry, me.metadata, first.name, folder)
    await push(registry, me.metadata, second.name, folder)
    await run_builds(settings)
    digests = set()
    for model in (first, second):
        version = await registry.GetVersion(
            pb.GetVersionRequest(model=model.name, number=1), metadata=me.metadata
        )
        digests.add(version.version.image_digest)
    assert len(digests) == 1


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        ({"resolution": "4h"}, "manifest.resolution"),
        ({"horizon": 3}, "manifest.horizon"),
        ({"symbols": ("EURUSD", "BTCUSD")}, "manifest.symbols"),
    ],
)
async def test_a_version_must_match_its_model(
    registry: Stub, sign_up: SignUp, tmp_path: Path, manifest: dict[str, object], field: str
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    folder = write_model(tmp_path / "m", **manifest)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as caught:
        await push(registry, me.metadata, model.name, folder)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


def _admin_dsn(resources: Resources) -> str:
    url = make_url(str(resources.settings.database_url))
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def test_versions_are_immutable_even_in_sql(
    registry: Stub, sign_up: SignUp, settings: Settings, resources: Resources, tmp_path: Path
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    await push(registry, me.metadata, model.name, write_model(tmp_path / "m"))
    await run_builds(settings)
    await registry.PublishVersion(
        pb.PublishVersionRequest(model=model.name, number=1), metadata=me.metadata
    )
    connection = await asyncpg.connect(_admin_dsn(resources))
    try:
        model_id = await connection.fetchval("SELECT id FROM models WHERE name = $1", model.name)
        forged = "sha256:" + "0" * 64
        statements = [
            ("UPDATE versions SET digest = $2 WHERE model_id = $1", (forged,)),
            ("UPDATE versions SET manifest = '{}'::jsonb WHERE model_id = $1", ()),
            ("UPDATE versions SET image_digest = $2 WHERE model_id = $1", (forged,)),
            ("UPDATE versions SET build_state = 'failed' WHERE model_id = $1", ()),
            ("UPDATE versions SET build_log = '' WHERE model_id = $1", ()),
            ("UPDATE versions SET number = 7 WHERE model_id = $1", ()),
            ("UPDATE versions SET published_at = now() WHERE model_id = $1", ()),
            ("DELETE FROM versions WHERE model_id = $1", ()),
        ]
        for sql, args in statements:
            with pytest.raises(asyncpg.PostgresError) as caught:
                await connection.execute(sql, model_id, *args)
            assert caught.value.sqlstate == "FT001", sql
        with pytest.raises(asyncpg.PostgresError) as caught:
            await connection.execute("TRUNCATE versions CASCADE")
        assert caught.value.sqlstate == "FT001"
    finally:
        await connection.close()


async def test_a_tampered_bundle_is_caught_before_building(
    registry: Stub, sign_up: SignUp, settings: Settings, resources: Resources, tmp_path: Path
) -> None:
    me = await sign_up()
    model = await create_model(registry, me.metadata)
    uploaded = await push(
        registry, me.metadata, model.name, write_model(tmp_path / "m", extra={"n.py": "A = 1\n"})
    )
    stored = resources.store.bundle_path(uploaded.version.digest)
    stored.chmod(0o644)
    stored.write_bytes(stored.read_bytes().replace(b"A = 1", b"A = 2"))
    await run_builds(settings)
    version = (
        await registry.GetVersion(
            pb.GetVersionRequest(model=model.name, number=1), metadata=me.metadata
        )
    ).version
    assert version.build_state == pb.BUILD_STATE_FAILED
    assert "modified" in version.failure_reason


async def test_page_tokens_walk_the_catalog(registry: Stub, sign_up: SignUp) -> None:
    me = await sign_up()
    prefix = f"p{uuid.uuid4().hex[:6]}"
    names = sorted(
        [(await create_model(registry, me.metadata, f"{prefix}-{i}")).name for i in range(5)]
    )
    seen: list[str] = []
    token = ""
    while True:
        page = await registry.ListModels(
            pb.ListModelsRequest(page_size=2, page_token=token, only_mine=True),
            metadata=me.metadata,
        )
        seen += [m.name for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    bad = registry.ListModels(pb.ListModelsRequest(page_token="%%%"), metadata=me.metadata)
    assert await _code(bad) == grpc.StatusCode.INVALID_ARGUMENT


async def test_build_states_are_the_ones_the_schema_allows(resources: Resources) -> None:
    """BuildState is the one list of build states: the database's CHECK constraint and the
    API's BuildState enum hold the same set."""
    async with resources.db.engine.connect() as conn:
        check = await conn.scalar(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conname = 'versions_build_state_check'"
            )
        )
    assert set(re.findall(r"'([a-z_]+)'", str(check))) == {state.value for state in BuildState}
    api = set(pb.BuildState.keys()) - {"BUILD_STATE_UNSPECIFIED"}
    assert api == {f"BUILD_STATE_{state.name}" for state in BuildState}
