"""The service runtime: health, reflection, metrics, error translation and the policy table."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foretell import metrics
from foretell.account.v1 import account_service_pb2 as pb
from foretell.account.v1 import account_service_pb2_grpc as pb_grpc
from foretell.auth.policy import POLICY, Policy, Role
from foretell.composition import SERVICES
from foretell.services.account import _queries
from foretell.settings import Address, Settings, SettingsError, load_settings
from tests.conftest import FORETELL, SignUp, foretell_env


def _service_methods() -> set[str]:
    methods = set()
    for definition in SERVICES.values():
        service = definition.descriptor
        methods |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return methods


def test_every_rpc_has_a_policy_entry_and_no_entry_is_stale() -> None:
    methods = _service_methods()
    assert methods - POLICY.keys() == set(), "RPCs without an access policy"
    assert POLICY.keys() - methods == set(), "policies for RPCs that do not exist"


async def test_every_service_reports_serving(channel: aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", *(d.full_name for d in SERVICES.values())]:
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_a_role_outside_the_policy_is_denied(
    account: pb_grpc.AccountServiceAsyncStub, sign_up: SignUp, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = await sign_up(pb.ROLE_SUBSCRIBER)
    monkeypatch.setitem(
        POLICY, "/foretell.account.v1.AccountService/GetMe", Policy(frozenset({Role.ADMIN}))
    )
    with pytest.raises(grpc.RpcError) as caught:
        await account.GetMe(pb.GetMeRequest(), metadata=me.metadata)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_method_without_a_policy_is_closed(
    account: pb_grpc.AccountServiceAsyncStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(POLICY, "/foretell.account.v1.AccountService/GetJwks")
    with pytest.raises(grpc.RpcError) as caught:
        await account.GetJwks(pb.GetJwksRequest())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_unexpected_error_becomes_internal_without_its_text(
    account: pb_grpc.AccountServiceAsyncStub, sign_up: SignUp, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = await sign_up()

    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("relation users: password column leaked at /srv/secret.py")

    monkeypatch.setattr(_queries, "get_user", explode)
    with pytest.raises(grpc.RpcError) as caught:
        await account.GetMe(pb.GetMeRequest(), metadata=me.metadata)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert details.startswith("internal error; reference ")
    assert "password" not in details and "secret" not in details


async def test_metrics_count_rpcs_by_method_and_code(
    account: pb_grpc.AccountServiceAsyncStub,
) -> None:
    port = metrics.serve_metrics(Address("127.0.0.1", 0))
    # go-grpc-prometheus's names and labels.
    labels = (
        'grpc_code="Unauthenticated",grpc_method="GetMe",'
        'grpc_service="foretell.account.v1.AccountService",grpc_type="unary"'
    )

    async def count() -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = await count()
    with pytest.raises(grpc.RpcError):
        await account.GetMe(pb.GetMeRequest())
    assert await count() == before + 1
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    assert "grpc_server_handling_seconds_bucket{" in text
    assert 'grpc_server_started_total{grpc_method="GetMe"' in text


@pytest.mark.parametrize(
    ("name", "go"),
    [("OK", "OK"), ("INVALID_ARGUMENT", "InvalidArgument"), ("CANCELLED", "Canceled"),
     ("DEADLINE_EXCEEDED", "DeadlineExceeded"), ("UNAUTHENTICATED", "Unauthenticated")],
)  # fmt: skip
def test_grpc_codes_are_labelled_as_go_spells_them(name: str, go: str) -> None:
    assert metrics.go_code(name) == go


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FORETELL_HTTP_ADDR", "8080"),
        ("FORETELL_GRPC_ADDR", "localhost:99999"),
        ("FORETELL_ACCESS_TOKEN_TTL_S", "soon"),
        ("FORETELL_TOPOLOGY", "mesh"),
        ("FORETELL_LOG_FORMAT", "xml"),
        ("FORETELL_DATABASE_URL", "mysql://x"),
        ("FORETELL_HTTP_ADRR", "127.0.0.1:8080"),
        # Every POST would fail at once; a retry would never wait.
        ("FORETELL_WEBHOOK_TIMEOUT_S", "0"),
        ("FORETELL_WEBHOOK_BACKOFF_S", "0"),
        ("FORETELL_SHUTDOWN_GRACE_S", "inf"),
        ("FORETELL_ENTITLEMENT_RECHECK_S", "nan"),
    ],
)
def test_a_bad_setting_fails_with_its_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_settings_defaults_work_out_of_the_box() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert str(settings.http_addr) == "127.0.0.1:8080"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_serve_logs_json_and_stops_gracefully_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    grpc_port, metrics_port = _free_port(), _free_port()
    env = foretell_env(
        settings,
        FORETELL_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
        FORETELL_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
        FORETELL_LOG_FORMAT="json",
    )
    with subprocess.Popen(
        [FORETELL, "serve", "account"], env=env, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())
        assert first["event"] == "serving"
        assert first["services"] == ["foretell.account.v1.AccountService"]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        events = [json.loads(line)["event"] for line in proc.stderr.read().splitlines() if line]
        assert events[-2:] == ["stopping", "stopped"]


def test_serve_reports_a_taken_port(settings: Settings) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = foretell_env(
            settings,
            FORETELL_GRPC_ADDR=f"127.0.0.1:{port}",
            FORETELL_METRICS_ADDR=f"127.0.0.1:{_free_port()}",
        )
        result = subprocess.run(
            [FORETELL, "serve", "all"], env=env, capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "taken" in result.stderr
    assert "Traceback" not in result.stderr
