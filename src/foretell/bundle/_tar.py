"""The canonical bundle format: the exact bytes of a tar archive for a given set of files.

A bundle's digest is the sha256 of its bytes, so the same files must always give the same bytes.
This module owns the encoding (it does not call `tarfile` to write) so that the bytes cannot shift
with the Python version; the packer writes with it and the server's reader compares every header
against it. It matches what `tarfile` writes in PAX_FORMAT for a normalised `TarInfo`, so standard
tools read a bundle, and the tests hold the two together.

The format, for files sorted bytewise by UTF-8 path (directories are implied by paths, never
stored):

- one ustar header per file: mode 0644, or 0755 if any exec bit was set; uid, gid, mtime 0;
  uname and gname empty; typeflag '0'; magic "ustar\\0" version "00"; prefix unused;
- before it, a pax extended header ('x', named "././@PaxHeader", all metadata zero) carrying only
  a `path` record, when the path is over 100 bytes or not ASCII. POSIX pax rather than GNU
  long-name entries: it is the standard, it defines paths as UTF-8, and a single record form
  covers every long path with no choice of where to split (ustar's prefix field would need one);
- the file's data, zero-padded to a 512-byte block;
- two zero blocks, then zeros to a multiple of 10240 bytes (tar's default record size).
"""

from __future__ import annotations

BLOCK = 512
RECORD = 20 * BLOCK
ZERO_BLOCK = bytes(BLOCK)
MODE_FILE = 0o644
MODE_EXECUTABLE = 0o755
# The largest size that fits the ustar field (11 octal digits); Limits keep files far below it.
MAX_USTAR_SIZE = 8**11 - 1

_NAME_LEN = 100
_PAX_NAME = b"././@PaxHeader"
# Everything after the typeflag is the same in every header we write: empty linkname, POSIX
# magic and version, empty uname/gname, empty device numbers, empty prefix, block padding.
_TAIL = bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)
_ZERO_IDS = b"0000000\x00" * 2  # uid, gid
_ZERO_MTIME = b"00000000000\x00"
_BLANK_CHECKSUM = b" " * 8


def _ustar(name: bytes, mode: int, size: int, typeflag: bytes) -> bytes:
    block = b"".join(
        (
            name.ljust(_NAME_LEN, b"\x00"),
            b"%07o\x00" % mode,
            _ZERO_IDS,
            b"%011o\x00" % size,
            _ZERO_MTIME,
            _BLANK_CHECKSUM,
            typeflag,
            _TAIL,
        )
    )
    # The checksum is the byte sum with its own field as spaces, written as tar writes it.
    return block[:148] + b"%06o\x00 " % sum(block) + block[156:]


def _pax_record(key: bytes, value: bytes) -> bytes:
    # A record is "<length> <key>=<value>\n" where <length> counts its own digits too.
    body = len(key) + len(value) + 3
    length = body + len(str(body))
    if len(str(length)) != len(str(body)):
        length += 1
    return b"%d %s=%s\n" % (length, key, value)


def pad(size: int) -> int:
    """Zero bytes after `size` bytes of data, to the next block."""
    return -size % BLOCK


def entry_header(path: bytes, size: int, executable: bool) -> bytes:
    """The header bytes of a file entry: a pax header when needed, then the ustar header."""
    mode = MODE_EXECUTABLE if executable else MODE_FILE
    if len(path) <= _NAME_LEN and path.isascii():
        return _ustar(path, mode, size, b"0")
    records = _pax_record(b"path", path)
    # In the ustar header, the name as tarfile leaves it: ASCII with '?' for the rest, cut.
    fallback = path.decode("utf-8").encode("ascii", "replace")[:_NAME_LEN]
    return b"".join(
        (
            _ustar(_PAX_NAME, 0, len(records), b"x"),
            records,
            bytes(pad(len(records))),
            _ustar(fallback, mode, size, b"0"),
        )
    )


def archive_size(end: int) -> int:
    """Total size of an archive whose last entry ends at `end`: two zero blocks, then padding
    to a whole record."""
    return -(-(end + 2 * BLOCK) // RECORD) * RECORD
