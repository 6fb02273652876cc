"""The Envoy gateway in front of the gRPC services: config rendering and validation."""

from foretell.gateway._envoy import (
    dns_upstreams,
    envoy_binary,
    render_envoy_config,
    validate_envoy_config,
)

__all__ = ["dns_upstreams", "envoy_binary", "render_envoy_config", "validate_envoy_config"]
