"""Bundles: the canonical packing, the manifest, and the server's checks against hostile archives.

Every attack is built with `tarfile` directly, as an attacker would, never with pack_dir, and
each must be refused by read_bundle and by extract_bundle with nothing written anywhere.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foretell.bundle import (
    DEFAULT_LIMITS,
    MANIFEST_NAME,
    Limits,
    Manifest,
    extract_bundle,
    pack_dir,
    parse_manifest,
    printable,
    read_bundle,
)
from foretell.bundle._read import _DIR_FLAGS, _open_parents
from foretell.errors import InvalidArgument

MANIFEST = (
    b"[model]\n"
    b'entrypoint = "model:predict"\n'
    b'symbols = ["EURUSD", "GOOG"]\n'
    b'resolution = "1h"\n'
    b"horizon = 24\n"
    b"lookback = 500\n"
)
MODEL = b"def predict(bars):\n    return []\n"
GOOD = {MANIFEST_NAME: MANIFEST, "model.py": MODEL}


# --- helpers ----------------------------------------------------------------------------------


def _descriptions(error: InvalidArgument) -> dict[str, str]:
    found: dict[str, str] = {}
    for v in error.violations:
        found[v.field] = f"{found[v.field]}; {v.description}" if v.field in found else v.description
    return found


def _bundle_problem(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    [violation] = error.value.violations
    assert violation.field == "bundle"
    # Whatever the archive held, the message is safe to print on a terminal.
    assert violation.description.isprintable(), violation.description
    return violation.description


Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes = b"x", **attrs: object) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _special(name: str, kind: bytes, **attrs: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, None


def _tar(
    *members: Member, fmt: int = tarfile.PAX_FORMAT, pax_headers: dict[str, str] | None = None
) -> bytes:
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out,
        mode="w",
        format=fmt,
        encoding="utf-8",
        errors="surrogateescape",
        pax_headers=pax_headers,
    ) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _canonical(files: dict[str, bytes]) -> bytes:
    """A canonical bundle made with tarfile: default TarInfo metadata, sorted by UTF-8 path."""
    names = sorted(files, key=lambda n: n.encode())
    return _tar(*(_file(n, files[n]) for n in names))


def _good_with(*extra: Member) -> tuple[Member, ...]:
    return (*(_file(n, d) for n, d in sorted(GOOD.items())), *extra)


def _write_tree(root: Path, files: dict[str, bytes], order: Iterator[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in order if order is not None else iter(files):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[name])
    return root


# --- packing: the canonical property --------------------------------------------------------

TREE = {
    MANIFEST_NAME: MANIFEST,
    "model.py": MODEL,
    "a.txt": b"a",
    "a/b.txt": b"b",
    "B.txt": b"upper",
    "pkg/__init__.py": b"",
    "pkg/signals/momentum.py": b"x = 1\n" * 1000,
    "données/été.csv": "prix,€\n".encode(),
    "deep/" + "d" * 90 + "/" + "long_name_" * 9 + ".py": b"long path\n",
}


def test_pack_same_bytes_whatever_mtimes_modes_owners_and_order(tmp_path: Path) -> None:
    first = pack_dir(_write_tree(tmp_path / "one", TREE))

    # Another folder, files created in reverse order under another umask, then times touched.
    previous = os.umask(0o002)
    try:
        other = _write_tree(tmp_path / "two", TREE, reversed(list(TREE)))
    finally:
        os.umask(previous)
    for i, path in enumerate(sorted(other.rglob("*"))):
        os.utime(path, (1_000_000 + i, 2_000_000_000 - i))
        if path.is_file():
            path.chmod(0o664 if i % 2 else 0o644)
    second = pack_dir(other)

    assert second.data == first.data
    assert second.digest == first.digest
    assert first.digest.startswith("sha256:") and len(first.digest) == 7 + 64
    assert first.size == len(first.data) and first.size % 10240 == 0
    assert first.files == len(TREE)
    assert first.skipped == ()


def test_pack_different_bytes_when_content_or_exec_bit_changes(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "m", TREE)
    before = pack_dir(root)
    (root / "model.py").write_bytes(MODEL + b"# changed\n")
    changed = pack_dir(root)
    assert changed.digest != before.digest
    (root / "model.py").chmod(0o744)
    executable = pack_dir(root)
    assert executable.digest != changed.digest
    files = {f.path: f for f in read_bundle(executable.data).files}
    assert files["model.py"].executable
    assert not files["a.txt"].executable


def test_pack_layout_is_sorted_normalised_and_standard(tmp_path: Path) -> None:
    bundle = pack_dir(_write_tree(tmp_path / "m", TREE))
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(TREE, key=lambda n: n.encode())
        for m in members:
            assert m.isreg()
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            extracted = tar.extractfile(m)
            assert extracted is not None and extracted.read() == TREE[m.name]
    # tarfile, writing the same normalised entries in PAX format, makes the very same bytes.
    assert _canonical(TREE) == bundle.data


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar on this machine")
def test_pack_gnu_tar_reads_it(tmp_path: Path) -> None:
    bundle = pack_dir(_write_tree(tmp_path / "m", TREE))
    listing = subprocess.run(
        ["tar", "-tf", "-"], input=bundle.data, capture_output=True, check=True
    ).stdout.decode()
    assert listing.splitlines() == sorted(TREE, key=lambda n: n.encode())


def test_pack_round_trips_through_read_and_extract(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "m", TREE)
    (root / "model.py").chmod(0o755)
    bundle = pack_dir(root)
    contents = read_bundle(bundle.data)
    assert contents.digest == bundle.digest
    assert contents.size == bundle.size
    assert [f.path for f in contents.files] == sorted(TREE, key=lambda n: n.encode())
    assert contents.manifest.entrypoint == "model:predict"

    previous = os.umask(0o077)  # extraction sets modes exactly, whatever the umask
    try:
        out = tmp_path / "out"
        assert extract_bundle(bundle.data, out) == contents
    finally:
        os.umask(previous)
    for name, data in TREE.items():
        assert (out / name).read_bytes() == data
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == (0o755 if name == "model.py" else 0o644)
    assert stat.S_IMODE((out / "pkg" / "signals").stat().st_mode) == 0o755
    # Reading from a file gives the same answer as from bytes.
    (tmp_path / "b.tar").write_bytes(bundle.data)
    assert read_bundle(tmp_path / "b.tar") == contents
    assert pack_dir(out).data == bundle.data


def test_pack_skips_tooling_directories_and_files(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "m", GOOD)
    junk = {
        ".git/HEAD": b"ref",
        ".hg/store": b"x",
        "__pycache__/model.cpython-311.pyc": b"x",
        "pkg/__pycache__/a.pyc": b"x",
        "pkg/__init__.py": b"",
        "pkg/stale.pyc": b"x",
        ".venv/pyvenv.cfg": b"x",
        "venv/pyvenv.cfg": b"x",
        ".mypy_cache/x": b"x",
        ".pytest_cache/x": b"x",
        ".DS_Store": b"x",
        "pkg/.DS_Store": b"x",
        "model.egg-info/PKG-INFO": b"x",
        ".foretell/state": b"x",
    }
    _write_tree(root, junk)
    # A virtualenv is full of symlinks: skipped without looking inside, so they are no error.
    (root / ".venv" / "python").symlink_to("/usr/bin/python3")

    bundle = pack_dir(root)
    assert bundle.skipped == (
        ".DS_Store",
        ".foretell/",
        ".git/",
        ".hg/",
        ".mypy_cache/",
        ".pytest_cache/",
        ".venv/",
        "__pycache__/",
        "model.egg-info/",
        "pkg/.DS_Store",
        "pkg/__pycache__/",
        "pkg/stale.pyc",
        "venv/",
    )
    assert [f.path for f in read_bundle(bundle.data).files] == [
        MANIFEST_NAME,
        "model.py",
        "pkg/__init__.py",
    ]


def _make_symlink_to_file(root: Path) -> str:
    (root / "link.py").symlink_to(root / "model.py")
    return "link.py"


def _make_symlink_to_dir(root: Path) -> str:
    (root / "data").symlink_to("/etc")
    return "data"


def _make_dangling_symlink(root: Path) -> str:
    (root / "gone.py").symlink_to(root / "nowhere")
    return "gone.py"


def _make_fifo(root: Path) -> str:
    os.mkfifo(root / "pipe")
    return "pipe"


def _make_socket(root: Path) -> str:
    # Bound by relative name: a Unix socket path must be short, the test directory may not be.
    cwd = Path.cwd()
    os.chdir(root)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind("sock")
    finally:
        os.chdir(cwd)
    return "sock"


def _make_device(root: Path) -> str:
    try:
        os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device needs CAP_MKNOD")
    return "null"


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(_make_symlink_to_file, "symbolic link", id="symlink-file"),
        pytest.param(_make_symlink_to_dir, "symbolic link", id="symlink-dir"),
        pytest.param(_make_dangling_symlink, "symbolic link", id="symlink-dangling"),
        pytest.param(_make_fifo, "named pipe", id="fifo"),
        pytest.param(_make_socket, "socket", id="socket"),
        pytest.param(_make_device, "character device", id="device"),
    ],
)
def test_pack_refuses_links_and_special_files(
    tmp_path: Path, make: Callable[[Path], str], kind: str
) -> None:
    root = _write_tree(tmp_path / "m", GOOD)
    name = make(root)
    with pytest.raises(InvalidArgument) as error:
        pack_dir(root)
    problem = _bundle_problem(error)
    assert problem.startswith(f'entry "{name}": {kind}')


def test_pack_reports_every_problem_at_once(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "m", {**GOOD, "Model.py": b"clash"})
    (root / "link").symlink_to("/etc/passwd")
    os.mkfifo(root / "pipe")
    with pytest.raises(InvalidArgument) as error:
        pack_dir(root)
    problems = sorted(v.description for v in error.value.violations)
    assert len(problems) == 3
    assert problems[0].startswith('entry "Model.py": same name as "model.py" apart from case') or (
        problems[0].startswith('entry "model.py": same name as "Model.py"')
    )
    assert problems[1].startswith('entry "link": symbolic link')
    assert problems[2].startswith('entry "pipe": named pipe')


def test_pack_refuses_bad_names_on_disk(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "m", GOOD)
    try:
        (root / os.fsdecode(b"bad\xff.py")).write_bytes(b"x")
    except OSError:
        pytest.skip("this filesystem refuses non-UTF-8 names")
    (root / "back\\slash.py").write_bytes(b"x")
    (root / "esc\x1b[31m.py").write_bytes(b"x")
    with pytest.raises(InvalidArgument) as error:
        pack_dir(root)
    problems = sorted(v.description for v in error.value.violations)
    assert problems == [
        'entry "back\\\\slash.py": name contains a backslash',
        'entry "bad\\xff.py": name is not valid UTF-8',
        'entry "esc\\x1b[31m.py": name contains a NUL or control character',
    ]


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        pytest.param(Limits(max_entries=3), "more than 3 files to pack", id="entries"),
        pytest.param(
            Limits(max_file_bytes=1000),
            'entry "big.bin": 16 KiB, over the per-file limit of 1000 bytes',
            id="file",
        ),
        pytest.param(Limits(max_total_bytes=16000), "over the limit of 16000 bytes", id="total"),
        pytest.param(
            Limits(max_bundle_bytes=20480),
            "bundle would be 30 KiB, over the limit of 20 KiB",
            id="bundle",
        ),
    ],
)
def test_pack_enforces_limits(tmp_path: Path, limits: Limits, expected: str) -> None:
    root = _write_tree(
        tmp_path / "m", {**GOOD, "big.bin": b"\x00" * 16384, "c.py": b"", "d.py": b""}
    )
    with pytest.raises(InvalidArgument) as error:
        pack_dir(root, limits)
    assert expected in " ".join(v.description for v in error.value.violations)


def test_pack_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        pack_dir(tmp_path / "nope")


# --- the server's checks: attacks -----------------------------------------------------------

Attack = Callable[[Path], bytes]


def _prefixed(path: Path) -> str:
    return str(path).lstrip("/")


# Each attack gets the sentinel directory, the place an escape would land.
ATTACKS: list[tuple[str, Attack, Limits, str]] = [
    ("dotdot", lambda s: _tar(*_good_with(_file("../x.py"))), DEFAULT_LIMITS,
     'entry "../x.py": path leaves the bundle'),
    ("dotdot-inner", lambda s: _tar(*_good_with(_file("a/../../x.py"))), DEFAULT_LIMITS,
     'entry "a/../../x.py": path leaves the bundle'),
    ("dotdot-sentinel", lambda s: _tar(*_good_with(_file("../sentinel/evil.py"))),
     DEFAULT_LIMITS, "path leaves the bundle"),
    ("dotdot-inside", lambda s: _tar(*_good_with(_file("a/../model2.py"))), DEFAULT_LIMITS,
     'path has a ".." component'),
    ("absolute", lambda s: _tar(_file(str(s / "evil.py")), *_good_with()), DEFAULT_LIMITS,
     "absolute path"),
    ("dot", lambda s: _tar(_file("./model.py"), *_good_with()), DEFAULT_LIMITS,
     "empty or '.' path component"),
    ("empty-name", lambda s: _tar(_file(""), *_good_with()), DEFAULT_LIMITS, "empty name"),
    ("double-slash", lambda s: _tar(*_good_with(_file("pkg//x.py"))), DEFAULT_LIMITS,
     "empty or '.' path component"),
    ("too-deep", lambda s: _tar(*_good_with(_file("a/" * 32 + "x.py"))), DEFAULT_LIMITS,
     "path is more than 32 levels deep"),
    ("too-long", lambda s: _tar(*_good_with(_file("a" * 200 + "/" + "b" * 200 + "/" + "c" * 200
     + "/" + "d" * 200 + "/" + "e" * 200 + "/" + "f" * 30))), DEFAULT_LIMITS,
     "path is longer than 1024 bytes"),
    ("long-component", lambda s: _tar(*_good_with(_file("z" * 256))), DEFAULT_LIMITS,
     "a path component is longer than 255 bytes"),
    ("backslash", lambda s: _tar(_file("..\\evil.py"), *_good_with()), DEFAULT_LIMITS,
     "backslash"),
    ("symlink-out", lambda s: _tar(*_good_with(_special("zlink", tarfile.SYMTYPE,
     linkname=str(s)))), DEFAULT_LIMITS, 'entry "zlink": symbolic link to "/'),
    ("symlink-then-file", lambda s: _tar(*_good_with(
        _special("zlink", tarfile.SYMTYPE, linkname=str(s)), _file("zlink/evil.py"))),
     DEFAULT_LIMITS, 'entry "zlink": symbolic link'),
    ("hardlink-out", lambda s: _tar(*_good_with(_special("zhard", tarfile.LNKTYPE,
     linkname=str(s / "x")))), DEFAULT_LIMITS, 'entry "zhard": hard link'),
    ("hardlink-in", lambda s: _tar(*_good_with(_special("zhard", tarfile.LNKTYPE,
     linkname="model.py"))), DEFAULT_LIMITS, 'hard link to "model.py"'),
    ("char-device", lambda s: _tar(*_good_with(_special("znull", tarfile.CHRTYPE, devmajor=1,
     devminor=3))), DEFAULT_LIMITS, 'entry "znull": character device'),
    ("block-device", lambda s: _tar(*_good_with(_special("zsda", tarfile.BLKTYPE, devmajor=8))),
     DEFAULT_LIMITS, 'entry "zsda": block device'),
    ("fifo", lambda s: _tar(*_good_with(_special("zfifo", tarfile.FIFOTYPE))), DEFAULT_LIMITS,
     'entry "zfifo": named pipe'),
    ("directory", lambda s: _tar(*_good_with(_special("zdir", tarfile.DIRTYPE))),
     DEFAULT_LIMITS, 'entry "zdir/": directory entry'),
    ("sparse", lambda s: _tar(*_good_with(_special("zsparse", tarfile.GNUTYPE_SPARSE)),
     fmt=tarfile.GNU_FORMAT), DEFAULT_LIMITS, "unsupported entry type b'S'"),
    ("global-pax", lambda s: _tar(*_good_with(), pax_headers={"comment": "hi"}),
     DEFAULT_LIMITS, "unsupported entry type b'g'"),
    ("bomb-entries", lambda s: _tar(*_good_with(*(_file(f"m{i:02}.py") for i in range(5)))),
     Limits(max_entries=5), "bundle has more than 5 entries"),
    ("bomb-declared-size", lambda s: _tar(*_good_with(_special("zbig", tarfile.REGTYPE,
     size=2048))), Limits(max_file_bytes=1024), 'entry "zbig": declares 2 KiB, over the per-file'),
    ("bomb-10-GiB-pax", lambda s: _tar(*_good_with(_special("zbig", tarfile.REGTYPE,
     size=10 << 30))), DEFAULT_LIMITS, "declares 10240 MiB, over the per-file limit of 32 MiB"),
    ("bomb-10-GiB-gnu", lambda s: _tar(*_good_with(_special("zbig", tarfile.REGTYPE,
     size=10 << 30)), fmt=tarfile.GNU_FORMAT), DEFAULT_LIMITS, "declares 10240 MiB"),
    ("bomb-total", lambda s: _tar(*_good_with(*(_file(f"m{i}.bin", b"z" * 900)
     for i in range(5)))), Limits(max_total_bytes=3000), "bundle unpacks to more than 3000 bytes"),
    ("oversized", lambda s: _tar(*_good_with(_file("zpad.bin", b"z" * 40_000))),
     Limits(max_bundle_bytes=30_000), "over the limit of 30000 bytes"),
    ("not-utf8-pax", lambda s: _tar(*_good_with(_file("zbad\udcff.py"))), DEFAULT_LIMITS,
     'entry "zbad\\xff.py": name is not valid UTF-8'),
    ("not-utf8-gnu", lambda s: _tar(*_good_with(_file("zbad\udcff.py")), fmt=tarfile.GNU_FORMAT),
     DEFAULT_LIMITS, 'entry "zbad\\xff.py": name is not valid UTF-8'),
    ("nul-in-name", lambda s: _tar(*_good_with(_file("za\x00b.py"))), DEFAULT_LIMITS,
     'entry "za\\x00b.py": name contains a NUL or control character'),
    ("nul-in-pax-path", lambda s: _tar(*_good_with(_file("zab.py",
     pax_headers={"path": "za\x00b.py"}))), DEFAULT_LIMITS, "NUL or control character"),
    ("terminal-escape", lambda s: _tar(*_good_with(_file("z\x1b]0;pwned\x07.py"))),
     DEFAULT_LIMITS, 'entry "z\\x1b]0;pwned\\x07.py": name contains'),
    ("duplicate", lambda s: _tar(*_good_with(_file("model.py"))), DEFAULT_LIMITS,
     'entry "model.py": duplicate entry'),
    ("duplicate-case", lambda s: _tar(_file("Model.py"), *_good_with()), DEFAULT_LIMITS,
     'entry "model.py": same name as "Model.py" apart from case'),
    ("duplicate-unicode", lambda s: _tar(*_good_with(_file("zcafe\u0301.py"),
     _file("zcaf\u00e9.py"))), DEFAULT_LIMITS, "apart from case or Unicode normalisation"),
    ("file-under-file", lambda s: _tar(*_good_with(_file("model.py/x.py"))), DEFAULT_LIMITS,
     'needs a directory where "model.py" is a file'),
    ("unsorted", lambda s: _tar(*reversed(_good_with())), DEFAULT_LIMITS,
     'bundle is not canonical (entry "foretell.toml" is out of order, after "model.py"); '
     "pack it with `foretell push`"),
    ("mtime", lambda s: _tar(_file(MANIFEST_NAME, MANIFEST, mtime=1_700_000_000),
     _file("model.py", MODEL)), DEFAULT_LIMITS, "metadata is not normalised"),
    ("owner", lambda s: _tar(_file(MANIFEST_NAME, MANIFEST, uid=1000, uname="alice"),
     _file("model.py", MODEL)), DEFAULT_LIMITS, "not canonical"),
    ("mode", lambda s: _tar(_file(MANIFEST_NAME, MANIFEST, mode=0o600),
     _file("model.py", MODEL)), DEFAULT_LIMITS, "not canonical"),
    ("setuid", lambda s: _tar(_file(MANIFEST_NAME, MANIFEST, mode=0o4755),
     _file("model.py", MODEL)), DEFAULT_LIMITS, "not canonical"),
    ("gnu-format", lambda s: _tar(*_good_with(), fmt=tarfile.GNU_FORMAT), DEFAULT_LIMITS,
     "not canonical"),
    ("extra-pax-record", lambda s: _tar(_file(MANIFEST_NAME, MANIFEST, pax_headers={
     "mtime": "0"}), _file("model.py", MODEL)), DEFAULT_LIMITS, "not canonical"),
    ("trailing-garbage", lambda s: _canonical(GOOD) + b"evil" * 128, DEFAULT_LIMITS,
     "not canonical (bytes after the end-of-archive marker)"),
    ("gzip", lambda s: gzip.compress(_canonical(GOOD)), DEFAULT_LIMITS,
     "bundle is gzip-compressed; upload the plain tar"),
    ("bzip2", lambda s: bz2.compress(_canonical(GOOD)), DEFAULT_LIMITS, "bzip2-compressed"),
    ("xz", lambda s: lzma.compress(_canonical(GOOD)), DEFAULT_LIMITS, "xz-compressed"),
    ("garbage", lambda s: bytes(range(256)) * 40, DEFAULT_LIMITS, "bundle is not a tar archive"),
    ("short-garbage", lambda s: b"hello", DEFAULT_LIMITS, "bundle is not a tar archive"),
    ("empty", lambda s: b"", DEFAULT_LIMITS, "bundle is empty"),
    ("truncated-in-data", lambda s: _canonical(GOOD)[:600], DEFAULT_LIMITS,
     'bundle is truncated (inside entry "foretell.toml")'),
    ("truncated-in-header", lambda s: _canonical(GOOD)[:1100], DEFAULT_LIMITS,
     "bundle is truncated (inside a header)"),
    ("truncated-no-end", lambda s: _canonical(GOOD)[:2048], DEFAULT_LIMITS,
     "bundle is truncated (no end-of-archive marker)"),
    ("truncated-in-end", lambda s: _canonical(GOOD)[:2048 + 700], DEFAULT_LIMITS,
     "incomplete end-of-archive marker"),
    ("truncated-record", lambda s: _canonical(GOOD)[:4096], DEFAULT_LIMITS,
     "last record is incomplete"),
    ("bad-checksum", lambda s: _corrupt_at(_canonical(GOOD), 1024 + 5), DEFAULT_LIMITS,
     "bundle is corrupt: bad header checksum at byte 1024"),
    ("dirty-padding", lambda s: _corrupt_at(_canonical(GOOD), 512 + len(MANIFEST) + 3),
     DEFAULT_LIMITS, 'entry "foretell.toml": padding is not zeros'),
]  # fmt: skip


def _corrupt_at(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x55]) + data[offset + 1 :]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(root, sentinel, dest): dest and sentinel side by side in root, where an escape lands."""
    root = tmp_path / "root"
    sentinel = root / "sentinel"
    sentinel.mkdir(parents=True)
    yield root, sentinel, root / "dest"
    # Nothing was written anywhere: no file, no link, and dest empty or absent.
    written = [p for p in root.rglob("*") if p.is_symlink() or not p.is_dir()]
    assert written == []
    assert list(sentinel.iterdir()) == []


