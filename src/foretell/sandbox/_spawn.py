"""Starting nsjail from the event loop without the loop's own subprocess support.

`loop.subprocess_exec` is the loop's: the standard loop goes through `subprocess.Popen`, whose
child runs only async-signal-safe C between vfork() and exec(). uvloop's goes through libuv's
uv_spawn, a full fork() after which the child runs Python (`PyOS_AfterFork_Child`, every
`os.register_at_fork` hook) and gRPC's fork handlers, in a copy of a process whose other
threads (gRPC's) held locks at the moment of the fork. That child sometimes crashes before it
execs: the jail then "did not run the model", nsjail's status is -11 (SIGSEGV) or -6 (SIGABRT)
and its log is empty, because nsjail never started. With the serving processes on uvloop, that
was 6 of 200 starts beside a busy gRPC server (bench/jail_faults.py), and the cause of the
dry runs that ended "nsjail did not run the model" while they ran in the API process.

So the jail is always started by `subprocess.Popen`, from the loop's thread (the parent-death
signal of `die_with_parent` follows the thread that forked), and only then handed to the loop:
its pipes as read transports, its end as a pidfd the loop polls. Whatever loop runs the
sandbox, nothing runs between fork and exec but CPython's own child code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO


@dataclass(eq=False)
class JailProcess:
    """nsjail, started; its stdout and stderr as stream readers of the running loop."""

    popen: subprocess.Popen[bytes]
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    _pipes: list[asyncio.BaseTransport] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs; then its exit status, or minus the signal that killed it."""
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, unless it has been reaped (its pid may then be another process's)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()

    async def wait(self) -> int:
        """Its exit status once it has ended; cancelling the wait leaves it running."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.popen.pid)
        except ProcessLookupError:
            # Already ended and reaped by nobody else: waiting returns at once.
            return self.popen.wait()
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        try:
            # A pidfd becomes readable when the process ends (Linux 5.3+).
            loop.add_reader(pidfd, readable)
            await ended
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return self.popen.wait()

    def close_pipes(self) -> None:
        """Closes the pipes' transports (each closes itself at EOF; this is for a pipe some
        leftover process still holds open)."""
        for transport in self._pipes:
            transport.close()


async def read_pipe(pipe: IO[bytes]) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """`pipe` as a stream reader of the running loop, and its transport (to close)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _protocol = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe
    )
    return reader, transport


async def _reader(pipe: IO[bytes], transports: list[asyncio.BaseTransport]) -> asyncio.StreamReader:
    reader, transport = await read_pipe(pipe)
    transports.append(transport)
    return reader


async def spawn_jail(argv: Sequence[str], *, pass_fds: Sequence[int] = ()) -> JailProcess:
    """Starts `argv` (nsjail, behind `die_with_parent()`) with stdin from /dev/null, stdout and
    stderr piped, an empty environment and only `pass_fds` inherited."""
    # Blocking only until the child has exec'd (vfork), as the loop's own subprocess_exec
    # does; here, in the loop's thread, which the jail's parent-death signal is tied to.
    popen = subprocess.Popen(  # noqa: ASYNC220, S603 - our own command line
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={},
        pass_fds=tuple(pass_fds),
    )
    assert popen.stdout is not None
    assert popen.stderr is not None
    transports: list[asyncio.BaseTransport] = []
    try:
        stdout = await _reader(popen.stdout, transports)
        stderr = await _reader(popen.stderr, transports)
    except BaseException:
        popen.kill()
        popen.wait()
        for transport in transports:
            transport.close()
        popen.stdout.close()
        popen.stderr.close()
        raise
    return JailProcess(popen, stdout, stderr, transports)
