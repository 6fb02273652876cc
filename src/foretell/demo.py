"""`foretell demo`: a platform with something to look at. The real market data the
`backtesting` package ships (hourly EUR/USD, daily Alphabet), loaded with the same checks and
the same store function as DataFeedService.IngestBars; then (`ensure_demo`) a demo provider, its
public model `demo-eurusd-momentum` built from the `foretell init` template, and a replay of
the last EUR/USD slots through the scheduler's slot computation and `execute_run`, with a
simulated clock, recorded as kind 'simulated' (never part of a live track record)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import secrets
import tempfile
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from foretell.auth.policy import Role
from foretell.auth.principal import Principal
from foretell.build import BuildState, MemoryLog, build
from foretell.build.states import TAKEABLE
from foretell.bundle import Manifest, pack_dir
from foretell.bundle import scaffold as _scaffold
from foretell.calendars import Slots
from foretell.clock import utc_now
from foretell.currencies import format_minor
from foretell.db import Database, Model, User, Version, connect
from foretell.db.models import Bar, Plan
from foretell.errors import AlreadyExists
from foretell.marketdata import BarColumns, IngestResult, ingest_bars, model_calendar
from foretell.runs import run_on_platform
from foretell.services.account import create_user
from foretell.services.registry import Upload, add_version, create_model, publish
from foretell.settings import Settings
from foretell.store import ArtifactStore


@dataclasses.dataclass(frozen=True)
class DemoSeries:
    symbol: str
    resolution: str
    # The DataFrame's name in `backtesting.test`.
    frame: str


DEMO_SERIES = (
    # Hourly EUR/USD, April 2017 to February 2018: 5,000 bars.
    DemoSeries("EURUSD", "1h", "EURUSD"),
    # Daily NASDAQ:GOOG, August 2004 to March 2013: 2,148 bars.
    DemoSeries("GOOG", "1d", "GOOG"),
)


class DemoDataMissing(RuntimeError):
    """The `backtesting` package (in the `server` extra) is not installed."""


def frame_bars(frame: Any) -> BarColumns:
    """A pandas OHLCV DataFrame (Open, High, Low, Close, Volume; a DatetimeIndex) as columns.
    An index without a time zone is taken as UTC."""
    import pandas as pd  # type: ignore[import-untyped]

    index = pd.DatetimeIndex(frame.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    seconds = index.as_unit("s").asi8.tolist()
    o, h, low, c, v = (
        array("d", frame[name].astype("float64").tolist())
        for name in ("Open", "High", "Low", "Close", "Volume")
    )
    return BarColumns(array("q", seconds), o, h, low, c, v)


def demo_bars(series: DemoSeries) -> BarColumns:
    try:
        import backtesting.test as shipped  # type: ignore[import-untyped]
    except ImportError as error:
        raise DemoDataMissing(
            f"the demo data comes from the backtesting package, which is missing ({error}): "
            "pip install 'foretell[server]'"
        ) from None
    return frame_bars(getattr(shipped, series.frame))


async def load_demo_bars(db: Database, *, now: datetime | None = None) -> list[IngestResult]:
    """Loads every DEMO_SERIES, overwriting what differs (upsert): running it again changes
    nothing. Returns what each series' ingest did."""
    results = []
    for series in DEMO_SERIES:
        # Importing pandas and parsing the CSV take a second: not on the event loop.
        bars = await asyncio.to_thread(demo_bars, series)
        results.append(
            await ingest_bars(
                db,
                series.symbol,
                series.resolution,
                bars,
                upsert=True,
                now=now or datetime.now(UTC),
            )
        )
    return results


DEMO_EMAIL = "demo@foretell.local"
DEMO_DISPLAY_NAME = "Demo Provider"
DEMO_MODEL = "demo-eurusd-momentum"
DEMO_SYMBOL, DEMO_RESOLUTION = "EURUSD", "1h"
DEFAULT_REPLAY_SLOTS = 200
# What `foretell up` replays per demo model: enough for a record long enough to judge (the
# web app wants 100 scored forecasts) even where slots fall on bars that do not exist.
DEMO_CATALOG_REPLAY_SLOTS = 300
# Progress is reported every this many replayed slots.
PROGRESS_EVERY = 50
DEMO_MANIFEST = Manifest(
    entrypoint="model:predict",
    symbols=(DEMO_SYMBOL,),
    resolution=DEMO_RESOLUTION,
    horizon=1,
    lookback=48,
    requirements="requirements.txt",
)
_DEMO_FIELDS: dict[str, Any] = {
    "name": DEMO_MODEL,
    "title": "Demo: EUR/USD hourly momentum",
    "description": (
        "A demo model created by `foretell demo`: the `foretell init` template, forecasting "
        "that EUR/USD keeps moving the way it moved over the last 48 hours. Its forecasts "
        "are a replay of the 2017-2018 history with a simulated clock, labelled simulated."
    ),
    "symbols": [DEMO_SYMBOL],
    "resolution": DEMO_RESOLUTION,
    "horizon": 1,
    "tags": ["demo"],
    "visibility": "public",
}
# The demo model's plan, so subscribing (and its trial) can be tried against it.
DEMO_PRICE_MINOR = 4900
DEMO_CURRENCY = "USD"
DEMO_TRIAL_DAYS = 14


