"""Models, bars, runs and forecasts written straight into the test database, the way
`execute_run` records them (one transaction; live runs appended to the ledger; announced to
StreamForecasts on commit)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from foretell.common.v1 import common_pb2
from foretell.db.models import Forecast, Model, Run, Version
from foretell.db.notify import RunRecorded, announce_run
from foretell.ledger import chain
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from tests._registry import model_name
from tests.conftest import SignedIn, SignUp

HOUR = timedelta(hours=1)


BASE = datetime(2024, 3, 4, tzinfo=UTC)


@dataclass(frozen=True)
class Made:
    owner: SignedIn
    name: str
    model_id: uuid.UUID
    versions: dict[int, uuid.UUID]
    symbols: tuple[str, ...]

    @property
    def symbol(self) -> str:
        return self.symbols[0]


@dataclass(frozen=True)
class F:
    """A forecast to record: direction, predicted return, probability (target = as_of + h)."""

    direction: str
    predicted_return: float | None = None
    probability: float | None = None
    horizon: int = 1
    symbol: str = ""
    # The target time when it is not as_of + horizon hours (a market that closes between).
    target: datetime | None = None


def unique_symbol(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8].upper()}"


async def make_model(
    registry: reg_grpc.RegistryServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
    *,
    symbols: Sequence[str] = ("EURUSD", "GOOG"),
    public: bool = True,
    versions: int = 1,
) -> Made:
    """A model of a new provider, with `versions` built versions (none live)."""
    owner = await sign_up()
    created = await registry.CreateModel(
        reg_pb.CreateModelRequest(
            model=reg_pb.Model(
                name=model_name(),
                title="Test model",
                symbols=list(symbols),
                resolution=common_pb2.RESOLUTION_1H,
                horizon=1,
                visibility=reg_pb.VISIBILITY_PUBLIC if public else reg_pb.VISIBILITY_PRIVATE,
            )
        ),
        metadata=owner.metadata,
    )
    now = datetime.now(UTC)
    ids: dict[int, uuid.UUID] = {}
    async with resources.db.session.begin() as session:
        model = await session.scalar(select(Model).where(Model.name == created.model.name))
        assert model is not None
        for number in range(1, versions + 1):
            version = Version(
                id=uuid.uuid4(), model_id=model.id, number=number,
                digest="sha256:" + hashlib.sha256(f"{model.id}{number}".encode()).hexdigest(),
                bundle_size=1, created_at=now,
                manifest={
                    "entrypoint": "model:predict", "symbols": list(symbols), "resolution": "1h",
                    "horizon": 1, "lookback": 10, "requirements": "",
                },
                build_state="ready", failure_reason="", image_digest="sha256:" + "0" * 64,
                build_finished_at=now, build_log="", published_at=None,
            )  # fmt: skip
            session.add(version)
            ids[number] = version.id
        model_id = model.id
    return Made(owner, created.model.name, model_id, ids, tuple(symbols))


async def insert_bars(
    resources: Resources, symbol: str, rows: Sequence[tuple[datetime, float]]
) -> None:
    """Hourly bars (open time, close); open/high/low/volume derived so the CHECKs hold."""
    async with resources.db.session.begin() as session:
        await session.execute(
            text("""
            INSERT INTO bars (symbol, resolution, open_time, close_time, open, high, low, close,
                              volume)
            VALUES (:symbol, '1h', :open_time, :close_time, :close, :close, :close, :close, 1)
            """),
            [
                {"symbol": symbol, "open_time": t, "close_time": t + HOUR, "close": c}
                for t, c in rows
            ],
        )


async def record_run(
    resources: Resources,
    made: Made,
    as_of: datetime,
    forecasts: Sequence[F] = (),
    *,
    version: int = 1,
    kind: str = "live",
    outcome: str = "ok",
    detail: str = "",
    log: str = "output",
    recorded_at: datetime | None = None,
) -> uuid.UUID:
    run_id = uuid.uuid4()
    now = recorded_at or datetime.now(UTC)
    async with resources.db.session.begin() as session:
        session.add(
            Run(
                id=run_id, model_id=made.model_id, version_id=made.versions[version],
                as_of=as_of, kind=kind, outcome=outcome, duration_s=0.25, detail=detail,
                log=log, created_at=now,
            )
        )  # fmt: skip
        await session.flush()
        for f in forecasts:
            session.add(
                Forecast(
                    run_id=run_id, model_id=made.model_id, version_id=made.versions[version],
                    kind=kind, symbol=f.symbol or made.symbol, as_of=as_of,
                    target_time=f.target or as_of + f.horizon * HOUR, direction=f.direction,
                    predicted_return=f.predicted_return, probability=f.probability,
                    recorded_at=now,
                )
            )  # fmt: skip
        await session.flush()
        if kind == "live":
            await chain.append(session, made.model_id, [run_id], now)
        await announce_run(session, RunRecorded(run_id, made.model_id, kind))
    return run_id


async def record(
    resources: Resources,
    model: Made,
    as_of: datetime,
    *,
    version: int = 1,
    kind: str = "live",
    symbols: tuple[str, ...] = ("EURUSD", "GOOG"),
    outcome: str = "ok",
    log: str = "",
    recorded_at: datetime | None = None,
) -> uuid.UUID:
    """A run with one forecast per symbol (up, down, up, …) when ok, recorded by
    `record_run`."""
    forecasts = [
        F("up" if i % 2 == 0 else "down", 0.01, 0.6, symbol=symbol)
        for i, symbol in enumerate(symbols if outcome == "ok" else ())
    ]
    return await record_run(
        resources, model, as_of, forecasts, version=version, kind=kind, outcome=outcome,
        log=log, recorded_at=recorded_at,
    )  # fmt: skip
