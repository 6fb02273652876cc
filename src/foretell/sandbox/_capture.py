"""Bounded capture of a jail's stdout and stderr."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

_CHUNK = 64 * 1024


@dataclass
class CappedOutput:
    """Keeps the first three quarters of `cap` bytes and the last quarter, dropping the middle
    with a marker: a flood of prints must not hide the traceback at the end."""

    cap: int
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    total: int = 0

    @property
    def _head_cap(self) -> int:
        return self.cap * 3 // 4

    @property
    def _tail_cap(self) -> int:
        return self.cap - self._head_cap

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self._head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self._tail_cap:
                del self.tail[: len(self.tail) - self._tail_cap]

    def text(self) -> str:
        tail = self.tail[-self._tail_cap :] if self.tail else b""
        dropped = self.total - len(self.head) - len(tail)
        if dropped <= 0:
            return (bytes(self.head) + bytes(tail)).decode(errors="replace")
        marker = f"\n[... {dropped} bytes of output dropped ...]\n"
        return (
            bytes(self.head).decode(errors="replace")
            + marker
            + bytes(tail).decode(errors="replace")
        )

    async def drain(self, stream: asyncio.StreamReader) -> None:
        """Reads to EOF: the rest is counted and dropped, never left to block the writer."""
        while chunk := await stream.read(_CHUNK):
            self.add(chunk)


async def finish_drains(readers: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Lets the readers of a jail's pipes reach EOF for up to `timeout_s` (once the jail is
    gone nothing holds the pipes open for long; this only guards a hang), then cancels the
    rest."""
    _done, pending = await asyncio.wait(readers, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
