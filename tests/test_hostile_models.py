"""The hostile-model suite: each attack is a real model pushed, built by the worker and run
through the platform (`execute_run`: the sandbox, the run-scoped DataFeed and SubmitForecasts),
its outcome checked as recorded in the `runs` table. Every model prints what happened to its
attack; when the attack fails as it should, it returns [] (ok) or fails in the way the platform
must record. A well-behaved model still runs ok afterwards."""

from __future__ import annotations

import dataclasses
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.common.v1 import common_pb2
from foretell.db.models import Forecast, Model, Run, Version
from foretell.marketdata import BarColumns, ingest_bars
from foretell.registry.v1 import registry_service_pb2 as pb
from foretell.registry.v1 import registry_service_pb2_grpc as pb_grpc
from foretell.runs import RunKind, RunRecord, execute_run
from foretell.runtime import Resources
from foretell.sandbox import SandboxLimits, TemplatePool, detect_cgroups, sdk_dir
from foretell.settings import Settings
from tests._registry import model_name, push, run_builds, write_model
from tests.conftest import PASSWORD, MovableClock, unique_email

if TYPE_CHECKING:
    from grpc import aio

# Building every case's version takes one burst of the build worker, longer than the default.
pytestmark = pytest.mark.timeout(240)

BASE = datetime(2024, 3, 4, tzinfo=UTC)
AS_OF = BASE + timedelta(hours=30)
LIMITS = SandboxLimits(wall_seconds=3, cpu_seconds=3, memory_mib=256)
# Cases that should end well get room: on a loaded machine a start-up alone can take seconds,
# and a spurious timeout would hide what the case is about. Only the cases that must time out
# keep the short clock.
ROOMY = SandboxLimits(wall_seconds=20, cpu_seconds=20, memory_mib=256)
# Planted in the worker's environment during every run: none may reach a model.
CANARY = "canary-" + uuid.uuid4().hex

PREAMBLE = """
import ctypes, errno, os, socket, subprocess, sys, time
from datetime import timedelta
from foretell.sdk import Forecast

def err(e):
    code = getattr(e, "errno", None)
    return f"{type(e).__name__} {errno.errorcode.get(code, code)}"
"""


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    body: str
    outcome: str
    # In the run's log (stdout + stderr) or detail, each.
    evidence: tuple[str, ...] = ()


def attempt(label: str, statement: str) -> str:
    """A model body that tries `statement`, prints `label ESCAPED` if it worked, else
    `label blocked <error>`, and abstains."""
    return f"""
def predict(ctx):
    try:
        {statement}
        print("{label} ESCAPED", flush=True)
    except Exception as e:
        print("{label} blocked", err(e), flush=True)
    return []
"""