@pytest.mark.parametrize(
    ("attack", "limits", "expected"),
    [pytest.param(a, lim, e, id=name) for name, a, lim, e in ATTACKS],
)
def test_read_bundle_refuses(
    sandbox: tuple[Path, Path, Path], attack: Attack, limits: Limits, expected: str
) -> None:
    _, sentinel, _ = sandbox
    with pytest.raises(InvalidArgument) as error:
        read_bundle(attack(sentinel), limits)
    assert expected in _bundle_problem(error)


@pytest.mark.parametrize(
    ("attack", "limits", "expected"),
    [pytest.param(a, lim, e, id=name) for name, a, lim, e in ATTACKS],
)
def test_extract_bundle_refuses_and_writes_nothing(
    sandbox: tuple[Path, Path, Path], attack: Attack, limits: Limits, expected: str
) -> None:
    _, sentinel, dest = sandbox
    with pytest.raises(InvalidArgument) as error:
        extract_bundle(attack(sentinel), dest, limits)
    assert expected in _bundle_problem(error)


def test_read_bundle_refuses_etc_passwd() -> None:
    # Only read, never extracted: the tests may run as root.
    with pytest.raises(InvalidArgument) as error:
        read_bundle(_tar(_file("/etc/passwd", b"root::0:0::/:/bin/sh\n"), *_good_with()))
    assert _bundle_problem(error) == 'entry "/etc/passwd": absolute path'


