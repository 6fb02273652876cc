"""The content-addressed artifact store: bundles by their sha256, built images by the digest
of their file tree. Nothing in it is ever modified; every read re-verifies the digest, so a
file changed on disk behind the platform's back is caught before it is used.

Images are re-verified before every run, and hashing a 100 MB image (numpy and pandas) each
time would cost more than the run. So a process remembers, per image, the stat fingerprint of
its tree when it last hashed it in full (every entry's path, inode, mode, size, mtime and
ctime) and re-hashes only when that fingerprint changed. Any write, chmod, rename or
replacement of an entry moves its ctime (which no unprivileged call can set back) or its inode;
only root able to reset the system clock could slip past, and root owns the worker anyway.

Even the fingerprint (one lstat per entry: ~7,000 to 11,000 for numpy, pandas and
scikit-learn, 30-100 ms of CPU) is too much before every run of a slot of a thousand versions
sharing an image on two cores. So, after a full check, the process also watches every
directory of the image with inotify (foretell._inotify: one instance per process, at most
`WATCH_BUDGET` watches, least recently verified images dropped first), and a check is then one
read of the inotify queue and one stat of the image's root:
- every write, truncation, chmod, chown, utime, creation, removal or rename made through the
  image's own paths queues an event on the watch of its directory before the call returns, so
  the next check sees it, fingerprints the tree again (and hashes it when that changed), as
  before; a full event queue counts as a change to every image;
- the image's directory replaced by another (a rename of it or of a parent) shows as another
  inode at its path;
- what inotify does not report (a write through a hard link made outside the image or through
  a shared writable mapping, both needing root since the files are read-only; a change made on
  a network filesystem from another host) still moves the fingerprint, which is taken again at
  the first check `REFINGERPRINT_S` after the last: such a change is caught that much later
  instead of at the next run. That is the trade: a minute's delay on changes only root or
  another host can make, against a fingerprint per run;
- where inotify is not available or refuses more watches, every check fingerprints, as
  before."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import stat
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from foretell import _inotify

_CHUNK = 1024 * 1024


class ArtifactCorrupt(Exception):
    """An artifact's content no longer matches its digest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def tree_digest(root: Path) -> str:
    """Digest of a directory tree: every regular file's relative path, executable bit and
    content, in sorted order. Timestamps and owners do not count, so the same build inputs
    give the same digest. Anything but files and directories is refused."""
    return _tree_digests(root, ())[0]


def _tree_digests(root: Path, parts: Collection[str]) -> tuple[str, dict[str, str]]:
    """`tree_digest(root)`, and `tree_digest(root / part)` of each top-level directory in
    `parts`, from one read of the files: a part's lines are the root's under its prefix."""
    outer = hashlib.sha256()
    inner = {part: hashlib.sha256() for part in parts}
    entries: list[tuple[str, Path]] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArtifactCorrupt(f"{path.relative_to(root)}: not a file or directory")
        entries += [
            (str(Path(directory, f).relative_to(root)), Path(directory, f)) for f in filenames
        ]
    for relative, path in sorted(entries, key=lambda e: e[0].encode()):
        executable = "x" if path.stat().st_mode & 0o111 else "-"
        rest = f"\0{executable}\0{sha256_file(path)}\n"
        outer.update(f"{relative}{rest}".encode())
        top, slash, below = relative.partition("/")
        if slash and (part := inner.get(top)) is not None:
            # Dropping a common prefix keeps the sorted order.
            part.update(f"{below}{rest}".encode())
    return f"sha256:{outer.hexdigest()}", {
        name: f"sha256:{h.hexdigest()}" for name, h in inner.items()
    }


def tree_fingerprint(root: Path) -> str:
    """A cheap summary of a tree's metadata (no file is read): changes whenever any entry is
    written, replaced, renamed, added, removed or has its mode changed. Runs before every run
    on images of thousands of files (numpy, pandas, scipy: ~7,000), so it is one lstat per
    entry through scandir and byte formatting, no Path objects."""
    outer = hashlib.sha256()
    stack = [(os.fsencode(root), b".")]
    while stack:
        path, relative = stack.pop()
        st = os.lstat(path)
        outer.update(b"%s\0%d %d %d %d %d\n" % (relative, *_fields(st)))
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            name = relative + b"/" + entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, name))
            else:
                fields = _fields(entry.stat(follow_symlinks=False))
                outer.update(b"%s\0%d %d %d %d %d\n" % (name, *fields))
    return outer.hexdigest()


