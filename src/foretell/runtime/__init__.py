"""What every service process shares: resources, the interceptor, the gRPC server."""

from foretell.runtime.resources import Clock, Resources, open_resources, utc_now
from foretell.runtime.server import RunningServer, run_services, serve, start_server

__all__ = [
    "Clock",
    "Resources",
    "RunningServer",
    "open_resources",
    "run_services",
    "serve",
    "start_server",
    "utc_now",
]