def test_read_bundle_refuses_an_oversized_file_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.tar"
    with path.open("wb") as f:
        f.truncate(DEFAULT_LIMITS.max_bundle_bytes + 1)  # sparse: nothing is really written
    with pytest.raises(InvalidArgument) as error:
        read_bundle(path)
    assert _bundle_problem(error) == "bundle is 64.0 MiB, over the limit of 64 MiB"


def test_extract_writes_nothing_through_a_planted_symlink(tmp_path: Path) -> None:
    # The second line of defence: directories are opened without following links.
    root = tmp_path / "dest"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "pkg").symlink_to(tmp_path / "outside")
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        with pytest.raises(OSError, match=r"Too many levels of symbolic links|Not a directory"):
            _open_parents(root_fd, ["pkg"])
    finally:
        os.close(root_fd)
    assert list((tmp_path / "outside").iterdir()) == []


def test_extract_needs_an_empty_destination(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old.py").write_bytes(b"")
    with pytest.raises(FileExistsError):
        extract_bundle(_canonical(GOOD), dest)


# --- the server's checks: the manifest in the bundle ---------------------------------------


def test_read_bundle_accepts_a_tarfile_made_canonical_bundle() -> None:
    contents = read_bundle(_canonical({**GOOD, "requirements.txt": b"numpy\n"}))
    assert contents.manifest == Manifest(
        entrypoint="model:predict",
        symbols=("EURUSD", "GOOG"),
        resolution="1h",
        horizon=24,
        lookback=500,
    )
    assert [(f.path, f.size, f.executable) for f in contents.files] == [
        (MANIFEST_NAME, len(MANIFEST), False),
        ("model.py", len(MODEL), False),
        ("requirements.txt", 6, False),
    ]


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"model.py": MODEL}, id="none"),
        pytest.param({"sub/foretell.toml": MANIFEST, "model.py": MODEL}, id="not-at-root"),
        pytest.param({"Foretell.toml": MANIFEST, "model.py": MODEL}, id="wrong-case"),
    ],
)
def test_read_bundle_needs_a_manifest_at_the_root(files: dict[str, bytes]) -> None:
    with pytest.raises(InvalidArgument) as error:
        read_bundle(_canonical(files))
    assert _bundle_problem(error) == "no foretell.toml at the bundle's root"


