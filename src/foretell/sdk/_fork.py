"""The warm template: `python -m foretell.sdk._fork FD MODULE...` inside a jail (see
foretell.sandbox's warm starts). Never imported by a model.

It imports the runner and the given modules of the image's wheels once, never anything of the
provider's app (/image/app, empty while it imports), then serves one run at a time on the
control socket the worker passed as fd FD (SOCK_SEQPACKET): each request is a JSON message with
the runner's argv and two fds, the run's stdout and stderr. Each run's child is forked ahead
of its request, once the previous run is cleaned up (so it starts gRPC before its run, see
`_wait_for_run`), is handed the request and becomes the runner; when the child has ended the
template kills every other process of the jail (what the child left behind), removes SysV IPC
and everything under /tmp, reports the child's status and forks the next run's child. A child
never holds the control socket, nor another child's, and the template is PID 1 of the jail's
PID namespace with no signal handler, so nothing a child does can signal, trace or impersonate
it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sys
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

_PR_SET_DUMPABLE = 4
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SITE = "/image/site-packages/"
_TMP = "/tmp"  # noqa: S108 - the jail's own tmpfs
# Modules a wheel imports only on first use, imported here too when the template preloaded
# every package of the key: each run would otherwise pay for them in `predict`. A fixed table
# of wheel code, the same for every run of a layer: never learned from runs, whose imports
# depend on the data they saw (a template shared by later runs would carry that over).
# narwhals (scikit-learn's dataframe layer) loads its pandas backend the first time it is
# handed a pandas object: ~20 modules, ~7 ms of each run of a scikit-learn model on pandas.
ON_FIRST_USE: dict[tuple[str, ...], tuple[str, ...]] = {
    ("narwhals", "pandas"): (
        "narwhals._pandas_like.dataframe",
        "narwhals._pandas_like.namespace",
        "narwhals._pandas_like.series",
        "narwhals._interchange.dataframe",
        "narwhals._namespace",
        "narwhals.stable.v2._namespace",
    ),
}


def _preload(names: list[str]) -> list[str]:
    """Imports each name that is a module of the image's wheels; returns those that failed.
    A name resolving anywhere else (the app, the SDK) is not imported: the list comes from the
    build's import check, which the provider's code could have written into."""
    failed = []
    for name in names:
        if not _NAME.match(name):
            continue
        top = name.partition(".")[0]
        try:
            spec = importlib.util.find_spec(top)
            origin = (spec.origin or "") if spec else ""
            locations = list(spec.submodule_search_locations or []) if spec else []
            if not (origin.startswith(_SITE) or any(p.startswith(_SITE) for p in locations)):
                continue
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a module that does not import stays cold
            failed.append(name)
    return failed


def _first_use() -> list[str]:
    """The modules of `ON_FIRST_USE` whose packages the template has imported."""
    return [
        name
        for packages, names in ON_FIRST_USE.items()
        if all(package in sys.modules for package in packages)
        for name in names
    ]


# What a waiting child answers once it has the run's request.
_TAKEN = b"taken"


def _fork_waiting(control: socket.socket) -> tuple[int, socket.socket]:
    """Forks the next run's child ahead of its run (`_wait_for_run`); returns its pid and the
    template's end of the socket pair its run's request will come by."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _wait_for_run(theirs, control)
    theirs.close()
    return pid, ours


def _wait_for_run(handoff: socket.socket, control: socket.socket) -> None:
    """A child forked from the template after the previous run's clean-up, for the next run
    only. Before its run it opens its channel to the run's socket: a process's first channel
    starts gRPC and its threads, which then cost the run nothing; the channel connects only at
    the run's first call, once the worker serves that run's own server there. Then it waits for
    the run's argv and fds. Never returns."""
    try:
        control.close()
        channel = _channel()
        message, fds, _flags, _addr = socket.recv_fds(handoff, 1 << 16, 2)
        # Taken: the template counts the run as this process's only from here.
        handoff.send(_TAKEN)
        handoff.close()
        if len(fds) != 2:
            os._exit(1)
        argv = list(json.loads(message)["argv"])
    except BaseException:  # noqa: BLE001 - the template reports the run's end, whatever it is
        os._exit(1)
    _child(argv, fds[0], fds[1], channel)


def _channel() -> grpc.Channel | None:
    try:
        import grpc

        return grpc.insecure_channel("unix://" + os.environ["FORETELL_SOCKET"])
    except Exception:  # noqa: BLE001 - the runner opens its own
        return None


