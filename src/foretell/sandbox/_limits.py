"""What one run may use, and as whom it runs."""

from __future__ import annotations

from dataclasses import dataclass, fields

MIB = 1024 * 1024

# The jail's user as the model sees it: "nobody", the conventional unprivileged identity.
NOBODY = 65534


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run. Memory, pids and CPU are cgroup limits (the whole jail together);
    the rest are per-process rlimits, a second fence behind them."""

    # Wall clock, enforced by nsjail (`time_limit`, whole seconds) and again from outside.
    wall_seconds: int = 30
    # RLIMIT_CPU: CPU seconds of the main process; SIGXCPU past it.
    cpu_seconds: int = 30
    # cgroup memory limit of the jail (RAM, and RAM+swap where the host accounts swap).
    memory_mib: int = 512
    # RLIMIT_AS: virtual memory of each process. Above memory_mib on purpose: Python with grpcio
    # maps ~128 MiB it never touches, and thread stacks are reserved, not used. It turns a single
    # huge allocation into a MemoryError; the cgroup catches memory that is really used.
    address_space_mib: int = 2048
    # cgroup pids.max: processes and threads of the whole jail (grpcio alone needs more than 4).
    pids: int = 32
    # RLIMIT_NPROC counts every process of the *outside* uid, across all jails sharing it: a
    # host-wide backstop, not the per-run limit (that is `pids`).
    processes: int = 256
    # cgroup CPU bandwidth: milliseconds of CPU per wall-clock second (1000 = one core).
    cpu_ms_per_sec: int = 1000
    # Size of the writable tmpfs at /tmp; its pages count against memory_mib too.
    tmp_mib: int = 16
    # RLIMIT_FSIZE: largest file a process may write.
    file_size_mib: int = 16
    # RLIMIT_NOFILE.
    open_files: int = 128
    # Captured stdout and stderr, each; the rest is dropped with a marker.
    output_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SandboxLimits.{field.name} must be a positive int: {value!r}")
        if self.output_bytes < 1024:
            raise ValueError("SandboxLimits.output_bytes must be at least 1024")

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB


@dataclass(frozen=True)
class JailUser:
    """The jail's uid/gid inside its user namespace, and the host ids they map to. Both sides
    are explicit: nsjail started as root maps the inside user to outside *root* otherwise."""

    inside_uid: int = NOBODY
    inside_gid: int = NOBODY
    outside_uid: int = NOBODY
    outside_gid: int = NOBODY

    def __post_init__(self) -> None:
        if self.outside_uid == 0 or self.outside_gid == 0:
            raise ValueError("the jail's user must not map to root outside")


DEFAULT_USER = JailUser()