CASES = [
    Case(
        "tcp_postgres",
        attempt("pg", 'socket.create_connection(("127.0.0.1", 5432), timeout=1)'),
        "ok",
        ("pg blocked PermissionError EPERM",),
    ),
    Case(
        "tcp_redis",
        attempt("redis", 'socket.create_connection(("127.0.0.1", 6379), timeout=1)'),
        "ok",
        ("redis blocked PermissionError EPERM",),
    ),
    Case(
        "udp_egress",
        attempt(
            "udp", 'socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))'
        ),
        "ok",
        ("udp blocked PermissionError EPERM",),
    ),
    Case(
        "dns",
        attempt("dns", 'socket.getaddrinfo("example.com", 80)'),
        "ok",
        ("dns blocked gaierror",),
    ),
    Case(
        "ipv6_tcp",
        attempt("v6", 'socket.create_connection(("::1", 5432), timeout=1)'),
        "ok",
        ("v6 blocked PermissionError EPERM",),
    ),
    Case(
        "etc_shadow",
        attempt("shadow", 'open("/etc/shadow").read()'),
        "ok",
        ("shadow blocked FileNotFoundError ENOENT",),
    ),
    Case(
        "environment",
        """
def predict(ctx):
    print("env", sorted(os.environ), flush=True)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                print("proc", pid, open(f"/proc/{pid}/environ", "rb").read(), flush=True)
            except Exception as e:
                print("proc", pid, err(e), flush=True)
    return []
""",
        "ok",
        ("env ['FORETELL_SOCKET', 'GRPC_ENABLE_FORK_SUPPORT', 'HOME', 'LANG',",),
    ),
    Case(
        "write_outside_tmp",
        """
def predict(ctx):
    for path in ["/x", "/image/app/x", "/image/app/model.py", "/image/site-packages/x",
                 "/run/foretell/x", "/proc/x"]:
        try:
            open(path, "a").close()
            print(path, "ESCAPED", flush=True)
        except Exception as e:
            print(path, "blocked", err(e), flush=True)
    return []
""",
        "ok",
        (
            *(f"{p} blocked OSError EROFS" for p in ["/x", "/image/app/x", "/run/foretell/x"]),
            # The image's files are read-only too: the permission check comes first.
            "/image/app/model.py blocked PermissionError EACCES",
        ),
    ),
    Case(
        "fill_tmp",
        """
def predict(ctx):
    written = 0
    try:
        for i in range(100):
            with open(f"/tmp/fill{i}", "wb") as f:
                for _ in range(4):
                    f.write(b"x" * (1 << 20))
                    f.flush()
                    written += 1
        print("tmp ESCAPED", flush=True)
    except OSError as e:
        print("tmp full after", written, "MiB:", err(e), flush=True)
    return []
""",
        "ok",
        ("OSError ENOSPC",),
    ),
    Case(
        "fork_bomb",
        """
def predict(ctx):
    children = 0
    try:
        for _ in range(10000):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
        print("fork ESCAPED", flush=True)
    except OSError as e:
        print("fork stopped after", children, err(e), flush=True)
        raise
    return []
""",
        # The jail's pids limit fills up and fork() fails with EAGAIN (gRPC's fork handlers are
        # off in the jail, or they would retry thread creation until the wall clock): the
        # uncaught error ends the run as the model's.
        "model_error",
        ("fork stopped after", "BlockingIOError: [Errno 11] Resource temporarily unavailable"),
    ),
    Case(
        "memory_bomb",
        """
def predict(ctx):
    chunks = []
    for _ in range(32):  # 2 GiB, every page touched
        chunks.append(b"\\x01" * (64 << 20))
    print("memory ESCAPED", flush=True)
    return []
""",
        "out_of_memory",
    ),
    Case("cpu_spin", "def predict(ctx):\n    while True:\n        pass\n", "timeout"),
    Case(
        "sleep_past_limit",
        'def predict(ctx):\n    time.sleep(60)\n    print("sleep ESCAPED")\n    return []\n',
        "timeout",
    ),
    Case(
        "subprocess_shell",
        attempt("sh", 'subprocess.run(["/bin/sh", "-c", "echo hi"], check=True)'),
        "ok",
        ("sh blocked FileNotFoundError ENOENT",),
    ),
    Case(
        "subprocess_python",
        """
CHILD = (
    "import socket\\n"
    "try:\\n"
    "    socket.create_connection(('127.0.0.1', 5432), timeout=1)\\n"
    "    print('child ESCAPED')\\n"
    "except OSError as e:\\n"
    "    print('child blocked', type(e).__name__)\\n"
)

def predict(ctx):
    # The jail's own Python as a child: it runs, inside the same jail and under its rules.
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=10)
    print(done.stdout.strip(), done.returncode, flush=True)
    return []
""",
        "ok",
        ("child blocked PermissionError 0",),
    ),
    Case(
        "ptrace",
        """
def predict(ctx):
    print("ptrace result", ctypes.CDLL(None).ptrace(0, 0, 0, 0), flush=True)
    return []
""",
        "killed_by_policy",
    ),
    Case(
        "another_symbol",
        'def predict(ctx):\n    ctx.bars("EURUSD", lookback=5)\n    return []\n',
        "model_error",
        ("DataError: PERMISSION_DENIED",),
    ),
    Case(
        "bars_after_as_of",
        """
def predict(ctx):
    ctx.bars(ctx.symbols[0], lookback=5, end=ctx.as_of + timedelta(hours=2))
    return []
""",
        "model_error",
        ("DataError: OUT_OF_RANGE",),
    ),
    Case(
        "forecast_for_the_past",
        """
def predict(ctx):
    return [Forecast(ctx.symbols[0], ctx.as_of - timedelta(hours=1), "up", probability=0.6)]
""",
        "invalid_output",
        ("forecasts[0].target_time",),
    ),
    Case(
        "output_flood",
        """
def predict(ctx):
    line = "flood " + "x" * 1017 + "\\n"
    sys.stdout.write("FLOOD START\\n")
    for _ in range(10 * 1024):  # 10 MiB
        sys.stdout.write(line)
    sys.stdout.write("FLOOD END\\n")
    return []
""",
        "ok",
    ),
]

