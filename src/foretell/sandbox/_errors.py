"""Failures of the sandbox itself, never of the model: a run that raises one of these has not
been judged and must not be recorded against the provider."""

from __future__ import annotations

import signal

# How much of nsjail's stderr the one-line reason keeps.
_STDERR_TAIL = 1000


class SandboxError(Exception):
    """The jail could not be set up or supervised; the message is for operators."""


def how_nsjail_ended(exit_status: int | None) -> str:
    """nsjail's own ending in words: a negative status (asyncio's returncode) is the signal
    that killed it, which is what tells a crash (SIGSEGV) from a kill (SIGKILL: the worker's
    thread gone, the OOM killer, an operator) from nsjail's own refusal (status 255)."""
    if exit_status is None:
        return "nsjail's exit status is unknown"
    if exit_status < 0:
        try:
            name = signal.Signals(-exit_status).name
        except ValueError:
            name = f"signal {-exit_status}"
        return f"nsjail was killed by {name} (status {exit_status})"
    return f"nsjail exited with status {exit_status}"


class JailDidNotRun(SandboxError):
    """nsjail ended without running the model (or without saying how it ended). Nothing ran in
    the jail, so running again is safe.

    Keeps, for operators: what nsjail's log says (`why`: its error lines, or that it logged
    none, or nothing at all), how nsjail itself ended (`exit_status`: a negative one is the
    signal that killed it), when (`duration_s` after it was started), its whole log, and the end
    of what it wrote to stderr, where nsjail reports what happens before its log file is open
    and setpriv reports its own errors. `reason` says all of it but the log in one line: it is
    what the worker logs with the log."""

    def __init__(
        self,
        why: str,
        exit_status: int | None,
        log: str,
        *,
        stderr: str = "",
        duration_s: float | None = None,
    ) -> None:
        reason = f"{why}; {how_nsjail_ended(exit_status)}"
        if duration_s is not None:
            reason += f", {duration_s * 1000:.0f} ms after it was started"
        if tail := stderr.strip()[-_STDERR_TAIL:]:
            reason += f"; its stderr ends with: {tail!r}"
        super().__init__(f"nsjail did not run the model: {reason}")
        self.why = why
        self.reason = reason
        self.exit_status = exit_status
        self.log = log
        self.stderr = stderr
        self.duration_s = duration_s

    @property
    def signal(self) -> int | None:
        """The signal that killed nsjail, if one did."""
        if self.exit_status is None or self.exit_status >= 0:
            return None
        return -self.exit_status


class SandboxUnavailable(SandboxError):
    """This host cannot run jails at all (not root, no nsjail, no usable Python runtime)."""
