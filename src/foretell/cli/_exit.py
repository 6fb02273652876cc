"""How a client command ends: the documented exit codes and the one error type that carries them.

Client side only, like every module of the client (see `_client.py`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import IO, Any

import click


class Exit(IntEnum):
    """Exit codes of the client commands; scripts may rely on them."""

    OK = 0
    ERROR = 1
    USAGE = 2
    AUTH = 3
    DENIED = 4
    NOT_FOUND = 5
    CONFLICT = 6
    UNREACHABLE = 7
    BUILD_FAILED = 8
    RATE_LIMITED = 9
    RUN_FAILED = 10
    LEDGER_MISMATCH = 11


EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  unexpected error (the server's reference id is shown)
  2  bad usage or input, including the server's field violations
  3  not signed in, or the session expired: run `foretell login`
  4  permission denied
  5  not found
  6  conflict: already exists, or not possible in the current state
  7  Foretell unreachable or not answering in time
  8  the build failed
  9  too many requests: try again later
  10  the model's run did not end ok (`foretell run`: error, limit, refused output)
  11  the ledger does not match (`foretell verify`: edited, deleted or inserted history)

\b
The server URL comes from --url, else FORETELL_URL, else localhost:8080. With
FORETELL_API_KEY set, commands send that API key instead of the stored session.
"""


class CliError(click.ClickException):
    """An error shown as one plain `error: ...` message with a documented exit code."""

    def __init__(self, message: str, code: Exit = Exit.ERROR) -> None:
        super().__init__(message)
        self.code = code

    # click reads `exit_code`, a class attribute there: one class per code would be noise.
    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return int(self.code)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)
