"""cgroups for jails, on v1 or v2, whichever the host has.

nsjail puts each jail in a cgroup of its own (`NSJAIL.<pid>`) under a parent it is told about,
sets the limits there and removes it when the jail ends. We give every run a parent of its own
(`<parent>/run-<id>`) for two reasons nsjail cannot serve: its own cgroup is gone by the time we
classify the outcome, while ours still holds the memory high-water mark / OOM counter that tells
an out-of-memory kill from any other SIGKILL; and if nsjail itself is killed (timeout from
outside, cancelled job) its cgroup is left behind, with possibly a process in it, which we then
kill and remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from foretell.sandbox._errors import SandboxError, SandboxUnavailable

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PARENT = "NSJAIL"
_V1_CONTROLLERS = ("memory", "pids", "cpu")
_V2_CONTROLLERS = ("memory", "pids", "cpu")


class CgroupVersion(enum.StrEnum):
    V1 = "v1"
    V2 = "v2"


@dataclass(frozen=True)
class CgroupHost:
    """Where jails' cgroups go. v1: `parent` under each controller's hierarchy
    (/sys/fs/cgroup/memory/NSJAIL, .../pids/NSJAIL, .../cpu/NSJAIL), created if missing. v2: the
    delegated subtree /sys/fs/cgroup/<parent> (under systemd, a path inside a unit with
    `Delegate=yes`), whose cgroup.subtree_control must be able to enable memory, pids and cpu:
    it must hold no processes itself."""

    version: CgroupVersion
    root: Path = CGROUP_ROOT
    parent: str = DEFAULT_PARENT

    def parent_dirs(self) -> list[Path]:
        if self.version is CgroupVersion.V1:
            return [self.root / c / self.parent for c in _V1_CONTROLLERS]
        return [self.root / self.parent]


def detect_cgroups(root: Path = CGROUP_ROOT, parent: str = DEFAULT_PARENT) -> CgroupHost:
    # A unified (v2-only) host has cgroup.controllers at the root; a v1 or hybrid host has one
    # mount per controller (a hybrid host's extra v2 mount at `unified/` carries no controllers).
    if (root / "cgroup.controllers").exists():
        return CgroupHost(CgroupVersion.V2, root, parent)
    if all((root / c).is_dir() for c in _V1_CONTROLLERS):
        return CgroupHost(CgroupVersion.V1, root, parent)
    raise SandboxUnavailable(f"no cgroup v2 nor v1 memory/pids/cpu hierarchies under {root}")


@dataclass(frozen=True)
class RunCgroups:
    """The cgroup parent(s) of one run."""

    host: CgroupHost
    name: str
    # Whether the host accounts swap, so the jail can be kept from swapping instead of being
    # killed at its memory limit (v1: memory.memsw.*; v2: memory.swap.max).
    swap_accounting: bool

    @property
    def relative(self) -> str:
        return f"{self.host.parent}/{self.name}"

    def dirs(self) -> list[Path]:
        return [parent / self.name for parent in self.host.parent_dirs()]

    def out_of_memory(self, limit_bytes: int) -> bool:
        """Whether the jail hit its memory limit. v2 counts OOM kills hierarchically in
        memory.events. v1 counts them only in the jail's own cgroup, which nsjail has removed,
        so the evidence is our parent's high-water mark having reached the limit."""
        if self.host.version is CgroupVersion.V2:
            events = _read(self.dirs()[0] / "memory.events")
            counts = dict(line.split() for line in events.splitlines() if line.strip())
            return int(counts.get("oom_kill", "0")) > 0
        peak = int(_read(self.dirs()[0] / "memory.max_usage_in_bytes") or 0)
        # Charges fail in batches of pages; the last successful one can stop short of the limit.
        return peak >= limit_bytes - max(2 * 1024 * 1024, limit_bytes // 64)

    def memory_peak(self) -> int | None:
        """The run's highest memory use in bytes (v2: memory.peak, Linux 5.19+; v1: the
        high-water mark), or None where the kernel does not keep it."""
        name = (
            "memory.peak" if self.host.version is CgroupVersion.V2 else "memory.max_usage_in_bytes"
        )
        try:
            return int(_read(self.dirs()[0] / name))
        except (OSError, ValueError):
            return None

    def memory_usage(self) -> int | None:
        """The memory charged to the run's cgroups now, in bytes."""
        name = (
            "memory.current" if self.host.version is CgroupVersion.V2 else "memory.usage_in_bytes"
        )
        try:
            return int(_read(self.dirs()[0] / name))
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """v2: OOM kills so far (memory.events counts them hierarchically); v1: 0."""
        if self.host.version is not CgroupVersion.V2:
            return 0
        events = _read(self.dirs()[0] / "memory.events")
        counts = dict(line.split() for line in events.splitlines() if line.strip())
        return int(counts.get("oom_kill", "0"))

    def reset_memory_peak(self) -> None:
        """Starts a new high-water mark (v1; v2 kernels from 6.12), for a cgroup that serves
        run after run (a warm template's)."""
        name = (
            "memory.peak" if self.host.version is CgroupVersion.V2 else "memory.max_usage_in_bytes"
        )
        with contextlib.suppress(OSError):
            (self.dirs()[0] / name).write_text("0")

    async def remove(self, attempts: int = 100) -> None:
        """Kills whatever is still in the run's cgroups and removes them, deepest first."""
        for _ in range(attempts):
            for pid in self._pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                for top in self.dirs():
                    _remove_tree(top)
            except OSError:
                # EBUSY while a killed process is still exiting.
                await asyncio.sleep(0.02)
            else:
                return
        raise SandboxError(f"could not remove cgroups {', '.join(map(str, self.dirs()))}")

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self.dirs():
            for directory, _dirs, _files in os.walk(top):
                text = _read(Path(directory, "cgroup.procs"))
                pids.update(int(line) for line in text.split())
        return pids


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _remove_tree(top: Path) -> None:
    if not top.exists():
        return
    for directory, _dirs, _files in os.walk(top, topdown=False):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(directory)


def sweep_stale_run_cgroups(host: CgroupHost, older_than_s: float) -> list[str]:
    """Removes the run cgroups a dead worker left behind: `run-*` parents older than
    `older_than_s` (longer than any run may last) in which no process remains. Safe beside
    other workers sharing the parent: a live run's cgroups are younger, and the kernel refuses
    to remove a cgroup that holds a process. Returns the names removed."""
    now = time.time()
    removed: set[str] = set()
    for parent in host.parent_dirs():
        if not parent.is_dir():
            continue
        for top in parent.glob("run-*"):
            try:
                if not top.is_dir() or now - top.stat().st_mtime < older_than_s:
                    continue
                stale = RunCgroups(host, top.name, swap_accounting=False)
                if stale._pids():
                    continue
                _remove_tree(top)
            except OSError:
                # Busy (a process arrived) or gone meanwhile: not stale, or already swept.
                continue
            removed.add(top.name)
    return sorted(removed)


def create_run_cgroups(host: CgroupHost) -> RunCgroups:
    """Creates the parents nsjail needs (it refuses to start without them) and the run's own."""
    run = RunCgroups(host, f"run-{uuid.uuid4().hex[:16]}", swap_accounting=False)
    try:
        for parent in host.parent_dirs():
            parent.mkdir(parents=host.version is CgroupVersion.V2, exist_ok=True)
        if host.version is CgroupVersion.V2:
            _enable_v2_controllers(host.root / host.parent)
        for directory in run.dirs():
            directory.mkdir()
    except OSError as e:
        raise SandboxError(f"cannot create the run's cgroups ({host.version}): {e}") from e
    if host.version is CgroupVersion.V1:
        swap = (host.root / "memory" / "memory.memsw.limit_in_bytes").exists()
    else:
        swap = (run.dirs()[0] / "memory.swap.max").exists()
    return RunCgroups(host, run.name, swap_accounting=swap)


def _enable_v2_controllers(parent: Path) -> None:
    enabled = set(_read(parent / "cgroup.subtree_control").split())
    missing = [c for c in _V2_CONTROLLERS if c not in enabled]
    if not missing:
        return
    try:
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
    except OSError as e:
        raise SandboxError(
            f"cannot enable {', '.join(missing)} in {parent}/cgroup.subtree_control ({e}): the"
            " sandbox needs a delegated cgroup v2 subtree that holds no processes itself"
        ) from e