@pytest.mark.parametrize(
    ("entrypoint", "files"),
    [
        pytest.param("model:predict", ["model.py"], id="module"),
        pytest.param("model:predict", ["model/__init__.py"], id="package"),
        pytest.param("pkg.sub:fn", ["pkg/sub.py"], id="dotted-module"),
        pytest.param("pkg.sub:fn", ["pkg/sub/__init__.py"], id="dotted-package"),
    ],
)
def test_read_bundle_finds_the_entrypoint_module(entrypoint: str, files: list[str]) -> None:
    manifest = MANIFEST.replace(b'"model:predict"', f'"{entrypoint}"'.encode())
    contents = read_bundle(_canonical({MANIFEST_NAME: manifest, **dict.fromkeys(files, b"")}))
    assert contents.manifest.entrypoint == entrypoint


def test_read_bundle_reports_all_manifest_problems_at_once() -> None:
    manifest = (
        MANIFEST.replace(b'"model:predict"', b'"pkg.signals:predict"')
        .replace(b'"GOOG"', b'"goog"')
        .replace(b"[model]\n", b'[model]\nrequirements = "requirements.txt"\n')
    )
    with pytest.raises(InvalidArgument) as error:
        read_bundle(_canonical({MANIFEST_NAME: manifest, "pkg/signals.txt": b""}))
    problems = _descriptions(error.value)
    assert set(problems) == {"manifest.entrypoint", "manifest.symbols", "manifest.requirements"}
    assert problems["manifest.entrypoint"] == (
        'the bundle has neither "pkg/signals.py" nor "pkg/signals/__init__.py"'
    )
    assert problems["manifest.requirements"] == '"requirements.txt" is not in the bundle'
    assert '"goog"' in problems["manifest.symbols"]


