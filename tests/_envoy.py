"""Runs a real Envoy for tests: rendered from the production template, on ports the kernel
picks (port 0), discovered through the admin API."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx

from foretell.gateway import envoy_binary, render_envoy_config
from foretell.settings import Address, Settings

_READY_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Envoy:
    base_url: str
    admin_url: str
    port: int

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _health_checks(self, client: httpx.AsyncClient, outcome: str) -> dict[str, int]:
        """Per cluster, how many active health checks ended in `outcome` (success, failure)."""
        url = f"{self.admin_url}/stats?filter=health_check.{outcome}$"
        counts: dict[str, int] = {}
        for line in (await client.get(url)).text.splitlines():
            name, _, value = line.partition(": ")
            counts[name.rsplit(".", 2)[0]] = int(value)
        return counts

    async def wait_upstreams_healthy(self, failures_seen: dict[str, int]) -> None:
        """Until Envoy's active health checks pass for every upstream host. The session's
        in-process gRPC server answers them only while the event loop runs, which it does not
        during synchronous tests: checks then time out, and Envoy may be about to mark the
        host unhealthy (503 "no healthy upstream"). So when any check failed since the last
        call (`failures_seen`, updated here), wait for one that succeeded after now: checks
        are sequential, so none sent during the stall is still pending then."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        async with httpx.AsyncClient(timeout=1) as client:
            failures = await self._health_checks(client, "failure")
            failed = any(n > failures_seen.get(name, 0) for name, n in failures.items())
            baseline = await self._health_checks(client, "success") if failed else {}
            while time.monotonic() < deadline:
                try:
                    body = (await client.get(f"{self.admin_url}/clusters")).text
                    successes = await self._health_checks(client, "success")
                except httpx.HTTPError:
                    body, successes = "", {}
                flags = [line for line in body.splitlines() if "::health_flags::" in line]
                healthy = bool(flags) and all(
                    line.endswith("::health_flags::healthy") for line in flags
                )
                checked = all(successes.get(name, 0) > n for name, n in baseline.items())
                if healthy and checked:
                    failures_seen.update(failures)
                    return
                # Envoy has no health notification; poll within the deadline.
                await asyncio.sleep(0.05)
        raise TimeoutError(f"envoy: upstreams not healthy after {_READY_TIMEOUT_S}s")


def _wait_for(what: str, check: object, proc: subprocess.Popen[bytes], log: Path) -> object:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        result = check()  # type: ignore[operator]
        if result:
            return result
        # Envoy offers no readiness notification; poll at a short interval within a deadline.
        time.sleep(0.05)
    raise TimeoutError(
        f"envoy: {what} not ready after {_READY_TIMEOUT_S}s:\n{log.read_text()[-4000:]}"
    )


@contextmanager
def run_envoy(
    settings: Settings, upstreams: Mapping[str, Address], workdir: Path
) -> Iterator[Envoy]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "envoy.yaml"
    admin_file = workdir / "admin-address"
    log = workdir / "envoy.log"
    admin_file.unlink(missing_ok=True)
    config.write_text(
        render_envoy_config(
            settings,
            upstreams,
            http_addr=Address("127.0.0.1", 0),
            admin_addr=Address("127.0.0.1", 0),
        )
    )
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(config),
                "--admin-address-path",
                str(admin_file),
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        def admin_address() -> str | None:
            text = admin_file.read_text().strip() if admin_file.exists() else ""
            return text or None

        admin_url = f"http://{_wait_for('admin', admin_address, proc, log)}"

        def listener_port() -> int | None:
            try:
                body = httpx.get(f"{admin_url}/listeners?format=json", timeout=1).json()
            except httpx.HTTPError:
                return None
            for listener in body.get("listener_statuses", []):
                port = listener["local_address"]["socket_address"].get("port_value")
                if port:
                    return int(port)
            return None

        port = int(_wait_for("listener", listener_port, proc, log))  # type: ignore[call-overload]
        base_url = f"http://127.0.0.1:{port}"

        def upstream_healthy() -> bool:
            try:
                return httpx.get(f"{base_url}/v1/auth/jwks", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for("upstream health", upstream_healthy, proc, log)
        yield Envoy(base_url, admin_url, port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@asynccontextmanager
async def running_envoy(
    settings: Settings, upstreams: Mapping[str, Address], workdir: Path
) -> AsyncIterator[Envoy]:
    """run_envoy for async tests: waits in a thread, so an in-process gRPC server on the
    running event loop can answer Envoy's health checks meanwhile."""
    manager = run_envoy(settings, upstreams, workdir)
    gateway = await asyncio.to_thread(manager.__enter__)
    try:
        yield gateway
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


@asynccontextmanager
async def relay_from(local_host: str, target_port: int) -> AsyncIterator[str]:
    """A TCP relay to 127.0.0.1:`target_port` whose outgoing connections come from
    `local_host` (any 127.x address is this machine): Envoy sees another client address.
    grpcio cannot pick a channel's source address itself. Yields the relay's target."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", target_port, local_addr=(local_host, 0)
        )
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
