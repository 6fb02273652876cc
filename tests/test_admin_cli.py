"""`foretell admin create-user`: the only way to make an admin account."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from foretell.account.v1 import account_service_pb2 as pb
from foretell.account.v1 import account_service_pb2_grpc as pb_grpc
from foretell.settings import Settings
from tests.conftest import FORETELL, PASSWORD, foretell_env, unique_email


def _run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FORETELL, "admin", "create-user", *args],
        env=foretell_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_admin_create_user_makes_an_admin(
    account: pb_grpc.AccountServiceAsyncStub, settings: Settings
) -> None:
    email = unique_email("ops")
    result = await asyncio.to_thread(_run, settings, "--email", email, "--password", PASSWORD)
    assert result.returncode == 0, result.stderr
    assert f"created admin {email}" in result.stdout
    login = await account.Login(pb.LoginRequest(email=email, password=PASSWORD))
    assert login.user.role == pb.ROLE_ADMIN


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "nope", "--password", PASSWORD], "not a valid email"),
        (["--email", "ops@example.com", "--password", "short"], "at least 10"),
    ],
)
async def test_admin_create_user_refuses_bad_input_plainly(
    settings: Settings, args: list[str], message: str
) -> None:
    result = await asyncio.to_thread(_run, settings, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_admin_create_user_refuses_a_taken_email(settings: Settings) -> None:
    email = unique_email("twice")
    first = await asyncio.to_thread(_run, settings, "--email", email, "--password", PASSWORD)
    assert first.returncode == 0
    second = await asyncio.to_thread(_run, settings, "--email", email, "--password", PASSWORD)
    assert second.returncode == 2
    assert "already exists" in second.stderr
