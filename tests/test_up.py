"""`foretell up` end to end: the real command in a subprocess, with its embedded PostgreSQL and
Redis, the services and Envoy, driven the way a person would drive it."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from tests._up import (
    BANNER,
    BANNER_END,
    FORETELL,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Up,
    alive,
    child,
    descendants,
    free_port,
    stop_postgres,
    temp_data_dir,
    up_env,
    wait_until,
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    yield from temp_data_dir()


@pytest.mark.timeout(120)
def test_up_serves_through_envoy_refuses_a_second_run_and_stops_cleanly(data_dir: Path) -> None:
    env = up_env(data_dir)
    base = f"http://{env['FORETELL_HTTP_ADDR']}"
    up = Up(env)
    try:
        up.wait_for(BANNER_END, READY_TIMEOUT_S)
        assert BANNER in up.output
        processes = descendants(up, data_dir)
        names = {p.name() for p in processes}
        assert {"postgres", "redis-server", "envoy"} <= names, names

        # The banner's first example, verbatim.
        body = {
            "email": "ada@example.com",
            "password": "correct horse battery",
            "displayName": "Ada",
            "role": "ROLE_PROVIDER",
        }
        created = httpx.post(f"{base}/v1/users", json=body, timeout=10)
        assert created.status_code == 200, created.text
        user = created.json()["user"]
        assert user["email"] == "ada@example.com"
        assert user["displayName"] == "Ada"
        assert user["role"] == "ROLE_PROVIDER"
        assert user["id"]

        login = httpx.post(
            f"{base}/v1/auth:login",
            json={"email": body["email"], "password": body["password"]},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        token = login.json()["tokens"]["accessToken"]
        me = httpx.get(
            f"{base}/v1/users/me", headers={"authorization": f"Bearer {token}"}, timeout=10
        )
        assert me.status_code == 200, me.text
        assert me.json()["user"]["id"] == user["id"]

        # The demo market data is there: the real bars the backtesting package ships.
        symbols = httpx.get(
            f"{base}/v1/symbols", headers={"authorization": f"Bearer {token}"}, timeout=10
        )
        assert symbols.status_code == 200, symbols.text
        counts = {
            (s["symbol"], r["resolution"]): int(r["barCount"])
            for s in symbols.json()["symbols"]
            for r in s["series"]
        }
        assert counts[("EURUSD", "RESOLUTION_1H")] == 5000

        # The banner's Python example: native gRPC through the same Envoy listener.
        with grpc.insecure_channel(env["FORETELL_HTTP_ADDR"]) as channel:
            reply = account_grpc.AccountServiceStub(channel).Login(
                account_pb.LoginRequest(email=body["email"], password=body["password"]),
                timeout=10,
            )
        assert reply.user.id == user["id"]

        second = subprocess.run(
            # Same ports too: the lock is checked first, so the message is about the lock.
            [str(FORETELL), "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert "already running" in second.stderr
        assert f"pid {up.proc.pid}" in second.stderr
        assert f"kill {up.proc.pid}" in second.stderr

        code = up.stop(STOP_TIMEOUT_S)
        assert code == 0, up.output
        left = [f"{p.pid} {p.name()}" for p in processes if alive(p)]
        assert not left, f"still running: {left}\n{up.output}"
        assert "stopping embedded PostgreSQL" in up.output
    finally:
        up.close(data_dir)


@pytest.mark.timeout(120)
def test_up_split_runs_one_process_per_service(data_dir: Path) -> None:
    env = up_env(data_dir, FORETELL_TOPOLOGY="split")
    # Split mode takes the five ports from each base: pick bases with room above them.
    grpc_base, metrics_base = _free_block(5), _free_block(5)
    env.update(
        FORETELL_GRPC_ADDR=f"127.0.0.1:{grpc_base}",
        FORETELL_METRICS_ADDR=f"127.0.0.1:{metrics_base}",
    )
    up = Up(env)
    try:
        up.wait_for(BANNER_END, READY_TIMEOUT_S)
        serving = [
            p
            for p in psutil.Process(up.proc.pid).children(recursive=True)
            if "serve" in p.cmdline()
        ]
        assert sorted(p.cmdline()[-1] for p in serving) == sorted(
            ["account", "registry", "subscription", "datafeed", "forecast"]
        )
        assert re.search(rf"forecast \(direct\)\s+127\.0\.0\.1:{grpc_base + 4}\b", up.output)
        created = httpx.post(
            f"http://{env['FORETELL_HTTP_ADDR']}/v1/users",
            json={
                "email": "grace@example.com",
                "password": "correct horse battery",
                "displayName": "Grace",
                "role": "ROLE_SUBSCRIBER",
            },
            timeout=10,
        )
        assert created.status_code == 200, created.text
        assert up.stop(STOP_TIMEOUT_S) == 0, up.output
        assert not [p for p in serving if alive(p)]
    finally:
        up.close(data_dir)


def _free_block(size: int) -> int:
    """A port whose next `size - 1` ports are free too (at the time of asking)."""
    for _ in range(50):
        base = free_port()
        if base + size > 65535:
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        return base
    raise AssertionError("no block of free ports found")


@pytest.mark.timeout(120)
def test_up_names_the_variable_of_a_taken_port_before_starting_anything(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [str(FORETELL), "up"],
            env=up_env(data_dir, FORETELL_HTTP_ADDR=address),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"FORETELL_HTTP_ADDR {address} is already in use; set FORETELL_HTTP_ADDR to a free address"
        in result.stderr
    )
    # The port check comes first: no database was started for a run that cannot happen.
    assert not (data_dir / "postgres").exists()


@pytest.mark.timeout(150)
def test_up_restarts_a_killed_child_and_takes_every_child_with_it_when_killed(
    data_dir: Path,
) -> None:
    env = up_env(data_dir)
    base = f"http://{env['FORETELL_HTTP_ADDR']}"
    up = Up(env)
    try:
        up.wait_for(BANNER_END, READY_TIMEOUT_S)
        services = child(up, ["serve", "all"])
        services.kill()
        up.wait_for("services killed by signal 9", 10)
        up.wait_for("services restarted (pid", 10)
        restarted = child(up, ["serve", "all"])
        assert restarted.pid != services.pid

        def answers() -> bool:
            return httpx.get(f"{base}/v1/auth/jwks", timeout=5).status_code == 200

        wait_until(answers, 30, "answering through Envoy again")

        children = descendants(up, data_dir)
        postmaster = children.pop()  # pg_ctl detaches it: pgserver adopts it at the next start
        assert {"redis-server", "envoy"} <= {p.name() for p in children}
        up.proc.kill()
        up.proc.wait()
        wait_until(lambda: not any(alive(p) for p in children), 30, "every child gone")
        stop_postgres(data_dir)
        wait_until(lambda: not alive(postmaster), 30, "PostgreSQL stopped")
    finally:
        up.close(data_dir)
