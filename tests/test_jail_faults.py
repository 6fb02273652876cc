"""Faults of the jail itself, not of the model.

nsjail is started the same way whatever event loop runs the sandbox: uvloop's own subprocess
support forks and runs Python and gRPC's fork handlers in the child, which sometimes crashed
before exec (nsjail "did not run the model", status -11, empty log). And when nsjail itself
fails, the error says how: the signal or status nsjail ended with, how soon after it was
started, its whole log and its stderr. nsjail is replaced by stand-ins that fail the ways the
real one can (a crash before its first log line, a kill after it started the model's process, a
refusal it logs), then hand over to the real binary for the run after."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

import foretell.sandbox
from foretell.sandbox import JailDidNotRun, SandboxLimits, nsjail_binary, run_in_sandbox
from foretell.sandbox import _run as sandbox_run

LIMITS = SandboxLimits(wall_seconds=10, cpu_seconds=10, memory_mib=256)

# Where a child that runs Python's after-fork hooks says so, while a test watches.
_forked_marker: Path | None = None


def _after_fork_in_child() -> None:
    if _forked_marker is not None:
        fd = os.open(_forked_marker, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)


os.register_at_fork(after_in_child=_after_fork_in_child)


@pytest.fixture(scope="module")
def image_dir() -> Iterator[Path]:
    # Under /tmp and o+x: nsjail bind-mounts as the jail's unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="ftjf-", dir="/tmp"))
    root.chmod(0o711)
    image = root / "image"
    for path in (image / "app", image / "site-packages"):
        path.mkdir(parents=True)
    for path in (image, image / "app", image / "site-packages"):
        path.chmod(0o755)
    yield image
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def run_dir(image_dir: Path) -> Path:
    return image_dir.parent / f"r{uuid.uuid4().hex[:8]}"


def run_cgroup_dirs() -> set[Path]:
    host = foretell.sandbox.detect_cgroups()
    return {d for parent in host.parent_dirs() if parent.exists() for d in parent.glob("run-*")}


def stand_in(directory: Path, failure: str) -> Path:
    """An nsjail that fails with `failure` (shell, given the config path in $2 and its log
    file in $log) on its first start, and is the real nsjail on every start after."""
    directory.mkdir()
    failed = directory / "failed"
    script = directory / "nsjail"
    script.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        if [ ! -e {failed} ]; then
          touch {failed}
          log=$(sed -n 's/^log_file: "\\(.*\\)"$/\\1/p' "$2")
        {textwrap.indent(failure, "  ")}
        fi
        exec {nsjail_binary()} "$@"
        """)
    )
    script.chmod(0o755)
    return script


async def _fails(
    image_dir: Path, run_dir: Path, failure: str, monkeypatch: pytest.MonkeyPatch
) -> JailDidNotRun:
    fake = stand_in(run_dir, failure)
    monkeypatch.setattr(sandbox_run, "nsjail_binary", lambda: str(fake))
    before = run_cgroup_dirs()
    with pytest.raises(JailDidNotRun) as raised:
        await run_in_sandbox(image_dir, run_dir, ["-c", "print(42)"], LIMITS)
    assert run_cgroup_dirs() - before == set()
    # Nothing ran, so the next attempt runs the model.
    again = await run_in_sandbox(image_dir, run_dir, ["-c", "print(42)"], LIMITS)
    assert again.stdout.strip() == "42"
    return raised.value


async def test_a_crash_before_the_first_log_line_names_the_signal_and_keeps_stderr(
    image_dir: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = await _fails(
        image_dir, run_dir, 'echo "nsjail: about to fall over" >&2\nkill -SEGV $$', monkeypatch
    )
    assert error.exit_status == -signal.SIGSEGV
    assert error.signal == signal.SIGSEGV
    assert error.log == ""
    assert "about to fall over" in error.stderr
    assert error.duration_s is not None and 0 < error.duration_s < LIMITS.wall_seconds
    # One line, for the worker's log: what the log shows, how nsjail ended, when, its stderr.
    assert "log is empty" in error.reason
    assert "killed by SIGSEGV (status -11)" in error.reason
    assert "ms after it was started" in error.reason
    assert "about to fall over" in error.reason
    assert str(error).startswith("nsjail did not run the model: ")


async def test_a_kill_after_the_model_started_says_the_end_was_never_logged(
    image_dir: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = "[I][2026-12-07T08:00:00+0000] Executing '/usr/bin/python3.11' for '[STANDALONE]'"
    error = await _fails(
        image_dir, run_dir, f'echo "{started}" >> "$log"\nkill -KILL $$', monkeypatch
    )
    assert error.signal == signal.SIGKILL
    assert error.log.strip() == started
    assert "started but nsjail logged no end" in error.reason
    assert "killed by SIGKILL" in error.reason


async def test_an_error_nsjail_logs_is_the_reason_with_its_exit_status(
    image_dir: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = "[E][2026-12-07T08:00:00+0000][1] cgroup::initNsFromParent():99 mkdir failed"
    error = await _fails(image_dir, run_dir, f'echo "{refused}" >> "$log"\nexit 255', monkeypatch)
    assert error.exit_status == 255 and error.signal is None
    assert error.reason.startswith(refused)
    assert "nsjail exited with status 255" in error.reason


def test_a_jail_started_from_uvloop_runs_no_python_between_fork_and_exec(
    image_dir: Path, run_dir: Path
) -> None:
    """uvloop's subprocess_exec forks and runs the interpreter's after-fork hooks (and gRPC's
    fork handlers) in the child, which is what crashed; the jail's start must run none."""
    global _forked_marker
    _forked_marker = run_dir.parent / f"forked-{uuid.uuid4().hex[:8]}"
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(run_in_sandbox(image_dir, run_dir, ["-c", "print(42)"], LIMITS))
    finally:
        marker, _forked_marker = _forked_marker, None
    assert result.stdout.strip() == "42"
    assert not marker.exists(), "Python ran in the child between fork and exec"
