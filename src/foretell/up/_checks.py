"""Checks before anything starts: the data directory's lock and the addresses to listen on."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from foretell.settings import Address, Settings
from foretell.up._errors import AlreadyRunning, StartupError
from foretell.up._plan import WILDCARD_HOSTS, ServiceProcess

LOCK_FILE = "up.lock"


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Holds an flock on data_dir/up.lock. The kernel drops it when the process dies, so a
    crash never leaves a stale lock behind; the file keeps the holder's pid for the message.

    The children do not inherit it (subprocess closes other descriptors), and a `kill -9` of
    `foretell up` ends them too (their parent-death signal).
    """
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise AlreadyRunning(
                f"Foretell is already running from {data_dir} (pid {pid}); "
                f"stop it with Ctrl-C in its terminal or `kill {pid}`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Listener:
    """An address `foretell up` will listen on, and the variable that sets it."""

    variable: str
    address: Address
    note: str = ""

    def label(self) -> str:
        return f"{self.variable} {self.address}{self.note}"


def listeners(settings: Settings, plan: Sequence[ServiceProcess]) -> list[Listener]:
    found = [
        Listener("FORETELL_HTTP_ADDR", settings.http_addr),
        Listener("FORETELL_ENVOY_ADMIN_ADDR", settings.envoy_admin_addr),
    ]
    split = len(plan) > 1
    for i, process in enumerate(plan):
        grpc_note = f" (port {settings.grpc_addr.port}+{i}, for {process.name})" if split else ""
        metrics_note = (
            f" (port {settings.metrics_addr.port}+{i}, for {process.name})" if split else ""
        )
        found.append(Listener("FORETELL_GRPC_ADDR", process.grpc_addr, grpc_note))
        found.append(Listener("FORETELL_METRICS_ADDR", process.metrics_addr, metrics_note))
    return found


def overlaps(a: Address, b: Address) -> bool:
    """Whether listening on `a` and on `b` would collide."""
    return a.port == b.port and (
        a.host == b.host or a.host in WILDCARD_HOSTS or b.host in WILDCARD_HOSTS
    )


def check_ports(listeners: Sequence[Listener]) -> None:
    """Raises StartupError, naming the variable to change, unless every port is fixed and no
    two listeners collide. Touches no socket."""
    for i, listener in enumerate(listeners):
        port = listener.address.port
        if port == 0 or port > 65535:
            raise StartupError(
                f"{listener.label()}: `foretell up` needs a fixed port from 1 to 65535 "
                f"(Envoy is configured with it); set {listener.variable}"
            )
        for other in listeners[:i]:
            if overlaps(listener.address, other.address):
                raise StartupError(
                    f"{other.label()} and {listener.label()} use the same port; "
                    f"set {listener.variable} to a different address"
                )


def check_addresses(listeners: Sequence[Listener]) -> None:
    """Raises StartupError, naming the variable to change, unless every address can be bound."""
    check_ports(listeners)
    for listener in listeners:
        _check_bindable(listener)


def _check_bindable(listener: Listener) -> None:
    host, port = listener.address.host, listener.address.port
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise StartupError(
            f"{listener.label()}: cannot resolve {host!r} ({error.strerror}); "
            f"set {listener.variable} to a local address"
        ) from None
    problems: list[str] = []
    bound = False
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # The servers set SO_REUSEADDR too; without it, connections of a previous run in
            # TIME_WAIT would make a free port look taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"{listener.label()} is already in use; "
                        f"set {listener.variable} to a free address"
                    ) from None
                problems.append(error.strerror or str(error))
            else:
                bound = True
    # "localhost" may resolve to ::1 on a host without IPv6: one usable family is enough.
    if not bound:
        raise StartupError(
            f"{listener.label()}: cannot listen there ({'; '.join(problems) or 'no address'}); "
            f"set {listener.variable} to a local address"
        )
