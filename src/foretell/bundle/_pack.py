"""Packing a model folder into its canonical bundle (the CLI side of `foretell push`).

The folder is scanned first (names, types, limits: every problem reported at once, nothing read
yet), then the archive is laid out in one buffer of its exact final size and each file is read
straight into its place, so file data is copied once; a second thread hashes the buffer as it
fills. The packer runs on the provider's machine, so it sticks to portable os calls.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from foretell.bundle._limits import DEFAULT_LIMITS, Limits, format_bytes
from foretell.bundle._paths import NameIndex, bundle_error, entry_error, path_problem, printable
from foretell.bundle._tar import archive_size, entry_header, pad
from foretell.errors import FieldViolation, Violations

# Never part of a model: version control, caches, virtualenvs, build metadata, the CLI's own
# state. Skipped wherever they are in the tree, without looking inside (a virtualenv is full of
# symlinks, which would otherwise be errors).
SKIPPED_DIRS = frozenset(
    {".git", ".hg", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".foretell"}
)
SKIPPED_DIR_SUFFIXES = (".egg-info",)
SKIPPED_FILES = frozenset({".DS_Store"})
SKIPPED_FILE_SUFFIXES = (".pyc",)

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    # A file swapped for a symlink after the scan is not followed, and a FIFO does not block.
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
)
# Big enough that each update releases the GIL and costs little to hand over.
_HASH_CHUNK = 1 << 20
# A folder with a thousand symlinks needs one message per kind of mistake, not a thousand.
_MAX_REPORTED = 20
_KINDS = (
    (stat.S_ISLNK, "symbolic link (links are never followed)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISSOCK, "socket"),
)


@dataclass(frozen=True)
class PackedBundle:
    data: bytes
    digest: str
    size: int
    files: int
    # Relative paths left out by the skip rules, directories with a trailing "/". Names are as
    # the filesystem gave them: show them with `printable`.
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class _Source:
    name: bytes
    path: str
    size: int
    executable: bool


def pack_dir(directory: Path, limits: Limits = DEFAULT_LIMITS) -> PackedBundle:
    if not directory.is_dir():
        raise bundle_error(f"{printable(str(directory))} is not a directory")
    sources, skipped = _scan(str(directory), limits)
    sources.sort(key=lambda s: s.name)
    headers = [entry_header(s.name, s.size, s.executable) for s in sources]
    end = sum(len(h) + s.size + pad(s.size) for h, s in zip(headers, sources, strict=True))
    total = archive_size(end)
    if total > limits.max_bundle_bytes:
        raise bundle_error(
            f"bundle would be {format_bytes(total)}, over the limit of "
            f"{format_bytes(limits.max_bundle_bytes)}"
        )
    data, digest = _fill(sources, headers, total)
    return PackedBundle(
        data=data,
        digest=digest,
        size=total,
        files=len(sources),
        skipped=tuple(sorted(skipped, key=lambda p: p.encode("utf-8", "surrogateescape"))),
    )


def _skip(name: str, is_dir: bool) -> bool:
    if name in SKIPPED_DIRS or name.endswith(SKIPPED_DIR_SUFFIXES):
        return True
    # A symlinked `.venv` is skipped like a real one, so only directories escape file rules.
    return not is_dir and (name in SKIPPED_FILES or name.endswith(SKIPPED_FILE_SUFFIXES))


def _scan(root: str, limits: Limits) -> tuple[list[_Source], list[str]]:
    sources: list[_Source] = []
    skipped: list[str] = []
    found = Violations()
    names = NameIndex()
    total = 0
    pending = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listing = list(entries)
        except OSError as e:
            found.add("bundle", f"folder {printable(prefix or '.')}: cannot read ({e.strerror})")
            continue
        for entry in listing:
            rel = prefix + entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if _skip(entry.name, is_dir):
                skipped.append(rel + "/" if is_dir else rel)
                continue
            if is_dir:
                pending.append((rel + "/", entry.path))
                continue
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
                found.add(
                    "bundle", f"entry {printable(rel)}: {kind}; a bundle holds only regular files"
                )
                continue
            if problem := path_problem(rel) or names.add(rel):
                found.add("bundle", f"entry {printable(rel)}: {problem}")
                continue
            if st.st_size > limits.max_file_bytes:
                found.add(
                    "bundle",
                    f"entry {printable(rel)}: {format_bytes(st.st_size)}, over the per-file "
                    f"limit of {format_bytes(limits.max_file_bytes)}",
                )
            total += st.st_size
            sources.append(
                _Source(rel.encode("utf-8"), entry.path, st.st_size, bool(st.st_mode & 0o111))
            )
            if len(sources) > limits.max_entries:
                # Stop here: the folder may be huge (a stray node_modules), and this is enough.
                found.add("bundle", f"more than {limits.max_entries} files to pack")
                pending.clear()
                break
    if total > limits.max_total_bytes:
        found.add(
            "bundle",
            f"files total {format_bytes(total)}, over the limit of "
            f"{format_bytes(limits.max_total_bytes)}",
        )
    if len(found.items) > _MAX_REPORTED:
        more = len(found.items) - _MAX_REPORTED
        found.items[_MAX_REPORTED:] = [FieldViolation("bundle", f"and {more} more problems")]
    found.raise_if_any()
    return sources, skipped


def _fill(sources: list[_Source], headers: list[bytes], total: int) -> tuple[bytes, str]:
    """The archive's bytes and their sha256, hashed by a second thread as the files are read."""
    # A fresh bytes object held only by the BytesIO is its buffer, writable in place and handed
    # back by getvalue() without a copy (CPython; elsewhere it is copied, still correct). bytes(n)
    # comes from calloc, so the zeros that padding and trailer need cost nothing.
    out = io.BytesIO(bytes(total))
    with out.getbuffer() as view:
        hasher = _Hasher()
        try:
            offset = hashed = 0
            for source, header in zip(sources, headers, strict=True):
                view[offset : offset + len(header)] = header
                offset += len(header)
                _read_into(source, view[offset : offset + source.size])
                offset += source.size + pad(source.size)
                if offset - hashed >= _HASH_CHUNK:
                    hasher.feed(view[hashed:offset])
                    hashed = offset
            hasher.feed(view[hashed:])
        finally:
            digest = hasher.finish()
    return out.getvalue(), digest


class _Hasher:
    """sha256 on a worker thread: hashlib releases the GIL on large updates, so hashing runs
    beside the reading instead of after it."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._chunks: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bundle-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._sha.update(chunk)

    def feed(self, chunk: memoryview) -> None:
        self._chunks.put(chunk)

    def finish(self) -> str:
        self._chunks.put(None)
        self._thread.join()
        return "sha256:" + self._sha.hexdigest()


def _read_into(source: _Source, target: memoryview) -> None:
    rel = source.name.decode("utf-8")
    try:
        fd = os.open(source.path, _OPEN_FLAGS)
    except OSError as e:
        raise entry_error(rel, f"cannot read ({e.strerror})") from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or before.st_size != source.size:
            raise entry_error(rel, "changed while packing; try again")
        reader = io.FileIO(fd, "r", closefd=False)
        done = 0
        while done < source.size:
            n = reader.readinto(target[done:])
            if not n:
                raise entry_error(rel, "changed while packing; try again")
            done += n
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise entry_error(rel, "changed while packing; try again")
    except OSError as e:
        raise entry_error(rel, f"cannot read ({e.strerror})") from None
    finally:
        os.close(fd)
