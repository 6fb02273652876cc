"""How a run ended, told apart from nsjail's own log.

A timeout and an out-of-memory kill both end with SIGKILL (nsjail exit code 137); the exit code
alone cannot separate them, nsjail's log and the run's cgroup can. The log is written by nsjail
to a host file the jail cannot reach, so a model cannot forge it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import signal
from dataclasses import dataclass

from foretell.sandbox._capture import CappedOutput
from foretell.sandbox._errors import JailDidNotRun
from foretell.sandbox._limits import SandboxLimits


class Outcome(enum.StrEnum):
    OK = "ok"
    # The model's process exited non-zero (an exception: the traceback is in `detail`).
    MODEL_ERROR = "model_error"
    # The wall clock or the CPU-time limit ran out.
    TIMEOUT = "timeout"
    # The cgroup memory limit was hit (OOM kill), or RLIMIT_AS turned into a MemoryError.
    OUT_OF_MEMORY = "out_of_memory"
    # The seccomp policy killed the process (SIGSYS).
    KILLED_BY_POLICY = "killed_by_policy"
    # The run ended well but what it produced is unacceptable: decided by the caller.
    INVALID_OUTPUT = "invalid_output"


@dataclass(frozen=True)
class SandboxResult:
    outcome: Outcome
    # For the provider: the traceback, or which limit was hit. Never host paths.
    detail: str
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    # The jailed process's exit status, or the signal that ended it.
    exit_code: int | None
    signal: int | None
    duration_s: float
    # nsjail's own log, for operators only: it names host paths.
    log: str

    @classmethod
    def captured(
        cls,
        judged: tuple[Outcome, str],
        ending: Ending,
        stdout: CappedOutput,
        stderr: CappedOutput,
        duration_s: float,
        log: str = "",
    ) -> SandboxResult:
        """The result of a run judged by `classify`, from what was captured of it (a cold
        run's and a warm one's alike)."""
        outcome, detail = judged
        return cls(
            outcome=outcome,
            detail=detail,
            stdout=stdout.text(),
            stderr=stderr.text(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            exit_code=ending.exit_code,
            signal=ending.signal,
            duration_s=duration_s,
            log=log,
        )

    def invalid_output(self, reason: str) -> SandboxResult:
        """The same run, judged by its output: only a run that ended OK can be invalid."""
        if self.outcome is not Outcome.OK:
            return self
        return dataclasses.replace(self, outcome=Outcome.INVALID_OUTPUT, detail=reason)


@dataclass(frozen=True)
class Ending:
    """What nsjail's log says about the end of the jail."""

    started: bool
    time_limit: bool
    seccomp: bool
    exit_code: int | None
    signal: int | None
    errors: tuple[str, ...]


_EXECUTING = re.compile(r"\] Executing '")
_TIME_LIMIT = re.compile(r"run time >= time limit")
_SECCOMP = re.compile(r"committed a syscall/seccomp violation")
_EXITED = re.compile(r"\] pid=\d+ \(.*\) exited with status: (\d+),")
_SIGNALED = re.compile(r"\] pid=\d+ \(.*\) terminated with signal: .*\((\d+)\),")
_ERROR = re.compile(r"^\[[EF]\]")
_DETAIL_TAIL = 4096


def read_ending(log: str) -> Ending:
    exit_code = killed_by = None
    for line in log.splitlines():
        if match := _EXITED.search(line):
            exit_code = int(match[1])
        elif match := _SIGNALED.search(line):
            killed_by = int(match[1])
    return Ending(
        started=bool(_EXECUTING.search(log)),
        time_limit=bool(_TIME_LIMIT.search(log)),
        seccomp=bool(_SECCOMP.search(log)),
        exit_code=exit_code,
        signal=killed_by,
        errors=tuple(line for line in log.splitlines() if _ERROR.match(line)),
    )


def last_traceback(stderr: str) -> str | None:
    start = stderr.rfind("Traceback (most recent call last):")
    return stderr[start:].strip() if start >= 0 else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def cpu_limit_reachable(limits: SandboxLimits, duration_s: float) -> bool:
    """Whether the run lasted long enough to have used up its CPU-time rlimit. nsjail sets
    RLIMIT_CPU's soft and hard limits to the same value, so the kernel ends the process with
    SIGKILL, not SIGXCPU, and on cgroup v1 nothing records the jail's CPU time after it ends.
    What bounds it is the cgroup's bandwidth (cpu_ms_per_sec, with one period of burst) and the
    number of CPUs: a SIGKILL earlier than this cannot be the CPU limit."""
    cores = limits.cpu_ms_per_sec / 1000
    earliest = max(limits.cpu_seconds / cores - 1, limits.cpu_seconds / (os.cpu_count() or 1))
    return duration_s >= 0.95 * earliest


def _why_not_run(ending: Ending) -> str:
    if ending.errors:
        return "; ".join(ending.errors)
    if ending.started:
        return "the model's process was started but nsjail logged no end for it"
    return "nsjail logged no error and did not start the model's process"


def classify(
    ending: Ending, stderr: str, limits: SandboxLimits, *, killed_from_outside: bool, oom: bool,
    duration_s: float,
) -> tuple[Outcome, str]:  # fmt: skip
    """The outcome and the provider-facing detail. Raises SandboxError when the log shows the
    jail never ran the model, or ended in a way nsjail did not report: the platform's fault."""
    if killed_from_outside or ending.time_limit:
        return Outcome.TIMEOUT, f"stopped after the {limits.wall_seconds} s wall-clock limit"
    if not ending.started or (ending.exit_code is None and ending.signal is None):
        raise JailDidNotRun(_why_not_run(ending), None, "")
    if ending.seccomp or ending.signal == signal.SIGSYS:
        return Outcome.KILLED_BY_POLICY, "killed by the sandbox policy: a forbidden system call"
    if ending.signal == signal.SIGKILL and oom:
        return Outcome.OUT_OF_MEMORY, f"killed at the {limits.memory_mib} MiB memory limit"
    if ending.signal == signal.SIGXCPU or (
        ending.signal == signal.SIGKILL and cpu_limit_reachable(limits, duration_s)
    ):
        return Outcome.TIMEOUT, f"stopped after the {limits.cpu_seconds} s CPU-time limit"
    if ending.signal is not None:
        return Outcome.MODEL_ERROR, f"terminated by {_signal_name(ending.signal)}"
    if ending.exit_code == 0:
        return Outcome.OK, ""
    traceback = last_traceback(stderr)
    if traceback is not None and traceback.splitlines()[-1].startswith("MemoryError"):
        return Outcome.OUT_OF_MEMORY, traceback
    # No traceback (sys.exit("message"), a crash in C): the end of stderr says most.
    tail = stderr.strip()[-_DETAIL_TAIL:]
    return Outcome.MODEL_ERROR, traceback or tail or f"exited with status {ending.exit_code}"