def test_read_bundle_reports_an_invalid_manifest() -> None:
    with pytest.raises(InvalidArgument) as error:
        read_bundle(_canonical({MANIFEST_NAME: b"[model\n", "model.py": MODEL}))
    assert "invalid TOML" in _descriptions(error.value)["manifest"]


# --- the manifest ------------------------------------------------------------------------------

GOOD_TOML = MANIFEST.decode()


def _with(key: str, value: str) -> str:
    lines = [line for line in GOOD_TOML.splitlines() if not line.startswith(f"{key} =")]
    return "\n".join([*lines, f"{key} = {value}", ""])


def _without(key: str) -> str:
    return "\n".join(line for line in GOOD_TOML.splitlines() if not line.startswith(f"{key} ="))


def test_parse_manifest_good() -> None:
    manifest = parse_manifest(GOOD_TOML)
    assert manifest == Manifest("model:predict", ("EURUSD", "GOOG"), "1h", 24, 500, "")
    assert parse_manifest(MANIFEST) == manifest  # bytes too
    assert manifest.entrypoint_files == ("model.py", "model/__init__.py")


@pytest.mark.parametrize(
    "manifest",
    [
        Manifest("model:predict", ("EURUSD",), "1h", 1, 1),
        Manifest("pkg.sub_2:run_it", ("BTC-USD", "ES.F", "X_1"), "1d", 1000, 10000, "deps/r.txt"),
        Manifest("m:f", tuple(f"S{i}" for i in range(50)), "4h", 5, 5, 'odd "name".txt'),
    ],
)
def test_manifest_to_toml_round_trips(manifest: Manifest) -> None:
    assert parse_manifest(manifest.to_toml()) == manifest


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        (_with("entrypoint", '"model"'), "entrypoint", 'must be "module:function"'),
        (_with("entrypoint", '"model:"'), "entrypoint", 'must be "module:function"'),
        (_with("entrypoint", '":predict"'), "entrypoint", 'must be "module:function"'),
        (_with("entrypoint", '"1model:predict"'), "entrypoint", "ASCII Python identifiers"),
        (_with("entrypoint", '"model:class"'), "entrypoint", "ASCII Python identifiers"),
        (_with("entrypoint", '"pkg..mod:fn"'), "entrypoint", "ASCII Python identifiers"),
        (_with("entrypoint", '"mödel:predict"'), "entrypoint", "ASCII Python identifiers"),
        (_with("entrypoint", '"a/b:c"'), "entrypoint", "ASCII Python identifiers"),
        (_with("entrypoint", "42"), "entrypoint", "must be a string, not an integer"),
        (_with("symbols", "[]"), "symbols", "must hold 1 to 50 symbols, not 0"),
        (_with("symbols", str([f"S{i}" for i in range(51)])), "symbols", "not 51"),
        (_with("symbols", '["eurusd"]'), "symbols", '"eurusd": a symbol is 1 to 32 upper-case'),
        (_with("symbols", '["-X"]'), "symbols", "starting with a letter or digit"),
        (_with("symbols", f'["{"A" * 33}"]'), "symbols", "a symbol is 1 to 32"),
        (_with("symbols", '["A B"]'), "symbols", "a symbol is 1 to 32"),
        (_with("symbols", '["GOOG", "GOOG"]'), "symbols", 'listed more than once: "GOOG"'),
        (_with("symbols", '"EURUSD"'), "symbols", "must be an array of strings, not a string"),
        (_with("symbols", "[1]"), "symbols", "must be strings, not an integer"),
        (_with("resolution", '"15m"'), "resolution", '"15m" is finer than an hour'),
        (_with("resolution", '"30s"'), "resolution", "finer than an hour"),
        (_with("resolution", '"1min"'), "resolution", "finer than an hour"),
        (_with("resolution", '"59 minutes"'), "resolution", "finer than an hour"),
        (_with("resolution", '"2h"'), "resolution", 'not supported; use "1h", "4h", "1d"'),
        (_with("resolution", '"1w"'), "resolution", "not supported"),
        (_with("resolution", '"1H"'), "resolution", "not supported"),
        (_with("resolution", "1"), "resolution", "must be a string, not an integer"),
        (_with("horizon", "0"), "horizon", "must be from 1 to 1000, not 0"),
        (_with("horizon", "1001"), "horizon", "must be from 1 to 1000, not 1001"),
        (_with("horizon", '"24"'), "horizon", "must be an integer, not a string"),
        (_with("horizon", "true"), "horizon", "must be an integer, not a boolean"),
        (_with("horizon", "1.5"), "horizon", "must be an integer, not a float"),
        (_with("lookback", "0"), "lookback", "must be from 1 to 10000, not 0"),
        (_with("lookback", "10001"), "lookback", "not 10001"),
        (_with("lookback", "1979-05-27"), "lookback", "not a date"),
        (_with("requirements", '"../reqs.txt"'), "requirements", "path leaves the bundle"),
        (_with("requirements", '"/etc/reqs.txt"'), "requirements", "absolute path"),
        (_with("requirements", '"a\\\\b.txt"'), "requirements", "backslash"),
        (_with("requirements", "5"), "requirements", "must be a string"),
        (_with("entrypiont", '"x:y"'), "entrypiont", "unknown key; did you mean 'entrypoint'?"),
        (_with("gpu", "true"), "gpu", "unknown key (known keys: entrypoint, symbols"),
        (_without("entrypoint"), "entrypoint", "missing (required)"),
        (_without("symbols"), "symbols", "missing (required)"),
        (_without("resolution"), "resolution", "missing (required)"),
        (_without("horizon"), "horizon", "missing (required)"),
        (_without("lookback"), "lookback", "missing (required)"),
        (GOOD_TOML + "[build]\nimage = 'x'\n", "build", "the manifest holds one [model] table"),
        (GOOD_TOML.replace("[model]", "[modle]"), "model", "missing [model] table"),
        (GOOD_TOML.replace("[model]", "[modle]"), "modle", "holds one [model] table"),
        # A quoted TOML key can hold an escape sequence; the field name shows it escaped.
        (_with('"\\u001b[2J"', "1"), '"\\x1b[2J"', "unknown key"),
        ("model = 1\n", "model", "must be a table, not an integer"),
    ],
)
def test_parse_manifest_refuses(text: str, field: str, expected: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_manifest(text)
    problems = _descriptions(error.value)
    assert expected in problems[f"manifest.{field}"], problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[model]\nhorizon = \n", "invalid TOML: ", id="no-value"),
        pytest.param('[model]\nentrypoint = "x\n', "(at line 2, column ", id="unclosed-string"),
        pytest.param(b"[model]\nentrypoint = '\xff'\n", "not valid UTF-8 (byte 22)", id="bytes"),
        pytest.param(b"#" * (64 * 1024 + 1), "foretell.toml is larger than 64 KiB", id="too-large"),
    ],
)
def test_parse_manifest_refuses_unreadable_text(text: str | bytes, expected: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_manifest(text)
    assert expected in _descriptions(error.value)["manifest"]


def test_parse_manifest_reports_all_problems_at_once() -> None:
    text = (
        "[model]\n"
        'entrypoint = "model"\n'
        'symbols = ["ok", "OK", "OK"]\n'
        'resolution = "5m"\n'
        "horizon = 0\n"
        'requirments = "requirements.txt"\n'
    )
    with pytest.raises(InvalidArgument) as error:
        parse_manifest(text)
    problems = _descriptions(error.value)
    assert set(problems) == {
        "manifest.entrypoint",
        "manifest.symbols",
        "manifest.resolution",
        "manifest.horizon",
        "manifest.lookback",
        "manifest.requirments",
    }
    assert '"ok"' in problems["manifest.symbols"]
    assert 'listed more than once: "OK"' in problems["manifest.symbols"]
    assert "did you mean 'requirements'?" in problems["manifest.requirments"]


def test_manifest_is_always_valid() -> None:
    with pytest.raises(InvalidArgument) as error:
        Manifest("nope", (), "1m", 0, 0)
    assert {v.field for v in error.value.violations} == {
        "manifest.entrypoint",
        "manifest.symbols",
        "manifest.resolution",
        "manifest.horizon",
        "manifest.lookback",
    }


# --- names in messages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("model.py", '"model.py"'),
        ("données/été.csv", '"données/été.csv"'),
        ("bad\udcff.py", '"bad\\xff.py"'),
        ("\x1b[2Jclear", '"\\x1b[2Jclear"'),
        ('quote"back\\slash', '"quote\\"back\\\\slash"'),
        ("bidi\u202eyp.exe", '"bidi\\u202eyp.exe"'),
        ("x" * 500, '"' + "x" * 120 + '"...'),
    ],
)
def test_printable(name: str, shown: str) -> None:
    assert printable(name) == shown
    assert printable(name).isprintable()
