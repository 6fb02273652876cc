"""The backup archive: a gzip'd tar whose first member says what it is (`format.json`) and
whose last is the manifest (`manifest.json`): versions, the created time, and the sha256 and
size of every other member. A restore extracts it into scratch space, then checks the member
list and every digest against the manifest before anything in the target is touched.

Members: `database.sql`, `keys/*`, `ledger-keys/*`, `store/bundles/<hex>` and
`store/images/<hex>/...` (the store's own layout)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from foretell.backup._errors import BackupError
from foretell.store import sha256_file

FORMAT = "foretell-backup"
FORMAT_VERSION = 1
FORMAT_MEMBER = "format.json"
MANIFEST_MEMBER = "manifest.json"
DATABASE_MEMBER = "database.sql"
# Fast rather than small: bundles are already compressed, and wheels mostly are.
_COMPRESS_LEVEL = 1
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    created_at: str
    foretell_version: str
    schema_revision: str
    server_version: str
    pg_dump_version: str
    # The store objects the database refers to, by digest (`sha256:<hex>`).
    bundles: list[str]
    images: list[str]
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> bytes:
        document = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(document, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data)
            files = {
                str(name): FileEntry(str(entry["sha256"]), int(entry["size"]))
                for name, entry in document["files"].items()
            }
            return cls(
                created_at=str(document["created_at"]),
                foretell_version=str(document["foretell_version"]),
                schema_revision=str(document["schema_revision"]),
                server_version=str(document["server_version"]),
                pg_dump_version=str(document["pg_dump_version"]),
                bundles=[str(d) for d in document["bundles"]],
                images=[str(d) for d in document["images"]],
                files=files,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BackupError("the archive's manifest is malformed") from None


class _Hashing(io.RawIOBase):
    """Reads through `inner`, hashing what passes: each file is read once, into the tar."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.digest.update(data)
        return data


class Writer:
    """Adds members to an open tar and records their digests for the manifest."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.files: dict[str, FileEntry] = {}
        self._bytes(FORMAT_MEMBER, json.dumps({"format": FORMAT, "version": FORMAT_VERSION}))

    def add_file(self, source: Path, name: str, *, expect: str | None = None) -> None:
        """Adds `source` as `name`; with `expect`, fails unless its sha256 is that digest."""
        info = self.tar.gettarinfo(str(source), arcname=name)
        _anonymous(info)
        with open(source, "rb") as f:
            hashing = _Hashing(f)
            self.tar.addfile(info, hashing)
        digest = f"sha256:{hashing.digest.hexdigest()}"
        if expect is not None and digest != expect:
            raise BackupError(f"{source} does not match its digest {expect}: the store is damaged")
        self.files[name] = FileEntry(digest, info.size)

    def add_tree(self, root: Path, name: str) -> None:
        for directory, dirnames, filenames in os.walk(root):
            dirnames.sort()
            relative = Path(directory).relative_to(root)
            info = self.tar.gettarinfo(directory, arcname=str(Path(name, relative)))
            _anonymous(info)
            self.tar.addfile(info)
            for filename in sorted(filenames):
                self.add_file(Path(directory, filename), str(Path(name, relative, filename)))

    def finish(self, manifest: Manifest) -> None:
        self._bytes(MANIFEST_MEMBER, manifest.to_json().decode())

    def _bytes(self, name: str, text: str) -> None:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o600
        self.tar.addfile(info, io.BytesIO(data))


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owners mean nothing on another machine; a restore writes files as itself.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@contextlib.contextmanager
def open_for_writing(path: Path) -> Iterator[tarfile.TarFile]:
    """A new archive at `path`, readable by its owner only: it holds the signing keys."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with (
        os.fdopen(fd, "wb") as out,
        tarfile.open(fileobj=out, mode="w:gz", compresslevel=_COMPRESS_LEVEL) as tar,
    ):
        yield tar


def _only_files_and_directories(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    # The data filter already refuses absolute paths, `..`, devices and links out of the tree;
    # a backup holds nothing but files and directories, so anything else is refused too.
    checked = tarfile.data_filter(member, path)
    if not (checked.isfile() or checked.isdir()):
        raise BackupError(f"the archive holds {member.name!r}, which is not a file or directory")
    return checked


def extract(archive: Path, into: Path) -> Manifest:
    """Extracts `archive` into `into` (an empty directory) and checks every member against the
    manifest. Raises BackupError on anything but a whole, unmodified Foretell backup."""
    _check_compressed_stream(archive)
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - closed by `with tar` below
    except (tarfile.TarError, EOFError, zlib.error):
        raise BackupError(f"{archive} is not a Foretell backup (not a readable archive)") from None
    try:
        with tar:
            first = tar.next()
            if first is None or first.name != FORMAT_MEMBER or not first.isfile():
                raise BackupError(f"{archive} is not a Foretell backup")
            _check_format(tar.extractfile(first))
            # Filtered: the data filter, and nothing but files and directories.
            tar.extractall(into, filter=_only_files_and_directories)  # noqa: S202
    except tarfile.FilterError as error:
        raise BackupError(f"{archive} holds an unsafe member: {error}") from None
    except (EOFError, zlib.error, tarfile.TarError):
        raise BackupError(f"{archive} is corrupt or truncated") from None
    manifest_path = into / MANIFEST_MEMBER
    if not manifest_path.is_file():
        raise BackupError(f"{archive} is truncated or incomplete: it has no manifest")
    manifest = Manifest.from_json(manifest_path.read_bytes())
    _check_members(archive, into, manifest)
    return manifest


def _check_compressed_stream(archive: Path) -> None:
    """Reads a gzip'd archive to its end: its CRC and length trailer catch a file cut short
    after the tar's last member, which the tar reader never reaches."""
    with open(archive, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return
    try:
        with gzip.open(archive, "rb") as stream:
            while stream.read(_CHUNK):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise BackupError(f"{archive} is corrupt or truncated") from None


def _check_format(member: IO[bytes] | None) -> None:
    try:
        document: Any = json.loads(member.read() if member else b"")
        version = document["version"] if document["format"] == FORMAT else None
    except (ValueError, KeyError, TypeError):
        version = None
    if version is None:
        raise BackupError("not a Foretell backup")
    if version != FORMAT_VERSION:
        raise BackupError(
            f"backup format version {version} is not one this Foretell reads ({FORMAT_VERSION})"
        )


def _check_members(archive: Path, root: Path, manifest: Manifest) -> None:
    found: set[str] = set()
    for directory, _dirs, filenames in os.walk(root):
        for filename in filenames:
            found.add(str(Path(directory, filename).relative_to(root)))
    found -= {FORMAT_MEMBER, MANIFEST_MEMBER}
    if missing := sorted(set(manifest.files) - found):
        raise BackupError(f"{archive} is incomplete: {missing[0]} (and {len(missing) - 1} more)")
    if extra := sorted(found - set(manifest.files)):
        raise BackupError(f"{archive} holds {extra[0]}, which its manifest does not list")
    for name, entry in sorted(manifest.files.items()):
        if sha256_file(root / name) != entry.sha256:
            raise BackupError(f"{archive} is corrupt: {name} does not match the manifest")