# Reads another model's image: its host path is known only once the victim is built.
OTHER_IMAGE = """
def predict(ctx):
    for path in [{paths}]:
        try:
            if os.path.isdir(path):
                print(path, "ESCAPED", os.listdir(path), flush=True)
            else:
                open(path, "rb").read()
                print(path, "ESCAPED", flush=True)
        except Exception as e:
            print(path, "blocked", err(e), flush=True)
    return []
"""

WELL_BEHAVED = """
def predict(ctx):
    out = []
    for symbol in ctx.symbols:
        bars = ctx.bars(symbol, lookback=5)
        up = bars.close[-1] >= bars.close[0]
        out.append(Forecast(symbol, ctx.target_time, "up" if up else "down", probability=0.6))
    return out
"""


@dataclasses.dataclass
class Fleet:
    symbols: tuple[str, str]
    headers: tuple[tuple[str, str], ...]
    models: dict[str, tuple[Model, Version]]


async def _bars(resources: Resources, symbol: str) -> None:
    closes = [100.0 + i for i in range(48)]
    bars = BarColumns(
        [int((BASE + timedelta(hours=i)).timestamp()) for i in range(48)],
        closes,
        [c + 1 for c in closes],
        [c - 1 for c in closes],
        closes,
        [10.0] * 48,
    )
    # Bars every hour, day and night: a market that never closes.
    await ingest_bars(
        resources.db, symbol, "1h", bars, upsert=True, now=datetime.now(UTC), calendar="CRYPTO"
    )


async def _push_all(
    registry: pb_grpc.RegistryServiceAsyncStub,
    settings: Settings,
    fleet: Fleet,
    root: Path,
    sources: dict[str, str],
) -> dict[str, str]:
    """Pushes every source as a model of its own and builds them all."""
    names = {}
    for i, key in enumerate(sources):
        body = sources[key]
        if i and i % settings.provider_builds == 0:
            # One provider may have only so many builds queued (the build lane's cap).
            await run_builds(settings)
        created = await registry.CreateModel(
            pb.CreateModelRequest(
                model=pb.Model(
                    name=model_name(),
                    title=f"Hostile {key}",
                    symbols=list(fleet.symbols),
                    resolution=common_pb2.RESOLUTION_1H,
                    horizon=1,
                )
            ),
            metadata=fleet.headers,
        )
        source = PREAMBLE + textwrap.dedent(body)
        folder = write_model(root / key, source=source, symbols=fleet.symbols)
        await push(registry, fleet.headers, created.model.name, folder)
        names[key] = created.model.name
    await run_builds(settings)
    return names


