"""RegistryService: models, their immutable versions, builds and publication."""

from foretell.services.registry._servicer import RegistryServicer, add_to_server
from foretell.services.registry.build import build_version

__all__ = ["RegistryServicer", "add_to_server", "build_version"]