@dataclasses.dataclass(frozen=True)
class DemoModel:
    """One demo model: what `ensure_demo` creates, builds, publishes and replays."""

    fields: dict[str, Any]
    manifest: Manifest
    price_minor: int
    trial_days: int
    # model.py; None: the `foretell init` template for the manifest.
    code: str | None = None

    @property
    def name(self) -> str:
        return str(self.fields["name"])

    @property
    def symbol(self) -> str:
        return self.manifest.symbols[0]


MOMENTUM = DemoModel(_DEMO_FIELDS, DEMO_MANIFEST, DEMO_PRICE_MINOR, DEMO_TRIAL_DAYS)

# A model that gives predicted returns beside its probabilities: hourly EUR/USD mean reversion
# four hours ahead. Standard library only, like the template.
_REVERSION_CODE = '''\
"""Demo: EUR/USD mean reversion. After a stretch away from its 24-hour average, the price is
expected to come back part of the way over the next four hours: the forecast gives the
direction, the expected return and the probability that the direction is right."""

LOOKBACK = 24


def predict(ctx):
    forecasts = []
    for symbol in ctx.symbols:
        close = ctx.bars(symbol, lookback=LOOKBACK).close
        if len(close) < LOOKBACK:
            continue
        mean = sum(close) / len(close)
        gap = mean / close[-1] - 1.0
        expected = gap * 0.5
        forecasts.append(
            {
                "symbol": symbol,
                "target_time": ctx.target_time,
                "direction": 1 if expected >= 0 else -1,
                "predicted_return": round(expected, 6),
                "probability": round(0.5 + min(abs(gap) * 40.0, 0.3), 4),
            }
        )
    return forecasts
'''

DEMO_MODELS = (
    MOMENTUM,
    DemoModel(
        {
            "name": "demo-goog-daily",
            "title": "Demo: Alphabet daily trend",
            "description": (
                "A demo model created by `foretell up`: the `foretell init` template on daily "
                "Alphabet (GOOG) bars, forecasting that the 20-day trend goes on the next "
                "day. Its record is a replay of 2012-2013 with a simulated clock, labelled "
                "simulated."
            ),
            "symbols": ["GOOG"],
            "resolution": "1d",
            "horizon": 1,
            "tags": ["demo", "equities"],
            "visibility": "public",
        },
        Manifest(
            entrypoint="model:predict",
            symbols=("GOOG",),
            resolution="1d",
            horizon=1,
            lookback=20,
            requirements="requirements.txt",
        ),
        price_minor=2900,
        trial_days=0,
    ),
    DemoModel(
        {
            "name": "demo-eurusd-reversion",
            "title": "Demo: EUR/USD 4-hour mean reversion",
            "description": (
                "A demo model created by `foretell up`: after a stretch away from its 24-hour "
                "average, EUR/USD is expected to come back part of the way within four hours. "
                "Each forecast gives a predicted return and a probability. Its record is a "
                "replay of the 2017-2018 history with a simulated clock, labelled simulated."
            ),
            "symbols": ["EURUSD"],
            "resolution": "1h",
            "horizon": 4,
            "tags": ["demo", "fx"],
            "visibility": "public",
        },
        Manifest(
            entrypoint="model:predict",
            symbols=("EURUSD",),
            resolution="1h",
            horizon=4,
            lookback=24,
            requirements="requirements.txt",
        ),
        price_minor=9900,
        trial_days=7,
        code=_REVERSION_CODE,
    ),
)


Clock = Callable[[], datetime]


@dataclasses.dataclass
class DemoSummary:
    # Set only when this call created the provider: the one time its password is known.
    password: str | None = None
    provider_created: bool = False
    model_created: bool = False
    version: int | None = None
    version_created: bool = False
    built: bool = False
    published: bool = False
    # Why the version was not built and the replay skipped (e.g. not root), else "".
    skipped: str = ""
    slots: int = 0
    # Outcomes of the runs this call recorded; runs found already recorded are only counted.
    outcomes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    already_recorded: int = 0
    forecasts: int = 0


