"""The one terminal that the children, our own messages and the banner share (honcho's
Printer formats it)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from honcho.printer import Message, Printer

# The name our own lines carry, beside the children's.
SELF = "up"


class Console:
    """The printer the children's output goes through, shared with our own messages and the
    banner. A lock keeps lines whole: one thread per child relays its lines, and the readiness
    thread writes too."""

    def __init__(self, stream: TextIO, names: Sequence[str]) -> None:
        self._stream = stream
        self._printer: Any = Printer(stream)
        self._lock = threading.Lock()
        self._min_width = max(len(name) for name in [*names, "system", SELF])
        self._printer.width = self._min_width

    @property
    def width(self) -> int:
        width: int = self._printer.width
        return width

    @width.setter
    def width(self, value: int) -> None:
        # Never narrower than our own names: lines stay aligned.
        self._printer.width = max(value, self._min_width)

    def write(self, message: Any) -> None:
        with self._lock:
            self._printer.write(message)

    def say(self, text: str) -> None:
        self.write(Message("line", text + "\n", datetime.now(), SELF, None))

    def raw(self, text: str) -> None:
        with self._lock:
            self._stream.write(text)
            self._stream.flush()
