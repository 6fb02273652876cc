"""One run: render the policy, start nsjail, supervise it, always clean up."""

from __future__ import annotations

import asyncio
import functools
import os
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from foretell import metrics
from foretell.sandbox._capture import CappedOutput, finish_drains
from foretell.sandbox._cgroups import CgroupHost, create_run_cgroups, detect_cgroups
from foretell.sandbox._errors import JailDidNotRun, SandboxUnavailable
from foretell.sandbox._host import (
    PythonRuntime,
    check_reachable,
    die_with_parent,
    nsjail_binary,
    system_python,
)
from foretell.sandbox._limits import DEFAULT_USER, JailUser, SandboxLimits
from foretell.sandbox._outcome import SandboxResult, classify, read_ending
from foretell.sandbox._policy import SOCKET_NAME, RunPaths, render_policy
from foretell.sandbox._spawn import JailProcess, spawn_jail

# nsjail checks its time limit about once a second; the outside deadline leaves it room to do
# so (and to log it) before we kill it ourselves.
_OUTSIDE_GRACE_S = 2.0
# After nsjail is gone nothing can hold the pipes open for long; this only guards a hang.
_DRAIN_TIMEOUT_S = 5.0

OutputJudge = Callable[[SandboxResult], str | None]


@functools.cache
def default_cgroups() -> CgroupHost:
    return detect_cgroups()


def prepare_run_dir(run_dir: Path) -> Path:
    """Creates the run's directory and its socket directory, and returns the host path where
    the worker serves the run's gRPC socket (FORETELL_SOCKET inside the jail). Serve it before
    `run_in_sandbox`, which hands the directory and the sockets in it to the jail's user. Keep
    `run_dir` short: a Unix socket path is limited to ~107 bytes."""
    run_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    (run_dir / "sock").mkdir(mode=0o700, exist_ok=True)
    return run_dir / "sock" / SOCKET_NAME


def _hand_over_socket_dir(run: RunPaths) -> None:
    """The jail's user must search the socket directory and write to the sockets in it (connect
    needs write permission on the socket inode); nobody else on the host gets in."""
    # Others may only traverse the run directory (to the socket directory), not list it.
    os.chmod(run.run_dir, 0o711)  # noqa: S103
    directory = run.socket_dir
    os.chown(directory, run.user.outside_uid, run.user.outside_gid)
    os.chmod(directory, 0o700)
    for entry in directory.iterdir():
        if stat.S_ISSOCK(entry.lstat().st_mode):
            os.chown(entry, run.user.outside_uid, run.user.outside_gid, follow_symlinks=False)
    extra = (run.sdk_dir,) if run.sdk_dir else ()
    for path in (run.image_dir / "app", run.image_dir / "site-packages", directory, *extra):
        check_reachable(path, run.user)


async def run_in_sandbox(
    image_dir: Path,
    run_dir: Path,
    argv: Sequence[str],
    limits: SandboxLimits,
    *,
    user: JailUser = DEFAULT_USER,
    runtime: PythonRuntime | None = None,
    cgroups: CgroupHost | None = None,
    judge_output: OutputJudge | None = None,
    sdk_dir: Path | None = None,
) -> SandboxResult:
    """Runs the jail's Python with `argv` (interpreter arguments, e.g. ["-m", "pkg.main"]) on
    the image at `image_dir` (its `app/` and `site-packages/`), the run's socket served in
    `prepare_run_dir(run_dir)`. The jail is killed on timeout, on error and on cancellation,
    and its cgroups are removed, before this returns or raises.

    `judge_output` sees a result that ended OK and returns a reason to call it INVALID_OUTPUT,
    or None. `sdk_dir`, when given, is bound read-only at /sdk, first on PYTHONPATH (the
    provider SDK, see foretell.runs). Raises SandboxError (never a model outcome) when the
    jail itself fails."""
    if os.geteuid() != 0:
        raise SandboxUnavailable("nsjail needs root to map users and create cgroups")
    prepare_run_dir(run_dir)
    run_cgroups = create_run_cgroups(cgroups or default_cgroups())
    try:
        run = RunPaths(image_dir, run_dir, runtime or system_python(), run_cgroups, user, sdk_dir)
        _hand_over_socket_dir(run)
        run.config_file.write_text(render_policy(limits, run))
        run.config_file.chmod(0o600)
        run.log_file.unlink(missing_ok=True)
        result = await _supervise(run, argv, limits)
    finally:
        await asyncio.shield(run_cgroups.remove())
    if judge_output is not None and (reason := judge_output(result)) is not None:
        return result.invalid_output(reason)
    return result


async def _supervise(run: RunPaths, argv: Sequence[str], limits: SandboxLimits) -> SandboxResult:
    started = time.monotonic()
    process = await spawn_jail([
        *die_with_parent(), nsjail_binary(), "--config", str(run.config_file), "--",
        str(run.runtime.executable), *argv,
    ])  # fmt: skip
    stdout, stderr = CappedOutput(limits.output_bytes), CappedOutput(limits.output_bytes)
    readers = [
        asyncio.create_task(stdout.drain(process.stdout)),
        asyncio.create_task(stderr.drain(process.stderr)),
    ]
    killed_from_outside = False
    try:
        try:
            await asyncio.wait_for(process.wait(), limits.wall_seconds + _OUTSIDE_GRACE_S)
        except TimeoutError:
            killed_from_outside = True
    finally:
        # Synchronous and first: a cancelled job (arq's timeout) must not leave nsjail running.
        process.kill()
        await asyncio.shield(_reap(process, readers))
    duration = time.monotonic() - started
    if (peak := run.cgroups.memory_peak()) is not None:
        metrics.SANDBOX_MEMORY_PEAK.observe(peak)
    log = run.log_file.read_text(errors="replace") if run.log_file.exists() else ""
    ending = read_ending(log)
    try:
        judged = classify(
            ending,
            stderr.text(),
            limits,
            killed_from_outside=killed_from_outside,
            oom=run.cgroups.out_of_memory(limits.memory_bytes),
            duration_s=duration,
        )
    except JailDidNotRun as error:
        # Kept whole for the operator: how and when nsjail itself ended (a negative status is
        # the signal that killed it), everything it logged, and its stderr, where it writes
        # what happens before its log file is open.
        why = error.why if log.strip() else "nsjail's log is empty: it ended before its first line"
        raise JailDidNotRun(
            why, process.returncode, log, stderr=stderr.text(), duration_s=duration
        ) from None
    return SandboxResult.captured(judged, ending, stdout, stderr, duration, log)


async def _reap(process: JailProcess, readers: list[asyncio.Task[None]]) -> None:
    await process.wait()
    # The jail's first process is PID 1 of its namespace and dies with nsjail, taking the rest
    # with it; the pipes then reach EOF, and reading them to the end closes the transports.
    await finish_drains(readers, _DRAIN_TIMEOUT_S)
    process.close_pipes()
