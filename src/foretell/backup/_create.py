"""`foretell backup`: the database, the store objects it refers to and the signing keys, in
one archive.

Consistency: one REPEATABLE READ, READ ONLY transaction exports its snapshot; pg_dump dumps
exactly that snapshot (`--snapshot`), and the same transaction lists the bundle and image
digests its `versions` rows refer to. Those objects are copied after the dump. That is
consistent because the store is content-addressed and append-only: an object is in place
before any row can name it, it never changes (each is re-verified against its digest while
copied), and nothing deletes it. Objects written after the snapshot are not needed by it and
are left out. The platform keeps running meanwhile."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from foretell.backup import _archive, _postgres
from foretell.backup._errors import BackupError
from foretell.db import async_url
from foretell.settings import Settings
from foretell.store import ArtifactCorrupt, ArtifactStore

Say = Callable[[str], None]


def _destination(path: Path) -> Path:
    path = path.absolute()
    if path.exists() or path.is_symlink():
        raise BackupError(f"{path} already exists: choose a new file name")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent} is not a directory")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise BackupError(f"{path.parent} is not writable")
    return path


async def create_backup(settings: Settings, path: Path, say: Say) -> _archive.Manifest:
    """Writes the backup to `path` (a new file; written aside and renamed into place, so a
    failed backup leaves nothing) and returns its manifest."""
    path = _destination(path)
    work = Path(tempfile.mkdtemp(prefix=".foretell-backup-", dir=path.parent))
    try:
        async with _postgres.database_of(settings, create=False) as target:
            say(f"dumping {target.shown}")
            manifest = await _dump(target, work / _archive.DATABASE_MEMBER)
        say(f"copying {len(manifest.bundles)} bundles and {len(manifest.images)} images")
        partial = work / "backup.tar.gz"
        with _archive.open_for_writing(partial) as tar:
            writer = _archive.Writer(tar)
            writer.add_file(work / _archive.DATABASE_MEMBER, _archive.DATABASE_MEMBER)
            _add_keys(writer, settings.keys_dir, "keys")
            _add_keys(writer, settings.ledger_keys_dir, "ledger-keys")
            _add_store(writer, ArtifactStore(settings.artifacts_dir), manifest)
            manifest = _with_files(manifest, writer.files)
            writer.finish(manifest)
        os.replace(partial, path)
    except OSError as error:
        raise BackupError(f"cannot write the backup: {error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


async def _dump(target: _postgres.Target, out: Path) -> _archive.Manifest:
    engine = create_async_engine(async_url(target.url))
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with conn.begin():
                return await _dump_snapshot(conn, target, out)
    except (DBAPIError, OSError) as error:
        raise BackupError(f"cannot read {target.shown}: {_first_line(error)}") from None
    finally:
        await engine.dispose()


async def _dump_snapshot(
    conn: AsyncConnection, target: _postgres.Target, out: Path
) -> _archive.Manifest:
    server_version = str(await conn.scalar(text("SHOW server_version"))).split()[0]
    pg_dump_version = await _postgres.program_version(target.tools.pg_dump)
    _postgres.check_dump_version(pg_dump_version, server_version, target.tools.pg_dump)
    try:
        revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    except ProgrammingError:
        raise BackupError(f"{target.shown} holds no Foretell schema") from None
    snapshot = str(await conn.scalar(text("SELECT pg_export_snapshot()")))
    bundles = list(await conn.scalars(text("SELECT DISTINCT digest FROM versions ORDER BY 1")))
    images = list(
        await conn.scalars(
            text(
                "SELECT DISTINCT image_digest FROM versions "
                "WHERE image_digest IS NOT NULL ORDER BY 1"
            )
        )
    )
    # The transaction stays open until pg_dump has its snapshot and is done.
    await _postgres.dump(target.tools, target.url, snapshot, out)
    return _archive.Manifest(
        created_at=datetime.now(UTC).isoformat(),
        foretell_version=importlib.metadata.version("foretell"),
        schema_revision=str(revision),
        server_version=server_version,
        pg_dump_version=pg_dump_version,
        bundles=[str(d) for d in bundles],
        images=[str(d) for d in images],
    )


def _add_keys(writer: _archive.Writer, directory: Path, name: str) -> None:
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        # Dot files are lock and temporary files, not keys.
        if path.is_file() and not path.name.startswith("."):
            writer.add_file(path, f"{name}/{path.name}")


def _add_store(writer: _archive.Writer, store: ArtifactStore, manifest: _archive.Manifest) -> None:
    for digest in manifest.bundles:
        source = store.bundle_path(digest)
        if not source.is_file():
            raise BackupError(f"bundle {digest} is in the database but missing from {store.root}")
        writer.add_file(source, f"store/bundles/{source.name}", expect=digest)
    for digest in manifest.images:
        try:
            source = store.verified_image(digest)
        except ArtifactCorrupt:
            raise BackupError(
                f"image {digest} is in the database but missing from {store.root} or damaged"
            ) from None
        writer.add_tree(source, f"store/images/{source.name}")


def _with_files(
    manifest: _archive.Manifest, files: dict[str, _archive.FileEntry]
) -> _archive.Manifest:
    return _archive.Manifest(**{**vars(manifest), "files": dict(files)})


def _first_line(error: BaseException) -> str:
    with contextlib.suppress(Exception):
        return str(getattr(error, "orig", error)).strip().splitlines()[0]
    return type(error).__name__
