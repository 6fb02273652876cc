"""The provider SDK as the jail gets it.

The jail sees the distribution's Python stdlib and the model's image, nothing of the worker's
environment. The SDK it needs (foretell.sdk, the generated foretell protos it speaks, grpcio,
protobuf and the google.api protos those import) is copied once from the worker's own installed
packages into a content-addressed, read-only directory under the data dir, which every run binds
at /sdk (see the sandbox policy). Copying, not binding site-packages: the worker's environment
holds the database driver, settings and everything else a model must not see. Same packages,
same directory: a worker restart after an upgrade assembles a new one."""

from __future__ import annotations

import compileall
import functools
import hashlib
import importlib.util
import os
import py_compile
import shutil
import sys
import tempfile
from pathlib import Path

# (importable name, path of the copy relative to the SDK directory)
_PACKAGES = (
    ("foretell.sdk", "foretell/sdk"),
    ("foretell.common", "foretell/common"),
    ("foretell.datafeed", "foretell/datafeed"),
    ("foretell.forecast", "foretell/forecast"),
    ("grpc", "grpc"),
    ("google.protobuf", "google/protobuf"),
    ("google._upb", "google/_upb"),
    ("google.api", "google/api"),
)
# Single modules of the foretell namespace the SDK imports.
_FORETELL_MODULES = ("foretell.resolutions",)
_MODULES = ("typing_extensions",)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyi", "*.proto", "py.typed")


def _source(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise RuntimeError(f"{name} is not installed: the jail's SDK needs it")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    assert spec.origin is not None
    return Path(spec.origin)


def _assemble(target: Path) -> None:
    for name, relative in _PACKAGES:
        shutil.copytree(_source(name), target / relative, ignore=_IGNORE)
    for name in _FORETELL_MODULES:
        shutil.copy(_source(name), target / "foretell" / f"{name.rsplit('.', 1)[1]}.py")
    for name in _MODULES:
        origin = _source(name)
        shutil.copy(origin, target / origin.name)
    # Bytecode compiled once here: the jail runs with -B on a read-only mount, so without it
    # every run would compile grpc and protobuf from source (~130 ms a run, bench/README.md).
    # Unchecked hashes: valid whatever the files' timestamps, and the same bytes every time.
    compileall.compile_dir(
        target, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )


def _digest(root: Path) -> str:
    h = hashlib.sha256(sys.version.encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:32]


def _publish(root: Path) -> None:
    """World-readable and read-only: nsjail binds it as the jail's unprivileged user."""
    for directory, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(directory, name), 0o444)
        os.chmod(directory, 0o555)  # noqa: S103 - read by the jail's user


@functools.cache
def sdk_dir(data_dir: Path) -> Path:
    """The SDK directory under `data_dir/sdk`, assembled on first use per process."""
    parent = data_dir / "sdk"
    parent.mkdir(parents=True, exist_ok=True)
    parent.chmod(0o755)
    scratch = Path(tempfile.mkdtemp(prefix=".new-", dir=parent))
    try:
        _assemble(scratch)
        final = parent / _digest(scratch)
        if final.is_dir():
            return final
        _publish(scratch)
        try:
            scratch.rename(final)
        except OSError:
            # Another worker published the same content meanwhile.
            if not final.is_dir():
                raise
        return final
    finally:
        if scratch.exists():
            scratch.chmod(0o755)
            for directory, _dirs, _files in os.walk(scratch):
                os.chmod(directory, 0o755)  # noqa: S103 - to remove it
            shutil.rmtree(scratch, ignore_errors=True)
