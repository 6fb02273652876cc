"""The platform's gRPC services, by the short name `foretell serve NAME` takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.descriptor import ServiceDescriptor

from foretell.account.v1 import account_service_pb2
from foretell.datafeed.v1 import datafeed_service_pb2
from foretell.forecast.v1 import forecast_service_pb2
from foretell.registry.v1 import registry_service_pb2
from foretell.subscription.v1 import subscription_service_pb2

if TYPE_CHECKING:
    from grpc import aio

    from foretell.runtime.resources import Resources


@dataclass(frozen=True)
class ServiceDef:
    descriptor: ServiceDescriptor
    add: Callable[[aio.Server, Resources], None]

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)


def _account(server: aio.Server, resources: Resources) -> None:
    from foretell.services.account import add_to_server

    add_to_server(server, resources)


def _registry(server: aio.Server, resources: Resources) -> None:
    from foretell.services.registry import add_to_server

    add_to_server(server, resources)


def _datafeed(server: aio.Server, resources: Resources) -> None:
    from foretell.services.datafeed import add_to_server

    add_to_server(server, resources)


def _forecast(server: aio.Server, resources: Resources) -> None:
    from foretell.services.forecast import add_to_server

    add_to_server(server, resources)


def _subscription(server: aio.Server, resources: Resources) -> None:
    from foretell.services.subscription import add_to_server

    add_to_server(server, resources)


SERVICES: dict[str, ServiceDef] = {
    "account": ServiceDef(
        account_service_pb2.DESCRIPTOR.services_by_name["AccountService"], _account
    ),
    "registry": ServiceDef(
        registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"], _registry
    ),
    "subscription": ServiceDef(
        subscription_service_pb2.DESCRIPTOR.services_by_name["SubscriptionService"],
        _subscription,
    ),
    "datafeed": ServiceDef(
        datafeed_service_pb2.DESCRIPTOR.services_by_name["DataFeedService"], _datafeed
    ),
    "forecast": ServiceDef(
        forecast_service_pb2.DESCRIPTOR.services_by_name["ForecastService"],
        _forecast,
    ),
}
