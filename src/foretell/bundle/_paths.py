"""What a path inside a bundle may be, and how to show one in a message.

The packer, the server's reader and the manifest (its `requirements` names a bundle path) share
these rules, so a folder that packs is a bundle the server accepts. Paths are `str` decoded from
UTF-8 with "surrogateescape": bytes that are not UTF-8 survive as lone surrogates, so they can
be refused and shown without being lost.
"""

from __future__ import annotations

import re
import unicodedata

from foretell.errors import FieldViolation, InvalidArgument

# Linux's PATH_MAX is 4096 with the extraction directory in front; NAME_MAX is 255 bytes, so a
# longer component could be packed but never extracted.
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
# Far deeper than any model needs, and it bounds the per-entry work on a hostile archive.
MAX_DEPTH = 32
# Messages show at most this much of a name: a hostile archive may carry a huge one.
_SHOWN_CHARS = 120

# Unicode category Cc: C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file in a bundle, or None if it can."""
    if not path:
        return "empty name"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if _CONTROL.search(path):
        return "name contains a NUL or control character"
    if "\\" in path:
        return "name contains a backslash"
    if path.startswith("/"):
        return "absolute path"
    if len(encoded) > MAX_PATH_BYTES:
        return f"path is longer than {MAX_PATH_BYTES} bytes"
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        return f"path is more than {MAX_DEPTH} levels deep"
    depth = 0
    for part in parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return "path leaves the bundle"
        elif part in ("", "."):
            return "empty or '.' path component"
        elif len(part.encode("utf-8")) > MAX_NAME_BYTES:
            return f"a path component is longer than {MAX_NAME_BYTES} bytes"
        else:
            depth += 1
    # Even when it stays inside, ".." is never in a canonical bundle.
    return 'path has a ".." component' if ".." in parts else None


def printable(name: str) -> str:
    """`name` in double quotes, safe to print on a terminal: undecodable bytes as \\xNN,
    anything non-printable (controls, escape sequences, bidi overrides) backslash-escaped."""
    out = ['"']
    for ch in name[:_SHOWN_CHARS]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"' if len(name) <= _SHOWN_CHARS else '"...')
    return "".join(out)


def bundle_error(description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation("bundle", description)])


def entry_error(path: str, problem: str) -> InvalidArgument:
    return bundle_error(f"entry {printable(path)}: {problem}")


def _fold(path: str) -> str:
    # Unicode's canonical caseless match: equal keys are the same file on a case-insensitive,
    # normalising filesystem (macOS, Windows). ASCII, the common case, only needs lower().
    if path.isascii():
        return path.lower()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


class NameIndex:
    """Remembers the files seen so far and refuses a name that would land on one of them:
    an exact duplicate, one that differs only in case or Unicode normalisation, or a file
    where another file needs a directory."""

    def __init__(self) -> None:
        self._files: dict[str, str] = {}
        self._dirs: dict[str, str] = {}

    def add(self, path: str) -> str | None:
        key = _fold(path)
        if (other := self._files.get(key)) is not None:
            if other == path:
                return "duplicate entry"
            return f"same name as {printable(other)} apart from case or Unicode normalisation"
        if (other := self._dirs.get(key)) is not None:
            return f"is a file, but {printable(other)} needs a directory there"
        # Folding keeps "/" and works component by component, so the parents' keys are the
        # prefixes of the path's key: one fold per path, however deep.
        parents = [key[:i] for i, ch in enumerate(key) if ch == "/"]
        for parent in parents:
            if (other := self._files.get(parent)) is not None:
                return f"needs a directory where {printable(other)} is a file"
        self._files[key] = path
        for parent in parents:
            self._dirs.setdefault(parent, path)
        return None
