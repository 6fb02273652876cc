"""What runs where: the service processes of the topology and the addresses clients use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from foretell.composition import SERVICES
from foretell.settings import Address, Settings

# Hosts that mean "every interface": recognised here, never bound by this package.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104


@dataclass(frozen=True)
class ServiceProcess:
    """One `foretell serve` child."""

    name: str
    service: str  # "all" or a key of SERVICES
    grpc_addr: Address
    metrics_addr: Address

    @property
    def services(self) -> list[str]:
        """The keys of SERVICES this process serves."""
        return list(SERVICES) if self.service == "all" else [self.service]

    @property
    def full_names(self) -> list[str]:
        return [SERVICES[name].full_name for name in self.services]


def plan_services(settings: Settings) -> list[ServiceProcess]:
    """The service processes for the topology.

    "all": one process with every service on FORETELL_GRPC_ADDR and FORETELL_METRICS_ADDR.
    "split": one process per service; the i-th service of `foretell.composition.SERVICES` (account,
    registry, subscription, datafeed, forecast: i = 0..4) listens on the port of
    FORETELL_GRPC_ADDR plus i, and serves metrics on the port of FORETELL_METRICS_ADDR plus i.
    """
    if settings.topology == "all":
        return [ServiceProcess("services", "all", settings.grpc_addr, settings.metrics_addr)]
    return [
        ServiceProcess(
            name,
            name,
            settings.grpc_addr.with_port(settings.grpc_addr.port + i),
            settings.metrics_addr.with_port(settings.metrics_addr.port + i),
        )
        for i, name in enumerate(SERVICES)
    ]


def client_address(address: Address) -> Address:
    """Where a client on this machine reaches a server listening on `address`."""
    if address.host in WILDCARD_HOSTS:
        return Address("::1" if address.host == "::" else "127.0.0.1", address.port)
    return address


def upstreams(plan: Sequence[ServiceProcess]) -> dict[str, Address]:
    """Envoy's upstream for each key of SERVICES: the process that serves it."""
    return {
        name: client_address(process.grpc_addr) for process in plan for name in process.services
    }
