"""Checking an uploaded bundle without trusting it (the server side), and extracting it.

The archive is parsed here, in one forward pass over its bytes, rather than by `tarfile`: the
server must not depend on the interpreter's patch level for hostile input (tarfile has had
header-parsing CVEs: ReDoS in pax headers, loops on negative sizes), and a canonical bundle
needs every header compared byte for byte with the encoding the packer uses anyway. Parsing
reads just enough of each header to say precisely what is wrong (a link, a device, a path that
leaves the bundle, a size over the limits), checks the limits on declared sizes before looking
at any data, and then requires the header bytes to be exactly the canonical ones. So an
accepted bundle is byte for byte what `pack_dir` makes of its files, and its digest names its
content.

Nothing is written until the whole bundle, manifest included, has passed.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from foretell.bundle._limits import DEFAULT_LIMITS, Limits, format_bytes
from foretell.bundle._paths import NameIndex, bundle_error, entry_error, path_problem, printable
from foretell.bundle._tar import BLOCK, ZERO_BLOCK, archive_size, entry_header, pad
from foretell.bundle.manifest import MANIFEST_NAME, Manifest, check_fields, entrypoint_files
from foretell.errors import InvalidArgument

# A pax or GNU long-name header only carries a path (at most 1 KiB); anything larger is hostile.
_MAX_EXTENSION_BYTES = 64 * 1024
_EXTENSIONS = (b"x", b"L", b"K")
_REGULAR = (b"0", b"\x00")
_KINDS = {
    b"3": "character device",
    b"4": "block device",
    b"5": "directory entry (directories are implied by file paths)",
    b"6": "named pipe (FIFO)",
}
_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip-compressed"),
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"PK\x03\x04", "a zip archive"),
)
_POSIX_MAGIC = b"ustar\x00"
# Extraction is server side (POSIX); getattr keeps the module importable by the CLI anywhere.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW


@dataclass(frozen=True)
class BundleFile:
    path: str
    size: int
    executable: bool


@dataclass(frozen=True)
class BundleContents:
    digest: str
    size: int
    files: tuple[BundleFile, ...]
    manifest: Manifest


def read_bundle(source: bytes | Path, limits: Limits = DEFAULT_LIMITS) -> BundleContents:
    contents, _, _ = _read(source, limits)
    return contents


def extract_bundle(
    source: bytes | Path, dest: Path, limits: Limits = DEFAULT_LIMITS
) -> BundleContents:
    """Checks the bundle as read_bundle does, then writes its files under `dest`, which must be
    an empty or missing directory. Problems of the destination itself are the server's, not the
    client's, so they raise OSError rather than InvalidArgument."""
    contents, data, offsets = _read(source, limits)
    _write(data, contents.files, offsets, dest)
    return contents


def _read(source: bytes | Path, limits: Limits) -> tuple[BundleContents, bytes, list[int]]:
    data = _load(source, limits)
    entries = _parse(data, limits)
    manifest = _check_manifest(data, {f.path: (f, offset) for f, offset in entries})
    contents = BundleContents(
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
        size=len(data),
        files=tuple(f for f, _ in entries),
        manifest=manifest,
    )
    return contents, data, [offset for _, offset in entries]


def _load(source: bytes | Path, limits: Limits) -> bytes:
    limit = limits.max_bundle_bytes
    if isinstance(source, Path):
        with source.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise _too_large(size, limit)
            data = f.read(limit + 1)
    else:
        data = source
    if len(data) > limit:
        raise _too_large(len(data), limit)
    if not data:
        raise bundle_error("bundle is empty")
    return data


def _too_large(size: int, limit: int) -> InvalidArgument:
    return bundle_error(f"bundle is {format_bytes(size)}, over the limit of {format_bytes(limit)}")


def _not_canonical(detail: str) -> InvalidArgument:
    return bundle_error(f"bundle is not canonical ({detail}); pack it with `foretell push`")


def _corrupt(at: int, detail: str) -> InvalidArgument:
    return bundle_error(f"bundle is corrupt: {detail} at byte {at}")


def _truncated(detail: str) -> InvalidArgument:
    return bundle_error(f"bundle is truncated ({detail})")


class _Header(NamedTuple):
    start: int  # first byte of the entry's headers, pax header included
    data_start: int
    typeflag: bytes
    name: bytes
    linkname: bytes
    size: int
    mode: int


