"""Failures of the sandbox itself, never of the model: a run that raises one of these has not
been judged and must not be recorded against the provider."""

from __future__ import annotations


class SandboxError(Exception):
    """The jail could not be set up or supervised; the message is for operators."""


class JailDidNotRun(SandboxError):
    """nsjail ended without running the model (or without saying how it ended). Nothing ran in
    the jail, so running again is safe. Keeps nsjail's exit status and whole log."""

    def __init__(self, reason: str, exit_status: int | None, log: str) -> None:
        status = "unknown" if exit_status is None else str(exit_status)
        super().__init__(f"nsjail did not run the model: {reason} (nsjail exit status {status})")
        self.reason = reason
        self.exit_status = exit_status
        self.log = log


class SandboxUnavailable(SandboxError):
    """This host cannot run jails at all (not root, no nsjail, no usable Python runtime)."""
