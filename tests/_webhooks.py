"""A webhook receiver on 127.0.0.1 for tests: keeps every request it is sent and answers each
with the next status of its script (then 200)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from foretell.clock import Clock
from foretell.composition import SERVICES, start_services
from foretell.runtime import Resources, open_resources
from foretell.settings import Address, Settings
from foretell.webhooks import Dispatcher


@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when its body was read


@dataclasses.dataclass
class Receiver:
    port: int = 0
    script: list[int] = dataclasses.field(default_factory=list)
    received: list[Received] = dataclasses.field(default_factory=list)
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # While cleared, each request is kept (received) but not answered: a stalled endpoint.
    answering: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.answering.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode().split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(request_line.split(" ")[1], headers, body, time.time()))
            self.changed.set()
            await self.answering.wait()
            status = self.script.pop(0) if self.script else 200
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.changed.set()

    async def wait_for(self, done: Callable[[list[Received]], bool], within_s: float = 10) -> None:
        """Until `done(received)` holds, or TimeoutError after `within_s`."""
        async with asyncio.timeout(within_s):
            while not done(self.received):
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def receiving(
    script: list[int] | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1, speaking HTTPS with `tls` (a server context) when given."""
    receiver = Receiver(script=list(script or []))
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0, ssl=tls)
    receiver.port = server.sockets[0].getsockname()[1]
    async with server:
        yield receiver


def lenient(settings: Settings) -> Settings:
    """Settings that let webhooks reach this machine (FORETELL_WEBHOOKS_ALLOW_PRIVATE=on), with
    retries fast enough for a test."""
    return dataclasses.replace(
        settings, webhooks_allow_private="on", webhook_backoff_s=0.05, webhook_max_attempts=3,
        webhook_timeout_s=2,
    )  # fmt: skip


@asynccontextmanager
async def lenient_services(
    settings: Settings, clock: Clock
) -> AsyncIterator[tuple[Resources, int]]:
    """Every service on a port of its own (returned), under `lenient(settings)`."""
    async with open_resources(lenient(settings), clock=clock) as res:
        running = await start_services(res, list(SERVICES), Address("127.0.0.1", 0))
        try:
            yield res, running.port
        finally:
            await running.stop(0.5)


@asynccontextmanager
async def dispatching(res: Resources) -> AsyncIterator[Dispatcher]:
    """The worker's webhook dispatcher, running meanwhile."""
    running = Dispatcher(res.db, res.settings, res.clock)
    await running.start()
    try:
        yield running
    finally:
        await running.close()