def _parse(data: bytes, limits: Limits) -> list[tuple[BundleFile, int]]:
    view = memoryview(data)
    entries: list[tuple[BundleFile, int]] = []
    names = NameIndex()
    # The first departure from the canonical form is reported only once every entry has passed
    # the safety checks, so a hostile archive is refused for what makes it hostile (a link, a
    # path out, a bomb) wherever that sits, not for its first unsorted entry.
    not_canonical: list[str] = []
    previous = b""
    total = 0
    pos = 0
    while (header := _next_header(view, pos)) is not None:
        if len(entries) == limits.max_entries:
            raise bundle_error(f"bundle has more than {limits.max_entries} entries")
        path = header.name.decode("utf-8", "surrogateescape")
        _check_entry(header, path, limits)
        total += header.size
        if total > limits.max_total_bytes:
            raise bundle_error(
                f"bundle unpacks to more than {format_bytes(limits.max_total_bytes)} "
                f"(at entry {printable(path)})"
            )
        if problem := names.add(path):
            raise entry_error(path, problem)
        end = header.data_start + header.size
        pos = end + pad(header.size)
        if pos > len(data):
            raise _truncated(f"inside entry {printable(path)}")
        executable = bool(header.mode & 0o111)
        entries.append((BundleFile(path, header.size, executable), header.data_start))
        if not not_canonical:
            not_canonical += _departures(view, header, path, previous, executable, end, pos)
        previous = header.name
    if len(data) < pos + 2 * BLOCK:
        raise _truncated("incomplete end-of-archive marker")
    if len(data) < archive_size(pos):
        raise _truncated("the archive's last record is incomplete")
    if not_canonical:
        raise _not_canonical(not_canonical[0])
    if len(data) > archive_size(pos) or data.count(0, pos) != len(data) - pos:
        raise _not_canonical("bytes after the end-of-archive marker")
    return entries


def _departures(
    view: memoryview,
    header: _Header,
    path: str,
    previous: bytes,
    executable: bool,
    end: int,
    pos: int,
) -> list[str]:
    """How this entry departs from the canonical form: its place, its header, its padding."""
    if header.name < previous:
        return [f"entry {printable(path)} is out of order, after {printable(previous.decode())}"]
    if view[header.start : header.data_start] != entry_header(header.name, header.size, executable):
        return [f"entry {printable(path)}: metadata is not normalised"]
    if view[end:pos] != ZERO_BLOCK[: pos - end]:
        return [f"entry {printable(path)}: padding is not zeros"]
    return []


def _next_header(view: memoryview, pos: int) -> _Header | None:
    """The next entry's header at `pos`, with any pax or GNU long-name headers before it
    applied, or None at the end-of-archive marker."""
    start = pos
    extended: dict[bytes, bytes] = {}
    while (block := _header_block(view, pos, start)) is not None:
        typeflag = block[156:157]
        size = _number(block[124:136], pos)
        pos += BLOCK
        if typeflag not in _EXTENSIONS:
            break
        if size > _MAX_EXTENSION_BYTES:
            raise _corrupt(pos - BLOCK, f"extended header of {format_bytes(size)}")
        payload = bytes(view[pos : pos + size])
        if len(payload) < size:
            raise _truncated("inside an extended header")
        if typeflag == b"x":
            extended.update(_pax_records(payload, pos))
        else:  # GNU long name ('L') or long link target ('K'), NUL-terminated
            extended[b"path" if typeflag == b"L" else b"linkpath"] = payload.rstrip(b"\x00")
        pos += size + pad(size)
    else:
        return None
    name = block[:100].rstrip(b"\x00")
    if block[257:263] == _POSIX_MAGIC and (prefix := block[345:500].rstrip(b"\x00")):
        name = prefix + b"/" + name
    return _Header(
        start=start,
        data_start=pos,
        typeflag=typeflag,
        name=extended.get(b"path", name),
        linkname=extended.get(b"linkpath", block[157:257].rstrip(b"\x00")),
        size=_pax_size(extended[b"size"], start) if b"size" in extended else size,
        mode=_number(block[100:108], start),
    )


def _header_block(view: memoryview, pos: int, start: int) -> bytes | None:
    """The header block at `pos`, or None if it is the end-of-archive marker."""
    block = bytes(view[pos : pos + BLOCK])
    if len(block) < BLOCK:
        if pos == 0:
            raise _not_tar(view)
        raise _truncated("no end-of-archive marker" if not block else "inside a header")
    if block == ZERO_BLOCK:
        if pos != start:
            raise _corrupt(pos, "extended header without an entry")
        return None
    if not _checksum_ok(block):
        raise _not_tar(view) if pos == 0 else _corrupt(pos, "bad header checksum")
    return block


def _checksum_ok(block: bytes) -> bool:
    # The sum of the header's bytes with the checksum field counted as spaces, in octal.
    stored = block[148:156].split(b"\x00", 1)[0].strip(b" ")
    if not stored or stored.strip(b"01234567"):
        return False
    return int(stored, 8) == sum(block[:148]) + 8 * 0x20 + sum(block[156:])


