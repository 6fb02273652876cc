"""Readiness: polls every child until it answers, since none of them announces it."""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foretell.settings import Address, Settings
from foretell.up._plan import ServiceProcess, client_address
from foretell.up._stores import safe_url

POLL_INTERVAL_S = 0.25
# What Envoy is asked for once the services answer: served by the account service, no token.
ENVOY_PROBE_PATH = "/v1/auth/jwks"


@dataclass
class Check:
    what: str
    probe: Callable[[], str | None]  # None when ready, else why not
    last: str = "not checked: waits for the checks before it"


def readiness_checks(
    settings: Settings,
    plan: Sequence[ServiceProcess],
    redis_url: str,
    channels: contextlib.ExitStack,
) -> list[Check]:
    """Every check, in the order they must pass; the gRPC channels close with `channels`."""
    found: list[Check] = []
    for process in plan:
        target = client_address(process.grpc_addr)
        channel = channels.enter_context(grpc.insecure_channel(str(target)))
        found += [grpc_check(channel, target, name) for name in process.full_names]
    found.append(redis_check(redis_url))
    # Last, so that it is polled only once the services answer.
    found.append(
        envoy_check(
            client_address(settings.http_addr),
            client_address(settings.envoy_admin_addr),
            ENVOY_PROBE_PATH,
        )
    )
    return found


def grpc_check(channel: Any, target: Address, full_name: str) -> Check:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=full_name)
    serving = health_pb2.HealthCheckResponse.SERVING

    def probe() -> str | None:
        try:
            response = stub.Check(request, timeout=1.0)
        except grpc.RpcError as error:
            return str(error.code().name)
        status = response.status
        return None if status == serving else health_pb2.HealthCheckResponse.Status.Name(status)

    short = full_name.rsplit(".", 1)[-1]
    return Check(f"{short} health check at {target}", probe)


def _http_get(address: Address, path: str) -> tuple[int, str] | str:
    """(status, body), or why there was no answer."""
    connection = http.client.HTTPConnection(address.host, address.port, timeout=1.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as error:
        return error.strerror or type(error).__name__
    finally:
        connection.close()


def clusters_healthy(clusters: str) -> bool:
    """Whether Envoy's admin `/clusters` text reports every upstream host healthy."""
    flags = [line for line in clusters.splitlines() if "::health_flags::" in line]
    return bool(flags) and all(line.endswith("::healthy") for line in flags)


def envoy_check(listener: Address, admin: Address, path: str) -> Check:
    def probe() -> str | None:
        # Ask the admin API first whether Envoy's own health checks pass: polling the listener
        # before that would fill the access log with 503s while Envoy waits for its next check.
        clusters = _http_get(admin, "/clusters")
        if isinstance(clusters, str):
            return f"admin: {clusters}"
        if not clusters_healthy(clusters[1]):
            return "upstream clusters not healthy yet"
        answer = _http_get(listener, path)
        if isinstance(answer, str):
            return answer
        return None if answer[0] == 200 else f"HTTP {answer[0]}"

    return Check(f"Envoy GET http://{listener}{path}", probe)


def redis_check(url: str) -> Check:
    def probe() -> str | None:
        try:
            with redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0) as r:
                r.ping()
        except redis.RedisError as error:
            return str(error)
        return None

    return Check(f"Redis PING at {safe_url(url)}", probe)


def wait_until_ready(
    checks: Sequence[Check], deadline: float, stopped: threading.Event
) -> list[Check] | None:
    """Polls until every check passes; returns the checks still failing at the deadline, or
    None if the run stopped meanwhile."""
    pending = list(checks)
    while True:
        still: list[Check] = []
        for check in pending:
            # In order: a check waits until those before it pass (the Envoy check comes last).
            reason = check.probe() if not still else check.last
            if reason is not None:
                check.last = reason
                still.append(check)
        pending = still
        if not pending:
            return []
        if time.monotonic() >= deadline:
            return pending
        if stopped.wait(POLL_INTERVAL_S):
            return None
