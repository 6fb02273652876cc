"""Failures of the sandbox itself, never of the model: a run that raises one of these has not
been judged and must not be recorded against the provider."""

from __future__ import annotations


class SandboxError(Exception):
    """The jail could not be set up or supervised; the message is for operators."""


class SandboxUnavailable(SandboxError):
    """This host cannot run jails at all (not root, no nsjail, no usable Python runtime)."""
