"""gRPC server processes, shaped like grpc's asyncio examples: `start_server()` binds (port 0
works, the bound port is returned) and `serve()` runs until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import uvloop
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from foretell.auth.api_keys import remember_existing, resolve_api_key, user_exists
from foretell.auth.tokens import TokenVerifier
from foretell.logs import get_logger
from foretell.metrics import serve_metrics
from foretell.runtime._interceptor import Authenticator, ServiceInterceptor
from foretell.runtime.resources import Resources, open_resources
from foretell.settings import Address, Settings

log = get_logger("foretell.server")


# Request metadata past this is refused outright (grpc's default is a soft limit of 8 KiB with
# random refusals up to a hard 16 KiB). Envoy refuses headers past `max_request_headers_kb`
# (below this) itself with a clean 431, so behind it a request is refused once, in one place.
MAX_METADATA_BYTES = 64 * 1024
GRPC_SERVER_OPTIONS = (
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
)


class PortInUse(OSError):
    pass


@dataclass(frozen=True)
class ServiceDef:
    """One gRPC service: its descriptor and how to add its servicer to a server."""

    descriptor: ServiceDescriptor
    add: Callable[[aio.Server, Resources], None]

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)


@dataclass
class RunningServer:
    server: aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]

    async def stop(self, grace: float) -> None:
        # Report NOT_SERVING first so Envoy's health checks drain traffic during the grace period.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    resources: Resources,
    services: Sequence[ServiceDef],
    address: Address,
    *,
    reflected: Sequence[str] = (),
) -> RunningServer:
    """Starts a server with `services`; reflection also lists the `reflected` service names."""
    keys = resources.keys
    settings = resources.settings
    verifier = TokenVerifier(keys, settings.jwt_issuer, settings.jwt_audience)

    async def api_key(secret: str):  # type: ignore[no-untyped-def]
        return await resolve_api_key(resources.db, resources.clock, secret)

    @remember_existing
    async def exists(user_id):  # type: ignore[no-untyped-def]
        return await user_exists(resources.db, user_id)

    server = aio.server(
        interceptors=[ServiceInterceptor(Authenticator(verifier, api_key, exists))],
        options=GRPC_SERVER_OPTIONS,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = []
    for definition in services:
        definition.add(server, resources)
        names.append(definition.full_name)
    # Reflection lists every Foretell service, not only this process's: behind Envoy the
    # gateway serves them all, and a reflection client sees the whole API from any of them.
    reflection.enable_server_reflection(
        [*dict.fromkeys([*names, *reflected]), health.SERVICE_NAME, reflection.SERVICE_NAME],
        server,
    )
    try:
        port = server.add_insecure_port(str(address))
    except RuntimeError:
        port = 0
    if port == 0:
        raise PortInUse(
            f"cannot listen on {address} (FORETELL_GRPC_ADDR): the port is taken "
            "or the host is not an address of this machine"
        )
    await server.start()
    for name in names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, tuple(names))


def run_services(
    settings: Settings, services: Sequence[ServiceDef], *, reflected: Sequence[str] = ()
) -> None:
    """Runs `serve` on uvloop, which carries grpc.aio's per-RPC overhead ~15% faster than the
    default loop (bench/README.md)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, services, reflected=reflected))


async def serve(
    settings: Settings, services: Sequence[ServiceDef], *, reflected: Sequence[str] = ()
) -> None:
    """Runs the named services in this process until SIGTERM or SIGINT, then drains."""
    async with open_resources(settings) as resources:
        running = await start_server(resources, services, settings.grpc_addr, reflected=reflected)
        metrics_port = serve_metrics(settings.metrics_addr)
        log.info(
            "serving",
            services=list(running.service_names),
            grpc=str(settings.grpc_addr.with_port(running.port)),
            metrics=f"http://{settings.metrics_addr.with_port(metrics_port)}/metrics",
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping", grace_s=settings.shutdown_grace_s)
        await running.stop(settings.shutdown_grace_s)
        log.info("stopped")