async def _provider(db: Database, now: datetime, summary: DemoSummary) -> Principal:
    """The demo provider, created on first use. Its password is generated then, returned once
    (the caller prints it) and stored only as a hash: a fixed, documented password would be a
    known credential on every platform that ran the demo, reachable by anyone who can reach
    the gateway; a generated one costs the operator nothing, since the command prints it."""
    async with db.session() as session:
        user = await session.scalar(select(User).where(User.email == DEMO_EMAIL))
    if user is None:
        password = secrets.token_urlsafe(12)
        try:
            user = await create_user(
                db,
                email=DEMO_EMAIL,
                password=password,
                display_name=DEMO_DISPLAY_NAME,
                role=Role.PROVIDER,
                now=now,
            )
            summary.password, summary.provider_created = password, True
        except AlreadyExists:
            # Another `foretell demo` created it meanwhile.
            async with db.session() as session:
                user = await session.scalar(select(User).where(User.email == DEMO_EMAIL))
            assert user is not None
    return Principal(user.id, Role(user.role), "demo")


async def _model(
    db: Database, principal: Principal, now: datetime, summary: DemoSummary, spec: DemoModel
) -> None:
    async with db.session() as session:
        exists = await session.scalar(select(Model.id).where(Model.name == spec.name))
    if exists is None:
        try:
            await create_model(db, principal, dict(spec.fields), now)
            summary.model_created = True
        except AlreadyExists:
            pass
    async with db.session.begin() as session:
        model_id = await session.scalar(select(Model.id).where(Model.name == spec.name))
        # Only when it has none: a plan the operator changed since is theirs.
        await session.execute(
            insert(Plan)
            .values(
                model_id=model_id,
                price_minor=spec.price_minor,
                currency=DEMO_CURRENCY,
                trial_days=spec.trial_days,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[Plan.model_id])
        )


def _packed(settings: Settings, spec: DemoModel) -> tuple[str, int]:
    """The `foretell init` template for the demo model, packed into the store's scratch space.
    The template is deterministic, so the digest is the same on every call (and the version
    is found again) until the template itself changes."""
    store = ArtifactStore(settings.artifacts_dir)
    with tempfile.TemporaryDirectory(prefix="ft-demo-") as folder:
        _scaffold.write(Path(folder), spec.name, spec.manifest, pushes_by_folder=False)
        if spec.code is not None:
            (Path(folder) / "model.py").write_text(spec.code)
        packed = pack_dir(Path(folder))
    target = store.scratch() / "bundle.tar"
    target.write_bytes(packed.data)
    store.put_bundle(target, packed.digest)
    target.parent.rmdir()
    return packed.digest, packed.size


async def _version(
    db: Database,
    settings: Settings,
    principal: Principal,
    now: datetime,
    summary: DemoSummary,
    spec: DemoModel,
) -> Version:
    digest, size = await asyncio.to_thread(_packed, settings, spec)
    version, created, _queued = await add_version(
        db, principal, Upload(spec.name, digest, size, spec.manifest), now
    )
    summary.version, summary.version_created = version.number, created
    return version


async def _build(db: Database, settings: Settings, version: Version, clock: Clock) -> Version:
    """Builds the version here with the build job's own work, no worker needed; a version whose
    build failed is tried again."""
    await build(
        db,
        ArtifactStore(settings.artifacts_dir),
        settings,
        clock,
        version.id,
        MemoryLog(),
        takeable=(*TAKEABLE, BuildState.FAILED),
    )
    async with db.session() as session:
        row = await session.get(Version, version.id)
    assert row is not None
    return row


def replay_slots(
    calendar: Slots,
    first_open: datetime,
    last_close: datetime,
    count: int | None,
    resolution: str = DEMO_RESOLUTION,
) -> list[datetime]:
    """The last `count` (None: all) slots of the calendar from `first_open` to `last_close`,
    oldest first: the closes of the calendar's bars, as the scheduler runs them (no slot while
    the market is closed)."""
    if count == 0:
        return []
    slots = calendar.slots(
        resolution, int(first_open.timestamp()), int(last_close.timestamp())
    ).tolist()
    if count is not None:
        slots = slots[-count:]
    return [datetime.fromtimestamp(s, UTC) for s in slots]


