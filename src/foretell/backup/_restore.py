"""`foretell restore`: a backup into the configured database, store and data directory.

Order: the archive is extracted and checked in full first (scratch space of the store, so
objects move into place by rename); then the target is checked to be empty; then the store
objects go in (extra objects are harmless, content-addressed), then the database (one
transaction: a failed load leaves it as it was), migrated to this Foretell's schema, and the
keys last. A failed restore can be run again with `--force`."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from foretell.backup import _archive, _postgres
from foretell.backup._create import Say, _first_line
from foretell.backup._errors import BackupError
from foretell.db import async_url
from foretell.db.migrate import alembic_config, upgrade_sync
from foretell.settings import Settings
from foretell.store import ArtifactCorrupt, ArtifactStore

_KEY_DIRS = ("keys", "ledger-keys")

_TABLES = text("""
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
""")


async def restore_backup(
    settings: Settings, path: Path, say: Say, *, force: bool = False
) -> _archive.Manifest:
    _check_source(path)
    store = ArtifactStore(settings.artifacts_dir)
    try:
        staging = store.scratch("restore")
    except OSError as error:
        raise BackupError(f"cannot write to the store at {store.root}: {error}") from None
    try:
        say(f"checking {path}")
        manifest = _archive.extract(path, staging)
        _check_revision(manifest)
        key_dirs = {"keys": settings.keys_dir, "ledger-keys": settings.ledger_keys_dir}
        async with _postgres.database_of(settings, create=True) as target:
            await _check_empty(target, store, key_dirs, force)
            say(f"restoring {len(manifest.bundles)} bundles and {len(manifest.images)} images")
            _put_objects(store, staging, manifest)
            say(f"restoring the database into {target.shown}")
            await _load(target, staging / _archive.DATABASE_MEMBER, replace=force)
        _put_keys(staging, key_dirs)
    except OSError as error:
        raise BackupError(f"cannot restore: {error}") from None
    finally:
        _remove(staging)
    return manifest


def _check_source(path: Path) -> None:
    if not path.is_file():
        raise BackupError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    if not os.access(path, os.R_OK):
        raise BackupError(f"{path} is not readable")


def _check_revision(manifest: _archive.Manifest) -> None:
    scripts = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    if scripts.get_revision(manifest.schema_revision) is None:
        raise BackupError(
            f"the backup's schema ({manifest.schema_revision}) is not one this Foretell "
            f"knows: it was made by Foretell {manifest.foretell_version}; restore it with that "
            "version or a newer one"
        )


async def _check_empty(
    target: _postgres.Target, store: ArtifactStore, key_dirs: dict[str, Path], force: bool
) -> None:
    if force:
        return
    found: list[str] = []
    tables = await _scalar(target, _TABLES)
    if tables:
        found.append(f"{target.shown} has {tables} tables")
    for kind in ("bundles", "images"):
        directory = store.root / kind
        if directory.is_dir() and any(directory.iterdir()):
            found.append(f"the store at {store.root} holds {kind}")
    for directory in key_dirs.values():
        if directory.is_dir() and any(not p.name.startswith(".") for p in directory.iterdir()):
            found.append(f"{directory} holds keys")
    if found:
        raise BackupError(
            "the target is not empty ("
            + "; ".join(found)
            + "): restore into a new database and data directory, or pass --force to replace "
            "its database and keys"
        )


async def _scalar(target: _postgres.Target, statement: object) -> int:
    engine = create_async_engine(async_url(target.url))
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(statement))  # type: ignore[call-overload]
    except (DBAPIError, OSError) as error:
        raise BackupError(f"cannot reach {target.shown}: {_first_line(error)}") from None
    finally:
        await engine.dispose()


def _put_objects(store: ArtifactStore, staging: Path, manifest: _archive.Manifest) -> None:
    try:
        for digest in manifest.bundles:
            name = store.bundle_path(digest).name
            store.put_bundle(staging / "store" / "bundles" / name, digest)
        for digest in manifest.images:
            name = store.image_path(digest).name
            if store.put_image(staging / "store" / "images" / name) != digest:
                raise BackupError(f"image {digest} in the backup does not match its digest")
    except (ArtifactCorrupt, ValueError, FileNotFoundError) as error:
        raise BackupError(f"the backup's store objects are damaged: {error}") from None


async def _load(target: _postgres.Target, dump: Path, *, replace: bool) -> None:
    if replace:
        engine = create_async_engine(async_url(target.url), isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
        except DBAPIError as error:
            raise BackupError(f"cannot empty {target.shown}: {_first_line(error)}") from None
        finally:
            await engine.dispose()
    await _postgres.load(target.tools, target.url, dump)
    try:
        await asyncio.to_thread(upgrade_sync, target.url)
    except Exception as error:  # noqa: BLE001 - Alembic raises anything; the reason is kept
        raise BackupError(f"the restored database did not migrate: {_first_line(error)}") from None


def _put_keys(staging: Path, key_dirs: dict[str, Path]) -> None:
    for name, directory in key_dirs.items():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for old in directory.iterdir():
            if old.is_file() and not old.name.startswith("."):
                old.unlink()
        source = staging / name
        for path in sorted(source.iterdir()) if source.is_dir() else ():
            target = directory / path.name
            shutil.copyfile(path, target)
            target.chmod(0o600)


def _remove(tree: Path) -> None:
    """Removes a scratch tree, read-only image directories included."""
    for directory, _dirs, _files in os.walk(tree):
        Path(directory).chmod(stat.S_IRWXU)
    shutil.rmtree(tree, ignore_errors=True)
