"""`foretell backup` and `foretell restore`: a platform with a built version, recorded live runs
and a signed ledger, backed up and restored into a new data directory and a new database,
verifies with `foretell verify`; from an external PostgreSQL into the embedded one and back.
Bad paths, foreign and damaged archives, non-empty targets and a pg_dump older than the
server are refused with a clear message."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from grpc import aio
from sqlalchemy import select
from sqlalchemy.engine import make_url

from foretell._embedded import start_postgres
from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.backup import BackupError, restore_backup
from foretell.composition import SERVICES, start_services
from foretell.db.migrate import upgrade
from foretell.db.models import Version
from foretell.ledger import chain
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources, open_resources
from foretell.settings import Address, Settings
from foretell.store import ArtifactStore
from tests._records import HOUR, Made, make_model, record
from tests._registry import create_model, push, run_builds, write_model
from tests.conftest import PASSWORD, SignedIn, SignUp, foretell_env, unique_email

FORETELL = str(Path(sys.executable).parent / "foretell")
BASE = datetime(2024, 3, 4, 9, tzinfo=UTC)
OLD_PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def new_database(server_database_url: str) -> AsyncIterator[str]:
    name = f"foretell_backup_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_dsn(server_database_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # In a thread: a gRPC server answering the command may run on this event loop.
    return await asyncio.to_thread(
        subprocess.run, [FORETELL, *args], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def platform_env(settings: Settings, **variables: str) -> dict[str, str]:
    env = foretell_env(settings, **variables)
    if settings.database_url is None:
        del env["FORETELL_DATABASE_URL"]
    return env


@dataclasses.dataclass(frozen=True)
class Platform:
    owner: SignedIn
    model: str
    bundle: str
    image: str


async def _sign_up(channel: aio.Channel) -> SignedIn:
    account = account_grpc.AccountServiceStub(channel)
    email = unique_email("backup")
    await account.CreateUser(
        account_pb.CreateUserRequest(
            email=email, password=PASSWORD, display_name="Backup", role=account_pb.ROLE_PROVIDER
        )
    )
    login = await account.Login(account_pb.LoginRequest(email=email, password=PASSWORD))
    return SignedIn(login.user, login.tokens, email, PASSWORD)


async def build_platform(settings: Settings, folder: Path) -> Platform:
    """A provider, a public model with a built version, four live runs (one a model error)
    on its ledger, and a signed checkpoint."""
    async with open_resources(settings) as res:
        running = await start_services(res, list(SERVICES), Address("127.0.0.1", 0))
        try:
            async with aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                owner = await _sign_up(channel)
                registry = reg_grpc.RegistryServiceStub(channel)
                model = await create_model(
                    registry, owner.metadata, visibility=reg_pb.VISIBILITY_PUBLIC
                )
                await push(registry, owner.metadata, model.name, write_model(folder))
                await run_builds(settings)
            version = await _version(res, model.name)
            assert version.image_digest, version.failure_reason
            made = Made(owner, model.name, version.model_id, {1: version.id}, ("EURUSD",))
            for hour, outcome in enumerate(("ok", "ok", "model_error", "ok")):
                await record(res, made, BASE + hour * HOUR, symbols=made.symbols, outcome=outcome)
            assert await chain.checkpoint(res.db, settings.ledger_keys_dir, res.clock) == 1
        finally:
            await running.stop(0.5)
    return Platform(owner, model.name, version.digest, version.image_digest)


async def _version(res: Resources, model: str) -> Version:
    from foretell.db.models import Model

    async with res.db.session() as session:
        found = await session.scalar(
            select(Version).join(Model, Model.id == Version.model_id).where(Model.name == model)
        )
    assert found is not None
    return found


async def verify_on(settings: Settings, platform: Platform, config_dir: Path) -> str:
    """Serves `settings`' database and runs `foretell verify` on the model against it."""
    async with open_resources(settings) as res:
        running = await start_services(res, list(SERVICES), Address("127.0.0.1", 0))
        try:
            env = platform_env(
                settings,
                FORETELL_URL=f"127.0.0.1:{running.port}",
                FORETELL_CONFIG_DIR=str(config_dir),
            )
            login = await asyncio.to_thread(
                subprocess.run,
                [FORETELL, "login", "--email", platform.owner.email, "--password-stdin"],
                env=env, input=PASSWORD, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert login.returncode == 0, login.stderr
            verified = await cli("verify", platform.model, env=env)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            return verified.stdout
        finally:
            await running.stop(0.5)


def assert_store_holds(settings: Settings, platform: Platform) -> None:
    store = ArtifactStore(settings.artifacts_dir)
    store.read_bundle(platform.bundle)
    store.verified_image(platform.image)


@pytest.mark.timeout(600)
async def test_a_platform_backed_up_and_restored_elsewhere_verifies(
    settings: Settings, server_database_url: str, tmp_root: Path, tmp_path: Path
) -> None:
    root = tmp_root / f"backup-{uuid.uuid4().hex[:8]}"
    archive, again = root / "one.tar.gz", root / "two.tar.gz"
    async with (
        new_database(server_database_url) as source_url,
        new_database(server_database_url) as final_url,
    ):
        await upgrade(source_url)
        source = dataclasses.replace(settings, data_dir=root / "source", database_url=source_url)
        platform = await build_platform(source, tmp_path / "model")

        # In the store but named by no row of the snapshot (an upload in progress): left out.
        stray = root / "stray"
        stray.write_bytes(b"an upload not yet committed")
        stray_digest = f"sha256:{hashlib.sha256(stray.read_bytes()).hexdigest()}"
        ArtifactStore(source.artifacts_dir).put_bundle(stray, stray_digest)
        made = await cli("backup", str(archive), env=platform_env(source))
        assert made.returncode == 0, made.stderr
        assert "1 bundles, 1 images" in made.stdout
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert names[0] == "format.json" and names[-1] == "manifest.json"
        assert manifest["bundles"] == [platform.bundle]
        assert manifest["images"] == [platform.image]
        assert manifest["schema_revision"] and manifest["created_at"]
        assert manifest["server_version"] and manifest["pg_dump_version"]
        assert "database.sql" in manifest["files"]
        assert any(name.startswith("ledger-keys/") for name in manifest["files"])
        assert not any(stray_digest.removeprefix("sha256:") in name for name in names)
        assert archive.stat().st_mode & 0o077 == 0  # it holds the signing keys
        refused = await cli("backup", str(archive), env=platform_env(source))
        assert refused.returncode == 1 and "already exists" in refused.stderr

        # Into a fresh data directory with the embedded PostgreSQL (pgserver's psql)...
        embedded = dataclasses.replace(
            settings, data_dir=root / "embedded", database_url=None, store_dir=None
        )
        restored = await cli("restore", str(archive), env=platform_env(embedded))
        assert restored.returncode == 0, restored.stderr
        assert_store_holds(embedded, platform)
        assert sorted(p.name for p in embedded.ledger_keys_dir.iterdir()) == sorted(
            p.name for p in source.ledger_keys_dir.iterdir()
        )
        # A pg_dump older than the server (15 against pgserver's 16) is named as such.
        old = await cli(
            "backup", str(root / "old.tar.gz"),
            env=platform_env(embedded, FORETELL_PG_BIN_DIR=str(OLD_PG_BIN)),
        )  # fmt: skip
        assert old.returncode == 1
        assert "older than the PostgreSQL server" in old.stderr, old.stderr
        assert "Traceback" not in old.stderr
        # ...backed up from there (pgserver's pg_dump) and into a new external database.
        made = await cli("backup", str(again), env=platform_env(embedded))
        assert made.returncode == 0, made.stderr
        final = dataclasses.replace(settings, data_dir=root / "final", database_url=final_url)
        restored = await cli("restore", str(again), env=platform_env(final))
        assert restored.returncode == 0, restored.stderr
        # Restoring again is refused: the target is no longer empty; --force replaces it.
        refused = await cli("restore", str(again), env=platform_env(final))
        assert refused.returncode == 1
        assert "not empty" in refused.stderr and "--force" in refused.stderr
        forced = await cli("restore", "--force", str(again), env=platform_env(final))
        assert forced.returncode == 0, forced.stderr

        pgdata = embedded.data_dir / "postgres"
        server = await asyncio.to_thread(start_postgres, pgdata, sole_user=False)
        try:
            embedded_serving = dataclasses.replace(embedded, database_url=server.url)
            first = await verify_on(embedded_serving, platform, tmp_path / "cli-1")
        finally:
            await asyncio.to_thread(server.stop)
        second = await verify_on(final, platform, tmp_path / "cli-2")
        for out in (first, second):
            assert out.startswith(f"OK: {platform.model}: 4 entries"), out
        assert_store_holds(final, platform)


def _restore_error(settings: Settings, archive: Path) -> str:
    with pytest.raises(BackupError) as caught:
        asyncio.run(restore_backup(settings, archive, lambda _: None))
    return str(caught.value)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


FORMAT = b'{"format": "foretell-backup", "version": 1}'
MANIFEST = (
    b'{"format": "foretell-backup", "format_version": 1, "created_at": "x",'
    b' "foretell_version": "0.1.0", "schema_revision": "0010", "server_version": "15",'
    b' "pg_dump_version": "15", "bundles": [], "images": [],'
    b' "files": {"database.sql": {"sha256": "sha256:%s", "size": 6}}}'
)


def test_bad_paths_and_damaged_archives_are_refused_clearly(
    settings: Settings, tmp_root: Path
) -> None:
    root = tmp_root / f"bad-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    fresh = dataclasses.replace(settings, data_dir=root / "data", database_url=None)
    good_sql = b"SELECT"
    manifest = MANIFEST % hashlib.sha256(good_sql).hexdigest().encode()
    cases = {
        root / "missing.tar.gz": "no such file",
        root: "not a file",
        _write(root / "noise", b"\x00not an archive" * 100): "not a Foretell backup",
        _tar(root / "other.tar.gz", {"hello.txt": b"hi"}): "not a Foretell backup",
        _tar(root / "nomanifest.tar.gz", {"format.json": FORMAT}): "truncated or incomplete",
        _tar(
            root / "tampered.tar.gz",
            {"format.json": FORMAT, "database.sql": b"DROP..", "manifest.json": manifest},
        ): "database.sql does not match the manifest",
        _tar(
            root / "extra.tar.gz",
            {
                "format.json": FORMAT,
                "database.sql": good_sql,
                "keys/x": b"k",
                "manifest.json": manifest,
            },
        ): "which its manifest does not list",
        _tar(
            root / "escape.tar.gz", {"format.json": FORMAT, "../../etc/evil": b"x"}
        ): "unsafe member",
        _tar(
            root / "newer.tar.gz",
            {"format.json": b'{"format": "foretell-backup", "version": 9}'},
        ): "format version 9",
    }
    whole = _tar(
        root / "whole.tar.gz",
        {"format.json": FORMAT, "database.sql": good_sql, "manifest.json": manifest},
    )
    data = gzip.decompress(whole.read_bytes())
    # Cut inside the manifest's data, and after the last whole member.
    cases[_write(root / "truncated.tar.gz", gzip.compress(data[:2900]))] = "corrupt or truncated"
    cases[_write(root / "short.tar.gz", gzip.compress(data[:2048]))] = "truncated or incomplete"
    cases[_write(root / "cut.tar.gz", whole.read_bytes()[:-20])] = "corrupt or truncated"
    for archive, expected in cases.items():
        assert expected in _restore_error(fresh, archive), archive
    assert not (root / "etc").exists()
    # Nothing was written outside the store's scratch space, and that was cleaned.
    assert not (fresh.data_dir / "postgres").exists()
    assert list((fresh.artifacts_dir / "tmp" / "restore").iterdir()) == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_the_cli_says_what_is_wrong_without_a_traceback(
    settings: Settings,
    tmp_path: Path,
    channel: aio.Channel,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    # A version whose bundle and image were never written to the store.
    await make_model(reg_grpc.RegistryServiceStub(channel), sign_up, resources)
    env = platform_env(settings)
    missing = await cli("restore", str(tmp_path / "nope.tar.gz"), env=env)
    assert missing.returncode == 1
    assert "no such file" in missing.stderr and "Traceback" not in missing.stderr
    archive = tmp_path / "session.tar.gz"
    made = await cli("backup", str(archive), env=env)
    assert made.returncode == 1
    assert "missing from" in made.stderr and "Traceback" not in made.stderr
    assert not archive.exists()
    nowhere = await cli("backup", str(tmp_path / "no" / "dir.tar.gz"), env=env)
    assert nowhere.returncode == 1 and "is not a directory" in nowhere.stderr