def _fields(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# Seconds after which a watched image is fingerprinted again whatever inotify said (module doc).
REFINGERPRINT_S = 60.0


@dataclass(frozen=True)
class _Verified:
    digest: str
    # The tree's fingerprint when `digest` was last computed.
    fingerprint: str
    # The root's (st_dev, st_ino) and when the fingerprint was last taken and matched.
    root: tuple[int, int]
    checked_at: float
    watched: bool
    # tree_digest of each top-level directory, from the same hash as `digest`.
    parts: dict[str, str] = dataclasses.field(default_factory=dict)


_verified: dict[Path, _Verified] = {}
# One check of an image at a time: concurrent runs of one image wait for one hash.
_image_locks: defaultdict[Path, threading.Lock] = defaultdict(threading.Lock)


def _still_verified(path: Path, digest: str) -> bool:
    """The cheap check (module doc): the image is watched, nothing changed in it, its root is
    the same directory, and its fingerprint is recent enough."""
    record = _verified.get(path)
    if record is None or record.digest != digest or not record.watched:
        return False
    if time.monotonic() - record.checked_at >= REFINGERPRINT_S:
        return False
    if not _inotify.unchanged(path):
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == record.root


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return value


def _last_write(root: Path) -> float:
    """The newest modification time in a tree (0 when it is gone)."""
    newest = 0.0
    for directory, _dirs, files in os.walk(root):
        for name in (directory, *(os.path.join(directory, f) for f in files)):
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(name).st_mtime)
    return newest


def _make_read_only(root: Path) -> None:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            path.chmod(path.stat().st_mode & 0o555)
        Path(directory).chmod(0o555)


@dataclass(frozen=True)
class ArtifactStore:
    root: Path

    def scratch(self, kind: str = "") -> Path:
        """A new private working directory inside the store's filesystem, so finished
        artifacts move into place with an atomic rename. `kind` groups them (uploads), so one
        kind can be swept without touching another's."""
        path = self.root / "tmp" / kind / uuid.uuid4().hex
        # Searchable (not listable) by others: the sandbox bind-mounts an image being built
        # from here as the jail's unprivileged user.
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        path.mkdir(mode=0o711)
        return path

    def sweep_scratch(self, kind: str, idle: timedelta, now: datetime) -> int:
        """Removes the working directories of `kind` in which nothing was written for `idle`
        (left by a process that died mid-work); returns how many it removed. Directories still
        being written to (another process's work in progress) stay."""
        parent = self.root / "tmp" / kind
        removed = 0
        for path in parent.iterdir() if parent.is_dir() else ():
            if now.timestamp() - _last_write(path) >= idle.total_seconds():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def bundle_path(self, digest: str) -> Path:
        return self.root / "bundles" / _hex(digest)

    def put_bundle(self, source: Path, digest: str) -> Path:
        """Moves `source` (a file in scratch space) into the store as `digest`."""
        if sha256_file(source) != digest:
            raise ArtifactCorrupt(f"bundle does not match {digest}")
        target = self.bundle_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        source.chmod(0o444)
        if target.exists():
            source.unlink()
        else:
            os.replace(source, target)
        return target

    def read_bundle(self, digest: str) -> bytes:
        data = self.bundle_path(digest).read_bytes()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise ArtifactCorrupt(f"bundle {digest} was modified in the store")
        return data

    def image_path(self, image_digest: str) -> Path:
        return self.root / "images" / _hex(image_digest)

    def put_image(self, built: Path) -> str:
        """Moves a built image directory into the store; returns its digest. An identical
        image already there is kept and `built` discarded."""
        digest = tree_digest(built)
        target = self.image_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(built)
        else:
            _make_read_only(built)
            os.replace(built, target)
        return digest

    def verified_image(self, image_digest: str) -> Path:
        """The image's directory, after checking its files still match its digest: hashed in
        full unless this process hashed it before and no entry changed since (module doc)."""
        path = self.image_path(image_digest)
        with _image_locks[path]:
            if _still_verified(path, image_digest):
                return path
            return _verify(path, image_digest)

    def verified_part(self, image_digest: str, name: str) -> str:
        """`tree_digest` of the image's top-level directory `name` (its site-packages: the
        layer warm templates share), as of the last full hash of the image in this process;
        call it after `verified_image`. Hashed here only when this process has no such hash."""
        path = self.image_path(image_digest)
        record = _verified.get(path)
        if record is not None and record.digest == image_digest and name in record.parts:
            return record.parts[name]
        return tree_digest(path / name)


def _verify(path: Path, image_digest: str) -> Path:
    if not path.is_dir():
        _inotify.unwatch(path)
        raise ArtifactCorrupt(f"image {image_digest} is missing or was modified")
    # Watched before the fingerprint, the fingerprint taken before hashing: a change after
    # either makes the next check look again.
    watched = _inotify.watch(path)
    try:
        record = _check(path, image_digest)
    except BaseException:
        _inotify.unwatch(path)
        raise
    _verified[path] = dataclasses.replace(record, watched=watched)
    return path


def _check(path: Path, image_digest: str) -> _Verified:
    st = os.stat(path)
    fingerprint = tree_fingerprint(path)
    record = _verified.get(path)
    if record is not None and (record.digest, record.fingerprint) == (image_digest, fingerprint):
        parts = record.parts
    else:
        _verified.pop(path, None)
        tops = [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
        digest, parts = _tree_digests(path, tops)
        if digest != image_digest:
            raise ArtifactCorrupt(f"image {image_digest} is missing or was modified")
    return _Verified(
        image_digest, fingerprint, (st.st_dev, st.st_ino), time.monotonic(), False, parts
    )
