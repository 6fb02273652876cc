"""Live models for the benchmarks: one image of a trivial model (one forecast per symbol, no
bars read) put in the store once, and models whose READY version 1 (rows inserted directly)
shares it and is live. `add_live` does the same for any stored image and manifests."""

from __future__ import annotations

import uuid
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from foretell.db.models import Model, User, Version
from foretell.marketdata import BarColumns, ingest_bars
from foretell.runtime.resources import Resources

MODEL_PY = """from foretell.sdk import Forecast


def predict(ctx):
    return [Forecast(s, ctx.target_time, "up", probability=0.6) for s in ctx.symbols]
"""


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def manifest(symbols: list[str]) -> dict[str, Any]:
    return {
        "entrypoint": "model:predict",
        "symbols": symbols,
        "resolution": "1h",
        "horizon": 1,
        "lookback": 24,
        "requirements": "",
    }


async def add_models(
    res: Resources,
    count: int,
    published: datetime,
    symbols: Callable[[int], list[str]] = lambda _i: ["EURUSD"],
) -> list[tuple[Model, Version]]:
    """One image in the store, and `count` models (model i forecasting `symbols(i)`) whose
    version 1 is READY on it and live since `published`."""
    built = res.store.scratch()
    (built / "app").mkdir(mode=0o755)
    (built / "site-packages").mkdir(mode=0o755)
    (built / "app" / "model.py").write_text(MODEL_PY)
    image_digest = res.store.put_image(built)
    manifests = [manifest(symbols(i)) for i in range(count)]
    return await add_live(res, image_digest, manifests, published)


async def add_live(
    res: Resources, image_digest: str, manifests: list[dict[str, Any]], published: datetime
) -> list[tuple[Model, Version]]:
    """A model per manifest (its symbols, resolution and horizon), one owner for them all,
    each with a version 1 READY on the stored image `image_digest` and live since
    `published`."""
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    async with res.db.session.begin() as session:
        owner = User(
            id=uuid.uuid4(),
            email=f"bench-{tag}@example.com",
            display_name="Bench",
            role="provider",
            password_hash="!",  # noqa: S106 - a hash that matches no password: no sign-in
            created_at=now,
        )
        session.add(owner)
        await session.flush()
        models = [
            Model(
                id=uuid.uuid4(),
                name=f"bench-{tag}-{i}",
                owner_id=owner.id,
                title="Bench",
                description="",
                symbols=list(m["symbols"]),
                resolution=m["resolution"],
                horizon=m["horizon"],
                tags=[],
                visibility="public",
                live_version=None,
                created_at=now,
                updated_at=now,
            )
            for i, m in enumerate(manifests)
        ]
        session.add_all(models)
        await session.flush()
        versions = [
            Version(
                id=uuid.uuid4(),
                model_id=model.id,
                number=1,
                digest=f"sha256:{uuid.uuid4().hex * 2}",
                bundle_size=1,
                manifest=m,
                created_at=now,
                build_state="ready",
                failure_reason="",
                image_digest=image_digest,
                build_finished_at=now,
                build_log="",
                published_at=published,
            )
            for model, m in zip(models, manifests, strict=True)
        ]
        session.add_all(versions)
        await session.flush()
        for model in models:
            model.live_version = 1
            model.live_since = published
    return list(zip(models, versions, strict=True))


async def land_bars(res: Resources, symbols: list[str], until: datetime, hours: int = 3) -> None:
    """Hourly bars of `symbols` for the `hours` hours closing at `until`: the scheduler runs a
    slot only once the bars closing at it are stored."""
    last_open = int(until.timestamp()) - 3600
    times = [last_open - 3600 * i for i in reversed(range(hours))]
    for symbol in symbols:
        bars = BarColumns(
            array("q", times), array("d", [1.0] * hours), array("d", [1.1] * hours),
            array("d", [0.9] * hours), array("d", [1.05] * hours), array("d", [10.0] * hours),
        )  # fmt: skip
        await ingest_bars(res.db, symbol, "1h", bars, upsert=True, now=datetime.now(UTC))