async def _replay(
    db: Database,
    settings: Settings,
    version: Version,
    count: int | None,
    summary: DemoSummary,
    say: Callable[[str], None],
    clock: Clock,
    spec: DemoModel,
) -> None:
    symbol, resolution = spec.symbol, spec.manifest.resolution
    async with db.session() as session:
        model = await session.scalar(select(Model).where(Model.name == spec.name))
        first_open, last_close = (
            await session.execute(
                select(func.min(Bar.open_time), func.max(Bar.close_time)).where(
                    Bar.symbol == symbol, Bar.resolution == resolution
                )
            )
        ).one()
    assert model is not None
    if first_open is None:
        say(f"no {symbol} {resolution} bars: nothing to replay")
        return
    calendar = await model_calendar(db, list(model.symbols))
    slots = replay_slots(calendar, first_open, last_close, count, resolution)
    summary.slots = len(slots)
    if slots:
        say(
            f"replaying {len(slots)} slots of {symbol} {resolution}, "
            f"{slots[0]:%Y-%m-%d %H:%MZ} to {slots[-1]:%Y-%m-%d %H:%MZ}, simulated clock"
        )
    store = ArtifactStore(settings.artifacts_dir)
    for done, slot in enumerate(slots, 1):
        record = await run_on_platform(
            db,
            store,
            settings,
            model,
            version,
            slot,
            kind="simulated",
            # Recorded when it really was: the simulated time of a replay is its as_of.
            clock=clock,
        )
        if record.recorded:
            summary.outcomes[record.outcome] += 1
            summary.forecasts += len(record.forecasts)
        else:
            summary.already_recorded += 1
        if done % PROGRESS_EVERY == 0 and done < len(slots):
            say(f"  {done}/{len(slots)} slots")


async def ensure_demo(
    db: Database,
    settings: Settings,
    *,
    replay: int | None = DEFAULT_REPLAY_SLOTS,
    clock: Clock = utc_now,
    say: Callable[[str], None] = lambda _line: None,
    spec: DemoModel = MOMENTUM,
) -> DemoSummary:
    """Idempotently: the demo provider, its public model, a version built from the
    `foretell init` template and published, and simulated runs of the model at the last
    `replay` hourly EURUSD slots (None: all of them; 0: none). Expects the demo bars loaded.
    A second call creates nothing. Building and running need the sandbox, i.e. root: without
    it the provider and model are still created, and `skipped` says why the rest was not."""
    summary = DemoSummary()
    now = clock()
    principal = await _provider(db, now, summary)
    # Said at once, not in a final summary: a replay interrupted later must not lose it.
    if summary.password is not None:
        say(f"demo provider created: {DEMO_EMAIL}, password {summary.password}")
        say(f"  (shown only now: note it, then `foretell login --email {DEMO_EMAIL}`)")
    else:
        say(f"demo provider {DEMO_EMAIL} exists (its password was printed when created)")
    await _model(db, principal, now, summary, spec)
    state = "created" if summary.model_created else "exists"
    say(f"demo model {spec.name} (public): {state}")
    async with db.session() as session:
        plan = await session.scalar(
            select(Plan).join(Model, Model.id == Plan.model_id).where(Model.name == spec.name)
        )
    assert plan is not None
    say(
        f"  plan: {format_minor(plan.price_minor, plan.currency)} a month, "
        f"{plan.trial_days}-day trial (`foretell subscribe {spec.name}`)"
    )
    version = await _version(db, settings, principal, now, summary, spec)
    if version.build_state != BuildState.READY:
        if os.geteuid() != 0:
            summary.skipped = (
                "not root: the sandbox that builds and runs models needs root (like "
                "`foretell worker`); the version is not built and nothing is replayed"
            )
            return summary
        version = await _build(db, settings, version, clock)
        if version.build_state != BuildState.READY:
            summary.skipped = f"version {version.number} failed to build: {version.failure_reason}"
            return summary
        summary.built = True
    async with db.session() as session:
        live = await session.scalar(select(Model.live_version).where(Model.name == spec.name))
    if live != version.number:
        await publish(db, principal, spec.name, version.number, clock())
        summary.published = True
    done = [
        what
        for what, flag in (
            ("uploaded", summary.version_created),
            ("built", summary.built),
            ("published", summary.published),
        )
        if flag
    ]
    say(f"  version {version.number}: {', '.join(done) if done else 'ready and live'}")
    if replay != 0 and os.geteuid() != 0:
        summary.skipped = (
            "not root: the sandbox that runs models needs root (like `foretell worker`); "
            "nothing is replayed"
        )
        return summary
    await _replay(db, settings, version, replay, summary, say, clock, spec)
    return summary


async def ensure_demo_catalog(
    db: Database,
    settings: Settings,
    *,
    replay: int | None = DEFAULT_REPLAY_SLOTS,
    say: Callable[[str], None] = lambda _line: None,
) -> list[DemoSummary]:
    """`ensure_demo` for each of DEMO_MODELS in turn: each is in the catalog as soon as it is
    created, and its simulated record fills while it replays."""
    return [
        await ensure_demo(db, settings, replay=replay, say=say, spec=spec) for spec in DEMO_MODELS
    ]


async def run_demo(database_url: str) -> list[IngestResult]:
    """The demo bars only: what `foretell up` loads at start. The model and the replay need a
    build and hundreds of sandboxed runs, too slow for start-up: `foretell demo` does them."""
    db = connect(database_url, pool_size=1)
    try:
        return await load_demo_bars(db)
    finally:
        await db.close()
