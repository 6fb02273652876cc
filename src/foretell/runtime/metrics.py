"""Prometheus metrics: RPC count and latency by method and status code, served on /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, disable_created_metrics, start_http_server

from foretell.settings import Address

# The *_created series double the output and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

RPC_HANDLED = Counter(
    "foretell_grpc_server_handled",
    "RPCs completed, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "foretell_grpc_server_handling_seconds",
    "Time to complete an RPC, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def observe(full_method: str, code: str, seconds: float) -> None:
    service, _, method = full_method.lstrip("/").partition("/")
    RPC_HANDLED.labels(service, method, code).inc()
    RPC_SECONDS.labels(service, method, code).observe(seconds)


def serve_metrics(address: Address) -> int:
    """Starts the /metrics HTTP endpoint in a daemon thread; returns the bound port."""
    try:
        server, _thread = start_http_server(address.port, addr=address.host)
    except OSError as error:
        raise OSError(
            f"cannot serve metrics on {address} (FORETELL_METRICS_ADDR): {error.strerror}"
        ) from None
    return int(server.server_port)
