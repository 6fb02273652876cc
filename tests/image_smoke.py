"""`make image-test`: starts the built image with podman and checks that it answers.

The container runs `foretell up --no-demo` (the services, a worker and Envoy, all from the
image) against this machine's PostgreSQL and Redis, with a read-only root filesystem and the
image's own non-root user, on the host network at ports chosen here. It passes when the gRPC
health check of every service says SERVING and a REST call through Envoy answers. It also
checks what the image is: its user, labels, and that no compiler or pip is in it.

Run: python -m tests.image_smoke [IMAGE]   (default localhost/foretell:0.1.0)
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "localhost/foretell:0.1.0"
DEADLINE_S = 180.0
SERVICES = (
    "foretell.account.v1.AccountService",
    "foretell.registry.v1.RegistryService",
    "foretell.subscription.v1.SubscriptionService",
    "foretell.datafeed.v1.DataFeedService",
    "foretell.forecast.v1.ForecastService",
)


# `make image-test` passes the machine's podman command and rlimits (see the Makefile).
PODMAN = shlex.split(os.environ.get("PODMAN", "podman"))
ULIMITS = shlex.split(os.environ.get("PODMAN_ULIMITS", ""))


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if args[0] == "run":
        args = ("run", *ULIMITS, *args[1:])
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def check_image() -> None:
    [info] = json.loads(podman("image", "inspect", IMAGE).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001", config["User"]
    labels = config["Labels"]
    for label in ("title", "version", "revision", "licenses", "description"):
        assert f"org.opencontainers.image.{label}" in labels, label
    found = podman(
        "run", "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c",
        "for t in gcc cc g++ make pip pip3 apt-get; do command -v $t; done; true",
    ).stdout.split()  # fmt: skip
    # apt-get stays (Debian's base keeps it; it cannot install anything as uid 10001).
    assert [t for t in found if not t.endswith("apt-get")] == [], found
    print(f"image: user 10001, OCI labels, no compiler or pip ({IMAGE})")


# A jail as the worker's sandbox makes them (user, PID, mount, IPC, UTS and network namespaces,
# the jail's user mapped to an unprivileged one, a fresh /proc, read-only binds), without cgroups:
# this machine's are v1, which the worker pods do not use.
JAIL = (
    "nsjail -Mo --quiet --user 99999:65534:1 --group 99999:65534:1 --hostname jail"
    " --disable_clone_newcgroup -R /usr -R /lib -R /lib64 -R /opt/foretell -T /tmp --iface_no_lo"
    " -- /usr/bin/python3.11 -c 'import os; print(\"jailed\", os.getuid(), os.getpid())'"
)
WORKER = ["--user", "0", "--cap-drop", "ALL", "--security-opt", "apparmor=unconfined"]
SECCOMP = ["--security-opt", "seccomp=deploy/kubernetes/seccomp/foretell-nsjail.json"]
UNMASKED = ["--security-opt", "unmask=ALL"]
ID_MAPS = ["--cap-add", "SETUID", "--cap-add", "SETGID"]


def jail_runs(*privileges: str) -> bool:
    result = podman(
        "run", "--rm", *WORKER, *privileges, "--entrypoint", "/bin/sh", IMAGE, "-c", JAIL,
        check=False,
    )  # fmt: skip
    return result.returncode == 0 and "jailed 99999 1" in result.stdout


def check_worker_privileges() -> None:
    """nsjail runs with the worker pod's privileges (as podman expresses them; the cgroup
    remount, which needs SYS_ADMIN, is left out) and fails without each of them."""
    assert jail_runs(*ID_MAPS, *SECCOMP, *UNMASKED), "nsjail fails with the worker's privileges"
    assert not jail_runs(*SECCOMP, *UNMASKED), "SETUID/SETGID (the jail's id maps) not needed?"
    assert not jail_runs(*ID_MAPS, *SECCOMP), "an unmasked /proc not needed?"
    print("worker privileges: nsjail runs with SETUID+SETGID, the seccomp profile and an")
    print("  unmasked /proc, and fails without the capabilities or with /proc masked")


def check_gateway_config() -> None:
    """The Envoy pod's init container: the config for the cluster's DNS names, rendered and
    checked with `envoy --mode validate` inside the image (its own descriptor set and Envoy)."""
    result = podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", IMAGE, "gateway-config",  # noqa: S108
        "--service-host", "foretell-{service}.foretell.svc.cluster.local",
        "--listen", "0.0.0.0:8080", "--output", "/tmp/envoy.yaml",  # noqa: S108
    )  # fmt: skip
    assert "wrote /tmp/envoy.yaml" in result.stderr, result.stderr
    print("gateway-config: the cluster's Envoy config renders and validates in the image")


async def create_database() -> tuple[str, str]:
    server = os.environ.get(
        "FORETELL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"foretell_image_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server, name


async def drop_database(server: str, name: str) -> None:
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def wait_serving(target: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", *SERVICES):
            # wait_for_ready: the call waits for the server to listen instead of failing.
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=max(1.0, deadline - time.monotonic()),
                wait_for_ready=True,
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, reply)
    print(f"gRPC health: SERVING for the process and its {len(SERVICES)} services ({target})")


async def wait_rest(base_url: str) -> None:
    """GET /v1/auth/jwks through Envoy. Envoy may answer 503 until its first health checks
    of the upstream pass: retried until the deadline, each try after the previous answer."""
    deadline = time.monotonic() + DEADLINE_S
    last = ""
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(f"{base_url}/v1/auth/jwks")
            except httpx.TransportError as error:
                last = repr(error)
                await asyncio.sleep(0.5)
                continue
            if response.status_code == 200:
                keys = response.json()["keys"]
                assert keys and keys[0]["kty"] == "EC", keys
                print(f"REST through Envoy: GET /v1/auth/jwks -> 200, {len(keys)} key(s)")
                return
            last = f"{response.status_code} {response.text[:200]}"
            await asyncio.sleep(0.5)
    raise AssertionError(f"no REST answer through Envoy: {last}")


def container_env(database_url: str, ports: Sequence[int]) -> list[str]:
    http, grpc_port, metrics_port, admin = ports
    env = {
        "FORETELL_DATABASE_URL": database_url,
        "FORETELL_REDIS_URL": os.environ.get("FORETELL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "FORETELL_QUEUE_NAME": f"foretell-image:{uuid.uuid4().hex[:8]}",
        "FORETELL_HTTP_ADDR": f"127.0.0.1:{http}",
        "FORETELL_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "FORETELL_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "FORETELL_ENVOY_ADMIN_ADDR": f"127.0.0.1:{admin}",
        "FORETELL_LOG_FORMAT": "console",
    }
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


async def main() -> None:
    check_image()
    check_worker_privileges()
    check_gateway_config()
    server, name = await create_database()
    database_url = server.rsplit("/", 1)[0] + f"/{name}"
    ports = free_ports(4)
    container = f"foretell-smoke-{uuid.uuid4().hex[:8]}"
    # As Kubernetes runs it: read-only root, writable data directory (an emptyDir there, a
    # directory of the image's user here: podman's tmpfs would be root's) and /tmp only.
    data_dir = Path(tempfile.mkdtemp(prefix="ft-image-"))
    os.chown(data_dir, 10001, 10001)
    common = [
        "--network=host", "--read-only", "--tmpfs", "/tmp",  # noqa: S108 - in the container
        "-v", f"{data_dir}:/var/lib/foretell", *container_env(database_url, ports),
    ]  # fmt: skip
    try:
        podman("run", "--rm", *common, IMAGE, "db", "upgrade")
        print("migrations: foretell db upgrade ran in the image")
        podman("run", "-d", "--name", container, *common, IMAGE, "up", "--no-demo")
        try:
            await wait_serving(f"127.0.0.1:{ports[1]}")
            await wait_rest(f"http://127.0.0.1:{ports[0]}")
        except BaseException:
            print(podman("logs", "--tail", "60", container, check=False).stdout, file=sys.stderr)
            raise
        finally:
            podman("stop", "--time", "20", container, check=False)
            podman("rm", "-f", container, check=False)
    finally:
        await drop_database(server, name)
        shutil.rmtree(data_dir, ignore_errors=True)
    print("image-test: passed")


if __name__ == "__main__":
    asyncio.run(main())
