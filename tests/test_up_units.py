"""`foretell up`'s pure parts, without starting a process: the plan, the address checks, the
banner, the children's environment, readiness polling and the exit code."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

import foretell.up
from foretell.composition import SERVICES
from foretell.settings import Address, Settings
from foretell.up import AlreadyRunning, ServiceProcess, StartupError, plan_services
from foretell.up._banner import banner
from foretell.up._checks import Listener, check_ports, data_dir_lock, listeners, overlaps
from foretell.up._children import orphan_proof
from foretell.up._plan import client_address, upstreams
from foretell.up._ready import Check, clusters_healthy, wait_until_ready
from foretell.up._stores import Stores, safe_url
from foretell.up._supervise import child_env, exit_status

SPLIT = Settings(
    topology="split",
    grpc_addr=Address("127.0.0.1", 6000),
    metrics_addr=Address("127.0.0.1", 7000),
)
STORES = Stores(
    database_url="postgresql://foretell:s3cret@127.0.0.1:5432/foretell",
    redis_url="redis://127.0.0.1:6379/0",
    embedded_postgres=None,
    embedded_redis=Path("/data/redis"),
)


def test_the_public_surface_is_pinned() -> None:
    assert sorted(foretell.up.__all__) == [
        "AlreadyRunning",
        "ServiceProcess",
        "StartupError",
        "plan_services",
        "run_up",
    ]


# --- the plan ---------------------------------------------------------------------------------


def test_all_in_one_is_one_process_serving_every_service() -> None:
    settings = Settings()
    [process] = plan_services(settings)
    assert process == ServiceProcess("services", "all", settings.grpc_addr, settings.metrics_addr)
    assert process.full_names == [d.full_name for d in SERVICES.values()]


def test_split_gives_each_service_the_next_ports() -> None:
    plan = plan_services(SPLIT)
    assert [p.name for p in plan] == list(SERVICES)
    assert [p.grpc_addr.port for p in plan] == [6000 + i for i in range(len(SERVICES))]
    assert [p.metrics_addr.port for p in plan] == [7000 + i for i in range(len(SERVICES))]
    assert {p.grpc_addr.host for p in plan} == {"127.0.0.1"}
    forecast = plan[-1]
    assert forecast.full_names == [SERVICES["forecast"].full_name]


def test_envoy_routes_each_service_to_its_process() -> None:
    split = upstreams(plan_services(SPLIT))
    assert split == {name: Address("127.0.0.1", 6000 + i) for i, name in enumerate(SERVICES)}
    every = upstreams(plan_services(Settings(grpc_addr=Address("0.0.0.0", 50051))))  # noqa: S104
    assert every == dict.fromkeys(SERVICES, Address("127.0.0.1", 50051))


@pytest.mark.parametrize(
    ("listening", "reached"),
    [
        (Address("0.0.0.0", 80), Address("127.0.0.1", 80)),  # noqa: S104
        (Address("", 80), Address("127.0.0.1", 80)),
        (Address("::", 80), Address("::1", 80)),
        (Address("10.1.2.3", 80), Address("10.1.2.3", 80)),
    ],
)
def test_clients_reach_a_wildcard_listener_on_loopback(
    listening: Address, reached: Address
) -> None:
    assert client_address(listening) == reached


# --- checks before anything starts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "collide"),
    [
        (Address("127.0.0.1", 80), Address("127.0.0.1", 80), True),
        (Address("127.0.0.1", 80), Address("127.0.0.1", 81), False),
        (Address("127.0.0.1", 80), Address("127.0.0.2", 80), False),
        (Address("0.0.0.0", 80), Address("127.0.0.2", 80), True),  # noqa: S104
        (Address("127.0.0.2", 80), Address("::", 80), True),
        (Address("", 80), Address("10.0.0.1", 80), True),
        (Address("0.0.0.0", 80), Address("::", 81), False),  # noqa: S104
    ],
)
def test_addresses_overlap_on_the_same_port_and_host_or_a_wildcard(
    a: Address, b: Address, collide: bool
) -> None:
    assert overlaps(a, b) is collide
    assert overlaps(b, a) is collide


def test_split_listeners_say_which_process_a_port_is_for() -> None:
    labels = [listener.label() for listener in listeners(SPLIT, plan_services(SPLIT))]
    assert labels[:2] == [
        f"FORETELL_HTTP_ADDR {SPLIT.http_addr}",
        f"FORETELL_ENVOY_ADMIN_ADDR {SPLIT.envoy_admin_addr}",
    ]
    assert "FORETELL_GRPC_ADDR 127.0.0.1:6002 (port 6000+2, for subscription)" in labels
    assert "FORETELL_METRICS_ADDR 127.0.0.1:7004 (port 7000+4, for forecast)" in labels
    assert len(labels) == 2 + 2 * len(SERVICES)


def test_all_in_one_listeners_carry_no_note() -> None:
    found = listeners(Settings(), plan_services(Settings()))
    assert [listener.note for listener in found] == [""] * 4


def test_a_split_range_running_into_another_address_names_both() -> None:
    # The services' gRPC ports 6000..6004 run into the metrics base at 6003.
    settings = Settings(
        topology="split",
        grpc_addr=Address("127.0.0.1", 6000),
        metrics_addr=Address("0.0.0.0", 6003),  # noqa: S104
    )
    with pytest.raises(StartupError) as raised:
        check_ports(listeners(settings, plan_services(settings)))
    assert str(raised.value) == (
        "FORETELL_METRICS_ADDR 0.0.0.0:6003 (port 6003+0, for account) and "
        "FORETELL_GRPC_ADDR 127.0.0.1:6003 (port 6000+3, for datafeed) use the same port; "
        "set FORETELL_GRPC_ADDR to a different address"
    )


@pytest.mark.parametrize("port", [0, 65536])
def test_a_port_must_be_fixed_and_valid(port: int) -> None:
    with pytest.raises(StartupError, match=r"needs a fixed port from 1 to 65535.*FORETELL_X"):
        check_ports([Listener("FORETELL_X", Address("127.0.0.1", port))])


def test_distinct_ports_pass() -> None:
    check_ports(listeners(SPLIT, plan_services(SPLIT)))


def test_a_second_lock_on_the_data_dir_names_the_holder(tmp_path: Path) -> None:
    with data_dir_lock(tmp_path):
        pid = (tmp_path / "up.lock").read_text().strip()
        # flock is per open file: a second open in this process conflicts like another process.
        with (
            pytest.raises(AlreadyRunning, match=rf"\(pid {pid}\).*`kill {pid}`"),
            data_dir_lock(tmp_path),
        ):
            pass
    with data_dir_lock(tmp_path):
        pass


# --- output -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql:///db?host=/tmp/sock", "postgresql:///db?host=/tmp/sock"),
    ],
)
def test_urls_are_printed_without_their_password(url: str, printed: str) -> None:
    assert safe_url(url) == printed


def test_the_banner_lists_each_process_and_hides_passwords() -> None:
    text = banner(SPLIT, plan_services(SPLIT), STORES, 3.21)
    lines = text.splitlines()
    assert "Foretell is up (ready in 3.2 s)." in lines
    assert text.endswith("\nCtrl-C stops everything.\n\n")
    assert (
        "  datafeed (direct)      127.0.0.1:6003   metrics http://127.0.0.1:7003/metrics" in lines
    )
    assert "gRPC (direct)" not in text
    assert "s3cret" not in text
    assert (
        "  PostgreSQL             postgresql://foretell:***@127.0.0.1:5432/foretell   (external)"
        in lines
    )
    assert (
        "  Redis                  redis://127.0.0.1:6379/0   (embedded, data in /data/redis)"
        in lines
    )


def test_the_banner_gives_loopback_addresses_for_wildcard_listeners() -> None:
    settings = Settings(
        http_addr=Address("0.0.0.0", 8080),  # noqa: S104
        grpc_addr=Address("::", 50051),
    )
    text = banner(settings, plan_services(settings), STORES, 1.0)
    assert "  REST, gRPC, gRPC-Web   http://127.0.0.1:8080   (Envoy)" in text
    assert "  gRPC (direct)          [::1]:50051   " in text
    assert 'grpc.insecure_channel("127.0.0.1:8080")' in text
    assert "0.0.0.0" not in text  # noqa: S104


# --- the children -----------------------------------------------------------------------------


def test_a_child_gets_its_own_addresses_and_the_stores() -> None:
    process = plan_services(SPLIT)[1]
    base = {"PATH": "/usr/bin", "FORETELL_GRPC_ADDR": "127.0.0.1:1", "FORETELL_DATABASE_URL": "x"}
    env = child_env(SPLIT, STORES, process, base)
    assert env == {
        "PATH": "/usr/bin",
        "FORETELL_GRPC_ADDR": "127.0.0.1:6001",
        "FORETELL_METRICS_ADDR": "127.0.0.1:7001",
        "FORETELL_DATABASE_URL": STORES.database_url,
        "FORETELL_REDIS_URL": STORES.redis_url,
        "FORETELL_DATA_DIR": str(SPLIT.data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    assert base["FORETELL_GRPC_ADDR"] == "127.0.0.1:1"


def test_children_get_a_parent_death_signal_where_setpriv_exists() -> None:
    argv = ["/opt/my dir/foretell", "serve", "all"]
    assert orphan_proof(argv, "/usr/bin/setpriv") == [
        "/usr/bin/setpriv",
        "--pdeathsig",
        "TERM",
        "--",
        *argv,
    ]
    assert orphan_proof(argv, None) == argv


# --- readiness --------------------------------------------------------------------------------


def test_envoy_clusters_are_healthy_only_when_every_host_is() -> None:
    healthy = "a::1.2.3.4:5::health_flags::healthy\nb::1.2.3.4:6::health_flags::healthy\n"
    assert clusters_healthy(healthy)
    assert not clusters_healthy(healthy + "c::1.2.3.4:7::health_flags::/failed_active_hc\n")
    assert not clusters_healthy("a::1.2.3.4:5::cx_active::0\n")


def test_a_check_is_probed_only_once_those_before_it_pass() -> None:
    answers = iter(["UNAVAILABLE", None])
    calls: list[str] = []

    def first() -> str | None:
        calls.append("first")
        return next(answers)

    def second() -> str | None:
        calls.append("second")
        return None

    stopped = threading.Event()
    failing = wait_until_ready(
        [Check("first", first), Check("second", second)], time.monotonic() + 10, stopped
    )
    assert failing == []
    assert calls == ["first", "first", "second"]


def test_checks_failing_at_the_deadline_say_why() -> None:
    late = Check("late", lambda: "NOT_SERVING")
    after = Check("after", lambda: None)
    failing = wait_until_ready([late, after], time.monotonic(), threading.Event())
    assert failing == [late, after]
    assert late.last == "NOT_SERVING"
    assert after.last == "not checked: waits for the checks before it"


def test_a_stopped_run_stops_waiting() -> None:
    stopped = threading.Event()
    stopped.set()
    failing = wait_until_ready([Check("x", lambda: "no")], time.monotonic() + 10, stopped)
    assert failing is None


# --- the exit code ----------------------------------------------------------------------------


def test_a_clean_stop_by_signal_exits_0() -> None:
    codes = {"services": 0, "worker": -signal.SIGTERM, "envoy": 0}
    assert exit_status(codes, "SIGINT received", by_signal=True) == (
        0,
        "stopped (SIGINT received)",
    )


def test_a_stop_by_signal_with_a_failing_child_exits_1_and_names_it() -> None:
    codes = {"services": 0, "worker": -signal.SIGKILL, "envoy": 1}
    assert exit_status(codes, "SIGTERM received", by_signal=True) == (
        1,
        "stopped (SIGTERM received), but not cleanly: worker (rc=-9), envoy (rc=1)",
    )


def test_a_run_that_never_became_ready_exits_1_even_if_its_children_stop_cleanly() -> None:
    cause = "it was not ready after 60 s (see above)"
    assert exit_status({"envoy": 0}, cause, by_signal=False) == (1, f"stopped because {cause}")