async def _load(resources: Resources, names: dict[str, str]) -> dict[str, tuple[Model, Version]]:
    loaded = {}
    async with resources.db.session() as session:
        for key, name in names.items():
            model = await session.scalar(select(Model).where(Model.name == name))
            assert model is not None
            version = await session.scalar(select(Version).where(Version.model_id == model.id))
            assert version is not None and version.build_state == "ready", (key, version)
            loaded[key] = (model, version)
    return loaded


@pytest.fixture(scope="module")
async def fleet(
    channel: aio.Channel,
    settings: Settings,
    resources: Resources,
    tmp_path_factory: pytest.TempPathFactory,
) -> Fleet:
    """Every case's model pushed by one provider and built, as many at a time as the build
    lane's cap allows; then the model that reads the victim's image."""
    account = account_grpc.AccountServiceStub(channel)
    registry = pb_grpc.RegistryServiceStub(channel)
    email = unique_email("hostile")
    await account.CreateUser(
        account_pb.CreateUserRequest(
            email=email, password=PASSWORD, display_name="Hostile", role=account_pb.ROLE_PROVIDER
        )
    )
    login = await account.Login(account_pb.LoginRequest(email=email, password=PASSWORD))
    tag = uuid.uuid4().hex[:8].upper()
    fleet = Fleet(
        (f"H{tag}", f"J{tag}"),
        (("authorization", f"Bearer {login.tokens.access_token}"),),
        {},
    )
    for symbol in fleet.symbols:
        await _bars(resources, symbol)
    root = tmp_path_factory.mktemp("hostile")
    sources = {case.name: case.body for case in CASES}
    sources["victim"] = WELL_BEHAVED
    names = await _push_all(registry, settings, fleet, root, sources)
    fleet.models.update(await _load(resources, names))
    victim = resources.store.image_path(fleet.models["victim"][1].image_digest or "")
    paths = [victim / "app" / "model.py", victim, victim.parent, settings.data_dir]
    reader = OTHER_IMAGE.format(paths=", ".join(repr(str(p)) for p in paths))
    names = await _push_all(registry, settings, fleet, root, {"other_image": reader})
    fleet.models.update(await _load(resources, names))
    return fleet


async def _run(
    resources: Resources,
    settings: Settings,
    fleet: Fleet,
    key: str,
    clock: MovableClock,
    limits: SandboxLimits = ROOMY,
    templates: TemplatePool | None = None,
    as_of: datetime = AS_OF,
) -> tuple[RunRecord, list[Run], list[Forecast]]:
    """The case's run, cold; with `templates`, warm, recorded as a dry run (its own record)."""
    model, version = fleet.models[key]
    kind: RunKind = "dry" if templates is not None else "live"
    record = await execute_run(
        resources.db,
        resources.store,
        model,
        version,
        as_of,
        run_root=settings.data_dir / "runs",
        sdk=sdk_dir(settings.data_dir),
        limits=limits,
        clock=clock,
        kind=kind,
        templates=templates,
    )
    async with resources.db.session() as session:
        runs = list(
            await session.scalars(select(Run).where(Run.model_id == model.id, Run.kind == kind))
        )
        forecasts = list(
            await session.scalars(
                select(Forecast).where(Forecast.model_id == model.id, Forecast.kind == kind)
            )
        )
    return record, runs, forecasts