def _hand_over(
    waiting: tuple[int, socket.socket], message: bytes, fds: list[int], control: socket.socket
) -> int:
    """Gives the run's request and fds to the waiting child (another, forked now, if that one is
    gone or dies before taking it); returns the run's pid. Only a child that said it took the
    request runs it: one killed between runs (the OOM killer, an operator) may still accept
    the message into its socket while it dies, and its end must not be the run's."""
    pid, handoff = waiting
    try:
        if not _taken(handoff, message, fds):
            handoff.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
            pid, handoff = _fork_waiting(control)
            if not _taken(handoff, message, fds):
                raise RuntimeError("two children in a row died before taking the run")
    finally:
        handoff.close()
        for fd in fds:
            os.close(fd)
    return pid


def _taken(handoff: socket.socket, message: bytes, fds: list[int]) -> bool:
    try:
        socket.send_fds(handoff, [message], fds)
        return handoff.recv(len(_TAKEN)) == _TAKEN
    except OSError:
        return False


def _reap(pid: int) -> int:
    # No EINTR loops here: Python retries a system call a signal interrupts (PEP 475).
    return os.waitpid(pid, 0)[1]


def _child(argv: list[str], out: int, err: int, channel: grpc.Channel | None) -> None:
    code = 1
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        importlib.invalidate_caches()
        # numpy's global generator was seeded once in the template: every run gets fresh entropy,
        # as a cold start would.
        if (numpy_random := sys.modules.get("numpy.random")) is not None:
            numpy_random.seed()
        from foretell.sdk import run

        sys.argv = ["foretell.sdk.run", *argv]
        try:
            code = run.main(argv, channel=channel)
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - reported as the interpreter would
            traceback.print_exc()
            code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if 0 <= code < 256 else 1)


def _kill_the_rest() -> None:
    """Kills every process of the jail but this one (PID 1) and reaps them."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        while True:
            os.waitpid(-1, 0)


def _remove_ipc() -> None:
    """SysV IPC objects outlive their creator in the jail's IPC namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    # IPC_RMID (0) is the command of shmctl(id, cmd, buf) and msgctl, the third argument of
    # semctl(id, num, cmd): (id, 0, NULL) removes for all three.
    for kind, remove in (("shm", libc.shmctl), ("sem", libc.semctl), ("msg", libc.msgctl)):
        try:
            lines = open(f"/proc/sysvipc/{kind}").read().splitlines()[1:]  # noqa: SIM115
        except OSError:
            continue
        for line in lines:
            ident = int(line.split()[1])
            remove(ident, 0, None)


def _wipe_tmp() -> None:
    for name in os.listdir(_TMP):
        path = os.path.join(_TMP, name)
        if os.path.isdir(path) and not os.path.islink(path):
            for directory, dirs, _files in os.walk(path):
                # A run may have taken its own permissions away: the owner gives them back.
                for sub in dirs:
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(directory, sub), 0o700)
            with contextlib.suppress(OSError):
                os.chmod(path, 0o700)
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _status(raw: int) -> dict[str, int]:
    if os.WIFSIGNALED(raw):
        return {"signal": os.WTERMSIG(raw)}
    return {"exit": os.WEXITSTATUS(raw)}


def serve(control: socket.socket) -> None:
    waiting = _fork_waiting(control)
    while True:
        message, fds, _flags, _addr = socket.recv_fds(control, 1 << 16, 2)
        if not message:
            return
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": "a run needs two fds"}).encode())
            continue
        pid = _hand_over(waiting, message, fds, control)
        control.send(json.dumps({"started": pid}).encode())
        raw = _reap(pid)
        _kill_the_rest()
        _remove_ipc()
        _wipe_tmp()
        control.send(json.dumps(_status(raw)).encode())
        # After the clean-up: the next run's child is forked from the template alone.
        waiting = _fork_waiting(control)


def main() -> int:
    control = socket.socket(fileno=int(sys.argv[1]))
    # PID 1 of its namespace ignores the signals it has no handler for, even from its own
    # children: take back the handler Python installs for SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Not dumpable: a child (same uid) cannot open /proc/1/fd, /proc/1/mem or /proc/1/environ.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return errno.EPERM
    # The runner and through it grpc and protobuf; grpc imports these on a process's first
    # channel, which is every child's.
    import grpc._channel
    import grpc._simple_stubs
    import grpc.experimental  # noqa: F401

    import foretell.sdk.run  # noqa: F401

    failed = _preload(sys.argv[2:])
    failed += _preload(_first_use())
    # Objects that exist now are never collected again: a child's collections do not touch
    # (and so copy) the template's pages.
    gc.collect()
    gc.freeze()
    control.send(json.dumps({"ready": os.getpid(), "failed": failed}).encode())
    serve(control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