def _number(field: bytes, at: int) -> int:
    """A numeric header field: octal text, or GNU base-256 for large values."""
    if field[0] & 0x80:
        # 0x80 marks a positive base-256 number; 0xff a negative one, never valid here.
        if field[0] != 0x80:
            raise _corrupt(at, "negative number in a header")
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\x00", 1)[0].strip(b" ")
    if digits.strip(b"01234567"):
        raise _corrupt(at, "malformed number in a header")
    return int(digits, 8) if digits else 0


def _pax_records(payload: bytes, at: int) -> dict[bytes, bytes]:
    """pax records, "<length> <key>=<value>\\n" each, where <length> counts the whole record."""
    records: dict[bytes, bytes] = {}
    i = 0
    while i < len(payload):
        space = payload.find(b" ", i, i + 8)
        length = payload[i:space] if space > i else b""
        end = i + int(length) if length.isdigit() else 0
        if end <= space or end > len(payload) or payload[end - 1] != 0x0A:
            raise _corrupt(at, "malformed pax header")
        key, equals, value = payload[space + 1 : end - 1].partition(b"=")
        if not equals:
            raise _corrupt(at, "malformed pax header")
        records[key] = value
        i = end
    return records


def _pax_size(value: bytes, at: int) -> int:
    if not value.isdigit() or len(value) > 20:
        raise _corrupt(at, "malformed size in a pax header")
    return int(value)


def _not_tar(view: memoryview) -> InvalidArgument:
    for magic, kind in _COMPRESSIONS:
        if view[: len(magic)] == magic:
            return bundle_error(
                f"bundle is {kind}; upload the plain tar archive that `foretell push` makes"
            )
    return bundle_error("bundle is not a tar archive")


def _check_entry(header: _Header, path: str, limits: Limits) -> None:
    if header.typeflag not in _REGULAR:
        link = printable(header.linkname.decode("utf-8", "surrogateescape"))
        kind = {
            b"1": f"hard link to {link}",
            b"2": f"symbolic link to {link}",
            **_KINDS,
        }.get(header.typeflag, f"unsupported entry type {header.typeflag!r}")
        raise entry_error(path, f"{kind}; a bundle holds only regular files")
    if problem := path_problem(path):
        raise entry_error(path, problem)
    if header.size > limits.max_file_bytes:
        raise entry_error(
            path,
            f"declares {format_bytes(header.size)}, over the per-file limit of "
            f"{format_bytes(limits.max_file_bytes)}",
        )


def _check_manifest(data: bytes, files: dict[str, tuple[BundleFile, int]]) -> Manifest:
    if (found_manifest := files.get(MANIFEST_NAME)) is None:
        raise bundle_error(f"no {MANIFEST_NAME} at the bundle's root")
    file, offset = found_manifest
    manifest, found, valid = check_fields(data[offset : offset + file.size])
    requirements = valid.get("requirements")
    if isinstance(requirements, str) and requirements and requirements not in files:
        found.add("manifest.requirements", f"{printable(requirements)} is not in the bundle")
    entrypoint = valid.get("entrypoint")
    if isinstance(entrypoint, str):
        module_file, package_file = entrypoint_files(entrypoint)
        if module_file not in files and package_file not in files:
            found.add(
                "manifest.entrypoint",
                f"the bundle has neither {printable(module_file)} nor {printable(package_file)}",
            )
    found.raise_if_any()
    assert manifest is not None
    return manifest


def _write(data: bytes, files: tuple[BundleFile, ...], offsets: list[int], dest: Path) -> None:
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    if os.listdir(root):
        raise FileExistsError(errno.ENOTEMPTY, "extraction directory is not empty", str(dest))
    view = memoryview(data)
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        for file, offset in zip(files, offsets, strict=True):
            *parents, name = file.path.split("/")
            dir_fd = _open_parents(root_fd, parents)
            try:
                # Second line of defence: the path was checked, and every directory on the way
                # was opened without following links; still, it must resolve inside `dest`.
                resolved = os.path.realpath(os.path.join(root, file.path))
                if os.path.commonpath((root, resolved)) != root:
                    raise entry_error(file.path, "path leaves the bundle")
                mode = 0o755 if file.executable else 0o644
                fd = os.open(name, _WRITE_FLAGS, mode, dir_fd=dir_fd)
            finally:
                if dir_fd != root_fd:
                    os.close(dir_fd)
            try:
                os.fchmod(fd, mode)  # exact, whatever the process umask
                chunk = view[offset : offset + file.size]
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def _open_parents(root_fd: int, parents: list[str]) -> int:
    """An fd of the directory `parents` under root_fd, creating it as needed; never follows a
    symlink on the way."""
    fd = root_fd
    for part in parents:
        try:
            os.mkdir(part, 0o755, dir_fd=fd)
            created = True
        except FileExistsError:
            created = False
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            if fd != root_fd:
                os.close(fd)
        fd = child
        if created:
            os.fchmod(fd, 0o755)
    return fd