@pytest.fixture
def planted_secrets(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> list[str]:
    """The worker's own secrets, in its environment while the models run."""
    monkeypatch.setenv("FORETELL_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("FORETELL_REDIS_URL", str(settings.redis_url))
    monkeypatch.setenv("FORETELL_JWT_SECRET", CANARY)
    monkeypatch.setenv("PGPASSWORD", CANARY)
    return [CANARY, str(settings.database_url), "FORETELL_DATABASE_URL", "PGPASSWORD"]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_hostile_model_is_contained(
    fleet: Fleet,
    resources: Resources,
    settings: Settings,
    clock: MovableClock,
    planted_secrets: list[str],
    case: Case,
) -> None:
    limits = LIMITS if case.outcome == "timeout" else ROOMY
    record, runs, forecasts = await _run(resources, settings, fleet, case.name, clock, limits)
    seen = record.detail + "\n" + record.log
    assert [(r.id, r.outcome, r.as_of) for r in runs] == [(record.run_id, case.outcome, AS_OF)], (
        seen[-3000:]
    )
    assert record.recorded and forecasts == []
    assert runs[0].log == record.log
    assert "ESCAPED" not in seen
    for evidence in case.evidence:
        assert evidence in seen, [line for line in seen.splitlines() if "pthread" not in line]
    for secret in planted_secrets:
        assert secret not in seen
    assert record.duration_s < limits.wall_seconds + 2


@pytest.fixture(scope="module")
async def warm_pool(settings: Settings) -> AsyncIterator[TemplatePool]:
    root = settings.data_dir / "warm-hostile"
    pool = TemplatePool(root, sdk_dir(settings.data_dir), detect_cgroups(), max_templates=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_hostile_model_is_contained_when_started_warm(
    fleet: Fleet,
    resources: Resources,
    settings: Settings,
    clock: MovableClock,
    planted_secrets: list[str],
    warm_pool: TemplatePool,
    case: Case,
) -> None:
    """Every attack again, forked from a template that served the cases before it."""
    limits = LIMITS if case.outcome == "timeout" else ROOMY
    record, runs, forecasts = await _run(
        resources, settings, fleet, case.name, clock, limits, warm_pool
    )
    seen = record.detail + "\n" + record.log
    assert [(r.id, r.outcome) for r in runs] == [(record.run_id, case.outcome)], seen[-3000:]
    assert forecasts == []
    assert "ESCAPED" not in seen
    for evidence in case.evidence:
        assert evidence in seen, [line for line in seen.splitlines() if "pthread" not in line]
    for secret in planted_secrets:
        assert secret not in seen
    assert record.duration_s < limits.wall_seconds + 2
    # The well-behaved model still runs, warm, after each attack.
    as_of = AS_OF - timedelta(hours=1 + CASES.index(case))
    after, _runs, _forecasts = await _run(
        resources, settings, fleet, "victim", clock, ROOMY, warm_pool, as_of
    )
    assert after.outcome == "ok" and len(after.forecasts) == 2, after.detail + after.log


async def test_the_flood_is_capped_keeping_the_end(
    fleet: Fleet, resources: Resources, settings: Settings, clock: MovableClock
) -> None:
    # Recorded by the parametrized case above: this reads it back (a repeat runs nothing).
    record, runs, _forecasts = await _run(resources, settings, fleet, "output_flood", clock)
    assert not record.recorded and runs[0].outcome == "ok"
    assert "FLOOD END" in record.log
    assert "FLOOD START" not in record.log
    assert len(record.log) <= LIMITS.output_bytes * 2 + 1024


async def test_another_models_image_is_out_of_reach(
    fleet: Fleet,
    resources: Resources,
    settings: Settings,
    clock: MovableClock,
) -> None:
    record, runs, _forecasts = await _run(resources, settings, fleet, "other_image", clock)
    assert [r.outcome for r in runs] == ["ok"], record.detail + record.log
    assert "ESCAPED" not in record.log
    assert record.log.count("blocked FileNotFoundError ENOENT") == 4, record.log


async def test_the_next_job_runs_normally_after_the_attacks(
    fleet: Fleet, resources: Resources, settings: Settings, clock: MovableClock
) -> None:
    record, runs, forecasts = await _run(resources, settings, fleet, "victim", clock)
    assert [r.outcome for r in runs] == ["ok"], record.detail + record.log
    assert sorted((f.symbol, f.direction, f.target_time) for f in forecasts) == [
        (symbol, "up", AS_OF + timedelta(hours=1)) for symbol in fleet.symbols
    ]
