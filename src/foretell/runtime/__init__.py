"""What every service process shares: resources, the interceptor, the gRPC server."""

from foretell.runtime._interceptor import client_address
from foretell.runtime._outage import outage
from foretell.runtime._status import error_status
from foretell.runtime.resources import Resources, open_resources
from foretell.runtime.server import (
    RunningServer,
    ServiceDef,
    run_services,
    serve,
    start_server,
)

__all__ = [
    "Resources",
    "RunningServer",
    "ServiceDef",
    "client_address",
    "error_status",
    "open_resources",
    "outage",
    "run_services",
    "serve",
    "start_server",
]
