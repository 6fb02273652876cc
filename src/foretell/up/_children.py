"""The supervisor of `foretell up`'s children: starts them, restarts a crashed one with back-off
(`_restart`), stops them all on a signal.

Process control is the standard library's `subprocess`; honcho only prints, through its public
`Printer` (see docs/operations.md for why no supervisor library runs the processes).

Hazards this module is shaped by:
- Every child is started from the thread that runs `loop()` (the main thread) and asks the
  kernel for a parent-death signal (`setpriv --pdeathsig`): the kernel sends it when the thread
  that forked the child ends, so a child forked from a short-lived thread would be killed with
  it, and after a `kill -9` of `foretell up` no child outlives it.
- Signal handlers only record the signal: the loop, which polls, does the work, so a handler
  never takes a lock the interrupted code may hold.
- Each child has its own session: a Ctrl-C in the terminal reaches `foretell up` alone, which
  stops the children in order (services and workers first, the stores they use last).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import IO

from honcho.colour import get_colours
from honcho.printer import Message

from foretell.up._console import Console
from foretell.up._restart import DEFAULT_POLICY, RestartPolicy, after_exit, describe

POLL_S = 0.1
# setpriv (util-linux) sets the parent-death signal and execs the command: no Python preexec_fn,
# which is unsafe in a process with threads. SIGTERM, so a child still shuts down gracefully.
SETPRIV = shutil.which("setpriv")


def orphan_proof(argv: Sequence[str], setpriv: str | None = SETPRIV) -> list[str]:
    """`argv`, run so that the kernel sends it SIGTERM when its parent dies."""
    if setpriv is None:
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None
    colour: str | None
    # Stopped after the others: the stores the others need while they shut down.
    last: bool = False
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    restarts: int = 0
    # How its last run ended; while it waits for its restart, how the run ends for it.
    returncode: int | None = None
    readers: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    """Runs the children until a signal or `stop()`; `cause` and `returncodes()` say how it
    ended. `clock` is monotonic seconds, injected with the policy so tests can drive them."""

    def __init__(
        self,
        console: Console,
        *,
        policy: RestartPolicy = DEFAULT_POLICY,
        kill_wait_s: float = 10.0,
        clock: Callable[[], float] | None = None,
        setpriv: str | None = SETPRIV,
    ) -> None:
        self._setpriv = setpriv
        self._console = console
        self._policy = policy
        self._kill_wait_s = kill_wait_s
        self._clock = clock or time.monotonic
        self._children: dict[str, Child] = {}
        self._colours = get_colours()
        self._lock = threading.Lock()
        self._signal: int | None = None
        self._final: dict[str, int] = {}
        self.cause: str | None = None
        self.by_signal = False

    def add(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        last: bool = False,
    ) -> None:
        self._children[name] = Child(
            name, list(argv), dict(env) if env is not None else None, next(self._colours), last
        )

    def stop(self, cause: str, *, by_signal: bool = False) -> None:
        """Asks the loop to stop everything (from any thread but a signal handler)."""
        with self._lock:
            if self.cause is None:
                self.cause, self.by_signal = cause, by_signal

    def restarts(self) -> dict[str, int]:
        return {name: child.restarts for name, child in self._children.items()}

    def returncodes(self) -> dict[str, int]:
        """How each child ended: its exit code when the stop came, or, for one that had
        crashed and was waiting for its restart, that crash's."""
        return dict(self._final)

    def pid(self, name: str) -> int | None:
        process = self._children[name].process
        return None if process is None or process.poll() is not None else process.pid

    def loop(self, on_started: Callable[[], None] = lambda: None) -> None:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for signum in previous:
            signal.signal(signum, self._on_signal)
        try:
            self.start()
            on_started()
            while not self._stopping():
                self.tick()
                self._wait(POLL_S)
            self.shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def start(self) -> None:
        """Starts every child (from the thread that will run the loop: see the module doc)."""
        for child in self._children.values():
            self._spawn(child)

    def tick(self) -> None:
        """One pass: note the children that exited, restart those whose back-off is over."""
        now = self._clock()
        for child in self._children.values():
            if child.process is not None and child.process.poll() is not None:
                self._exited(child, child.process.returncode, now)
            if child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                child.restarts += 1
                self._spawn(child)
                if child.process is not None:
                    self._console.say(f"{child.name} restarted (pid {child.process.pid})")

    def _exited(self, child: Child, returncode: int, now: float) -> None:
        child.process, child.returncode = None, returncode
        restart = after_exit(
            self._policy, crashes_before=child.crashes, started_at=child.started_at, exited_at=now
        )
        child.crashes = restart.crashes
        child.restart_at = now + restart.delay_s
        self._console.say(describe(self._policy, child.name, returncode, restart))

    def _spawn(self, child: Child) -> None:
        try:
            process = subprocess.Popen(  # noqa: S603 - our own command lines
                orphan_proof(child.argv, self._setpriv),
                env=child.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            # Counted like a crash: the back-off applies, and a missing binary crash-loops.
            self._console.say(f"{child.name} cannot start: {error}")
            child.started_at = self._clock()
            self._exited(child, 127, child.started_at)
            return
        child.process, child.started_at = process, self._clock()
        assert process.stdout is not None
        reader = threading.Thread(
            target=self._relay, args=(child, process.stdout), name=f"up-{child.name}", daemon=True
        )
        reader.start()
        child.readers = [r for r in child.readers if r.is_alive()] + [reader]

    def _relay(self, child: Child, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                self._console.write(Message("line", line, datetime.now(), child.name, child.colour))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signal is None:
            self._signal = signum

    def _stopping(self) -> bool:
        if self._signal is not None:
            self.stop(f"{signal.Signals(self._signal).name} received", by_signal=True)
        return self.cause is not None

    def _wait(self, seconds: float) -> None:
        # Not an Event: a signal handler must not touch its lock. The poll interval bounds how
        # late a signal or an exit is noticed.
        time.sleep(seconds)

    def shutdown(self) -> None:
        self._console.say("stopping every process")
        for child in self._children.values():
            child.restart_at = None
        first = [c for c in self._children.values() if not c.last]
        then = [c for c in self._children.values() if c.last]
        for group in (first, then):
            self._stop_group(group)
        for child in self._children.values():
            for reader in child.readers:
                reader.join(timeout=2)

    def _stop_group(self, group: Sequence[Child]) -> None:
        running = [c for c in group if c.process is not None and c.process.poll() is None]
        for child in group:
            if child.process is not None and child.process.poll() is not None:
                # Exited since the last tick: its code is part of how the run ended.
                self._final[child.name] = child.process.returncode
            elif child.process is None and child.returncode is not None:
                # Down since a crash, waiting for its restart: it did not stop cleanly.
                self._final[child.name] = child.returncode
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._kill_wait_s
        for child in running:
            assert child.process is not None
            try:
                code = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._console.say(
                    f"{child.name} did not stop within {self._kill_wait_s:g} s: killing it"
                )
                child.process.kill()
                code = child.process.wait()
            self._final[child.name] = code
