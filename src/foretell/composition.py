"""The platform's composition: which gRPC services exist, by the short name `foretell serve
NAME` takes, and how a process starts a chosen set of them.

The entry points (the CLI, `foretell up`, the gateway's config, the tests) read the list here;
nothing below this module knows it, so a service never depends on the set it is deployed with."""

from __future__ import annotations

from collections.abc import Sequence

from foretell.account.v1 import account_service_pb2
from foretell.datafeed.v1 import datafeed_service_pb2
from foretell.forecast.v1 import forecast_service_pb2
from foretell.registry.v1 import registry_service_pb2
from foretell.runtime import server
from foretell.runtime.resources import Resources
from foretell.runtime.server import RunningServer, ServiceDef
from foretell.services import account, datafeed, forecast, registry, subscription
from foretell.settings import Address, Settings
from foretell.subscription.v1 import subscription_service_pb2

SERVICES: dict[str, ServiceDef] = {
    "account": ServiceDef(
        account_service_pb2.DESCRIPTOR.services_by_name["AccountService"], account.add_to_server
    ),
    "registry": ServiceDef(
        registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"],
        registry.add_to_server,
    ),
    "subscription": ServiceDef(
        subscription_service_pb2.DESCRIPTOR.services_by_name["SubscriptionService"],
        subscription.add_to_server,
    ),
    "datafeed": ServiceDef(
        datafeed_service_pb2.DESCRIPTOR.services_by_name["DataFeedService"],
        datafeed.add_to_server,
    ),
    "forecast": ServiceDef(
        forecast_service_pb2.DESCRIPTOR.services_by_name["ForecastService"],
        forecast.add_to_server,
    ),
}
# Reflection lists every Foretell service, not only a process's own: behind Envoy the gateway
# serves them all, and a reflection client sees the whole API from any of them.
_ALL_NAMES = tuple(definition.full_name for definition in SERVICES.values())


async def start_services(
    resources: Resources, names: Sequence[str], address: Address
) -> RunningServer:
    """Starts a server with the named services (keys of `SERVICES`) on `address` (port 0 works)."""
    return await server.start_server(
        resources, [SERVICES[name] for name in names], address, reflected=_ALL_NAMES
    )


def run_services(settings: Settings, names: Sequence[str]) -> None:
    """Runs the named services in this process until SIGTERM or SIGINT."""
    server.run_services(settings, [SERVICES[name] for name in names], reflected=_ALL_NAMES)
