"""GetPerformance: measures checked against values computed by hand (plain Python, below) on a
slice of the real hourly EURUSD bars; the cache never serves a stale answer; kinds never mix;
the access rules."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from grpc import aio
from sqlalchemy import text

from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources
from tests._records import HOUR, F, Made, insert_bars, make_model, record_run, unique_symbol
from tests.conftest import SignUp, status_code

# Cost per unit of position traded for the hand-checked curve, in basis points.
COST_BPS = 1.5
# The FX calendar (24 hours on each weekday), counted over 2010-2019: 2,608 weekdays.
FX_HOURS_A_YEAR = 24 * 2608 / 10
# The model's calls, one per hour from 11:00 (as_of) on 2017-04-19; the last one is pending.
SPECS = [
    F("up", 0.0004, 0.6),
    F("down", -0.0002, 0.55),
    F("up", None, 0.7),
    F("down", -0.0010, None),
    F("flat", 0.0, 0.5),
    F("up", 0.0003, 0.65),
    F("down", -0.0001, 0.52),
    F("up", 0.0002, 0.58),
    F("up", 0.0006, 0.8),
    F("down", -0.0004, 0.6),
    F("down", -0.0003, 0.51),
    F("up", 0.0001, 0.5),
]


@pytest.fixture(scope="module")
def forecasts(channel: aio.Channel) -> pb_grpc.ForecastServiceAsyncStub:
    return pb_grpc.ForecastServiceStub(channel)


@pytest.fixture(scope="module")
def registry(channel: aio.Channel) -> reg_grpc.RegistryServiceAsyncStub:
    return reg_grpc.RegistryServiceStub(channel)


def real_eurusd(count: int) -> list[tuple[datetime, float]]:
    import backtesting.test as shipped  # type: ignore[import-untyped]

    frame = shipped.EURUSD.iloc[:count]
    rows = [(t.to_pydatetime().replace(tzinfo=UTC), float(c)) for t, c in frame["Close"].items()]
    # The slice is one trading day: consecutive hours, no gap.
    assert all(b[0] - a[0] == HOUR for a, b in itertools.pairwise(rows))
    return rows


async def measured_model(
    registry: reg_grpc.RegistryServiceAsyncStub, sign_up: SignUp, resources: Resources
) -> tuple[Made, dict[datetime, float], list[datetime]]:
    """13 real bars (closes 10:00 to 22:00), forecasts at as_of 11:00 to 22:00, a missed slot
    at 10:00, no run at 23:00, a timeout at 00:00."""
    made = await make_model(registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),))
    bars = real_eurusd(13)
    await insert_bars(resources, made.symbol, bars)
    closes = {t + HOUR: c for t, c in bars}  # by close time
    first = bars[0][0] + 2 * HOUR  # 11:00, the close of the second bar
    as_ofs = [first + i * HOUR for i in range(len(SPECS))]
    for as_of, spec in zip(as_ofs, SPECS, strict=True):
        await record_run(resources, made, as_of, [spec])
    await record_run(resources, made, first - HOUR, outcome="missed")
    await record_run(resources, made, as_ofs[-1] + 2 * HOUR, outcome="timeout")
    return made, closes, as_ofs


# --- the hand computation: plain Python, independent of foretell.performance ---------------


def average_ranks(values: list[float]) -> list[float]:
    ordered = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and values[ordered[j + 1]] == values[ordered[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[ordered[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def by_hand(
    directions: list[int],
    predicted: list[float | None],
    probability: list[float | None],
    realized: list[float],
    cost: float,
    per_year: float = FX_HOURS_A_YEAR,
) -> dict[str, Any]:
    """Hourly forecasts over horizon 1, one per period of an unbroken run of calendar bars:
    the position is the direction, the cost is charged on each change of position."""
    z = 1.959963984540054
    calls = [(d, r, p) for d, r, p in zip(directions, realized, probability, strict=True)
             if d != 0 and r != 0]  # fmt: skip
    hits = [(d > 0) == (r > 0) for d, r, _ in calls]
    n, h = len(calls), sum(hits)
    out: dict[str, Any] = {"calls": n, "hits": h}
    p_hat = h / n
    centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    out.update(hit_rate=p_hat, hit_rate_low=centre - half, hit_rate_high=centre + half)
    pairs = [(p, r) for p, r in zip(predicted, realized, strict=True) if p is not None]
    if pairs:
        errors = [p - r for p, r in pairs]
        out["mae"] = sum(abs(e) for e in errors) / len(errors)
        out["rmse"] = math.sqrt(sum(e * e for e in errors) / len(errors))
        px, rx = [p for p, _ in pairs], [r for _, r in pairs]
        out["information_coefficient"] = pearson(average_ranks(px), average_ranks(rx))
    scored = [(p, hit) for (_, _, p), hit in zip(calls, hits, strict=True) if p is not None]
    if scored:
        out["brier"] = sum((p - hit) ** 2 for p, hit in scored) / len(scored)
        out["log_loss"] = -sum(math.log(p) if hit else math.log(1 - p) for p, hit in scored) / len(
            scored
        )
    returns, held = [], 0
    for d, r in zip(directions, realized, strict=True):
        returns.append(d * r - cost * abs(d - held))
        held = d
    equity, value, peak, drawdown = [], 1.0, 1.0, 0.0
    for ret in returns:
        value *= 1 + ret
        equity.append(value)
        peak = max(peak, value)
        drawdown = max(drawdown, 1 - value / peak)
    mean = sum(returns) / len(returns)
    sd = math.sqrt(sum((x - mean) ** 2 for x in returns) / (len(returns) - 1))
    downside = math.sqrt(sum(min(x, 0) ** 2 for x in returns) / len(returns))
    out.update(
        trades=sum(1 for d in directions if d != 0),
        total_return=value - 1,
        sharpe=mean / sd * math.sqrt(per_year),
        sortino=mean / downside * math.sqrt(per_year),
        max_drawdown=drawdown,
        equity=equity,
    )
    return out


def assert_measures(got: Any, want: dict[str, Any]) -> None:
    for name, value in want.items():
        if name == "equity":
            continue
        assert got.HasField(name) if name not in ("calls", "hits", "trades", "total_return",
                                                  "max_drawdown") else True, name  # fmt: skip
        assert getattr(got, name) == pytest.approx(value, rel=1e-9, abs=1e-12), name


# --- tests -----------------------------------------------------------------------------------


async def test_measures_match_a_hand_computation_on_real_eurusd(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    made, closes, as_ofs = await measured_model(registry, sign_up, resources)
    reader = await sign_up()  # anyone signed in, not the owner
    response = await forecasts.GetPerformance(
        pb.GetPerformanceRequest(model=made.name, cost_bps=COST_BPS), metadata=reader.metadata
    )
    scored_specs = SPECS[:-1]
    scored_at = as_ofs[:-1]
    realized = [closes[t + HOUR] / closes[t] - 1 for t in scored_at]
    last_move = [closes[t] / closes[t - HOUR] - 1 for t in scored_at]
    sign = {"up": 1, "down": -1, "flat": 0}
    cost = COST_BPS / 10_000
    model = by_hand(
        [sign[s.direction] for s in scored_specs],
        [s.predicted_return for s in scored_specs],
        [s.probability for s in scored_specs],
        realized,
        cost,
    )
    always_up = by_hand([1] * len(realized), [None] * len(realized), [None] * len(realized),
                        realized, cost)  # fmt: skip
    persistence = by_hand(
        [(m > 0) - (m < 0) for m in last_move], list(last_move), [None] * len(realized),
        realized, cost,
    )  # fmt: skip

    overall = response.overall
    assert response.periods_per_year == FX_HOURS_A_YEAR
    conventions = response.conventions
    assert conventions.calendar == "FX" and conventions.periods_per_year == FX_HOURS_A_YEAR
    assert "turnover" in conventions.costs or "change" in conventions.costs
    assert all((conventions.returns, conventions.annualisation, conventions.realized,
                conventions.coverage, conventions.order))  # fmt: skip
    assert (overall.forecasts.total, overall.forecasts.scored) == (12, 11)
    assert (overall.forecasts.pending, overall.forecasts.unscorable) == (1, 0)
    c = overall.coverage
    # Slots 10:00 to 00:00: 15 due; 12 ok, 1 missed, 1 timeout, none at 23:00.
    assert (c.due_slots, c.runs, c.runs_ok, c.runs_failed, c.runs_missed) == (15, 14, 12, 1, 1)
    assert c.slots_without_run == 1
    assert c.ratio == pytest.approx(12 / 15)
    assert_measures(overall.model, model)
    no_returns = ("mae", "rmse", "information_coefficient")
    assert_measures(overall.always_up, {k: v for k, v in always_up.items() if k not in no_returns})
    assert not overall.always_up.HasField("mae")
    assert not overall.always_up.HasField("information_coefficient")  # constant: undefined
    assert_measures(overall.persistence, persistence)
    assert not overall.persistence.HasField("brier")
    # Chart series: the equity curves at the target bars' closes, the cumulative hit rate.
    charts = overall.charts
    targets = [int((t + HOUR).timestamp()) for t in scored_at]
    assert list(charts.model_equity.times_unix) == targets
    assert list(charts.model_equity.values) == pytest.approx(model["equity"], rel=1e-12)
    assert list(charts.always_up_equity.values) == pytest.approx(always_up["equity"], rel=1e-12)
    assert list(charts.persistence_equity.values) == pytest.approx(persistence["equity"], rel=1e-12)
    assert len(charts.cumulative_hit_rate.values) == model["calls"]
    assert charts.cumulative_hit_rate.values[-1] == pytest.approx(model["hit_rate"])
    # One version: it is the whole record.
    assert [v.version for v in response.versions] == [1]
    assert response.versions[0].model == overall.model


async def test_a_new_run_or_a_corrected_bar_changes_the_answer(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    made, closes, as_ofs = await measured_model(registry, sign_up, resources)
    meta = made.owner.metadata
    request = pb.GetPerformanceRequest(model=made.name)
    first = await forecasts.GetPerformance(request, metadata=meta)
    assert await forecasts.GetPerformance(request, metadata=meta) == first  # served again

    # A run lands at 23:00 (its target bar, 00:00, is not stored: pending).
    await record_run(resources, made, as_ofs[-1] + HOUR, [F("down", -0.0001, 0.6)])
    second = await forecasts.GetPerformance(request, metadata=meta)
    assert second.overall.forecasts.total == first.overall.forecasts.total + 1
    assert second.overall.forecasts.pending == first.overall.forecasts.pending + 1
    assert second.overall.coverage.slots_without_run == 0

    # The bar closing at 22:00 arrives: the pending 21:00 forecast is scored.
    last_open = max(closes) - HOUR
    await insert_bars(resources, made.symbol, [(last_open + HOUR, 1.07110)])
    third = await forecasts.GetPerformance(request, metadata=meta)
    assert third.overall.forecasts.scored == second.overall.forecasts.scored + 1

    # A bar is corrected (what IngestBars with upsert does): a realized return changes.
    async with resources.db.session.begin() as session:
        await session.execute(
            text("UPDATE bars SET close = close * 1.01, high = high * 1.01 "
                 "WHERE symbol = :s AND open_time = :t"),
            {"s": made.symbol, "t": as_ofs[3]},
        )  # fmt: skip
    fourth = await forecasts.GetPerformance(request, metadata=meta)
    assert fourth.overall.model.mae != third.overall.model.mae
    assert fourth.overall.model.total_return != third.overall.model.total_return


async def test_live_and_simulated_never_mix(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    made, _closes, as_ofs = await measured_model(registry, sign_up, resources)
    for as_of in as_ofs[:3]:
        await record_run(resources, made, as_of, [F("down", -0.001, 0.9)], kind="simulated")
    meta = made.owner.metadata
    live = await forecasts.GetPerformance(pb.GetPerformanceRequest(model=made.name), metadata=meta)
    simulated = await forecasts.GetPerformance(
        pb.GetPerformanceRequest(model=made.name, kind=pb.RUN_KIND_SIMULATED), metadata=meta
    )
    assert live.overall.forecasts.total == 12
    assert live.kind == pb.RUN_KIND_LIVE
    assert simulated.overall.forecasts.total == 3
    assert simulated.overall.coverage.runs == 3
    assert simulated.overall.model.trades == 3
    assert simulated.kind == pb.RUN_KIND_SIMULATED


async def test_bad_requests_and_hidden_models(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    private = await make_model(
        registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),), public=False
    )
    stranger = await sign_up()
    with pytest.raises(grpc.RpcError) as error:
        await forecasts.GetPerformance(
            pb.GetPerformanceRequest(model=private.name), metadata=stranger.metadata
        )
    assert status_code(error.value) == grpc.StatusCode.NOT_FOUND
    empty = await forecasts.GetPerformance(
        pb.GetPerformanceRequest(model=private.name), metadata=private.owner.metadata
    )
    assert empty.overall.forecasts.total == 0
    assert not empty.overall.model.HasField("hit_rate")
    for bad in (
        pb.GetPerformanceRequest(model=private.name, kind=pb.RUN_KIND_DRY),
        pb.GetPerformanceRequest(model=private.name, cost_bps=-1),
        pb.GetPerformanceRequest(model=private.name, cost_bps=float("nan")),
    ):
        with pytest.raises(grpc.RpcError) as error:
            await forecasts.GetPerformance(bad, metadata=private.owner.metadata)
        assert status_code(error.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        await forecasts.GetPerformance(pb.GetPerformanceRequest(model=private.name))
    assert status_code(error.value) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_record_over_a_weekend_follows_the_fx_calendar(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    """120 real EURUSD bars (Wednesday 2017-04-19 to the next Tuesday, a weekend between); a
    momentum forecast at each bar's close but every seventh, over one bar. The independent
    computation takes the periods from the bars themselves (the market's own hours), not from
    the platform's calendar: every period counts (0 when there is no forecast), costs are paid
    on changes of position, and Sharpe is annualised with the FX hours of a year."""
    import statistics

    import backtesting.test as shipped

    made = await make_model(registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),))
    frame = shipped.EURUSD.iloc[:120]
    bars = [(t.to_pydatetime().replace(tzinfo=UTC), float(c)) for t, c in frame["Close"].items()]
    await insert_bars(resources, made.symbol, bars)
    slots = [t + HOUR for t, _ in bars]  # the bars' closes
    close = {t + HOUR: c for t, c in bars}
    weekend = [(a, b) for a, b in itertools.pairwise(slots) if b - a > HOUR]
    assert len(weekend) == 1 and weekend[0][1] - weekend[0][0] == 49 * HOUR
    positions: list[int] = []
    for i in range(1, len(slots) - 1):
        as_of, target = slots[i], slots[i + 1]
        if i % 7 == 0:
            positions.append(0)  # no run at this slot: a period without a position
            continue
        up = close[as_of] > close[slots[i - 1]]
        positions.append(1 if up else -1)
        await record_run(resources, made, as_of, [F("up" if up else "down", target=target)])
    response = await forecasts.GetPerformance(
        pb.GetPerformanceRequest(model=made.name, cost_bps=COST_BPS),
        metadata=made.owner.metadata,
    )
    cost = COST_BPS / 10_000
    returns, held = [], 0
    for i, position in enumerate(positions, start=1):
        move = close[slots[i + 1]] / close[slots[i]] - 1
        returns.append(position * move - cost * abs(position - held))
        held = position
    overall = response.overall
    assert overall.forecasts.scored == sum(1 for p in positions if p)
    assert overall.forecasts.unscorable == 0  # the weekend's forecast is scored too
    per_year = FX_HOURS_A_YEAR
    sharpe = statistics.fmean(returns) / statistics.stdev(returns) * math.sqrt(per_year)
    downside = math.sqrt(statistics.fmean(min(r, 0.0) ** 2 for r in returns))
    equity = list(itertools.accumulate((1 + r for r in returns), lambda a, b: a * b))
    assert overall.model.sharpe == pytest.approx(sharpe, rel=1e-9)
    assert overall.model.sortino == pytest.approx(
        statistics.fmean(returns) / downside * math.sqrt(per_year), rel=1e-9
    )
    assert overall.model.total_return == pytest.approx(equity[-1] - 1, rel=1e-9, abs=1e-15)
    charts = overall.charts
    assert list(charts.model_equity.times_unix) == [int(t.timestamp()) for t in slots[2:]]
    assert list(charts.model_equity.values) == pytest.approx(equity, rel=1e-12)
    # The cumulative hit rate: one point per call, in order of target time.
    assert list(charts.cumulative_hit_rate.times_unix) == sorted(
        charts.cumulative_hit_rate.times_unix
    )


async def test_coverage_counts_calendar_slots_and_never_exceeds_one(
    registry: reg_grpc.RegistryServiceAsyncStub,
    forecasts: pb_grpc.ForecastServiceAsyncStub,
    sign_up: SignUp,
    resources: Resources,
) -> None:
    """Two versions run the same slots of an FX model over a weekend; one slot's data never
    came. Slots are the FX calendar's: the weekend's hours are not due."""
    made = await make_model(
        registry, sign_up, resources, symbols=(unique_symbol("EURUSD"),), versions=2
    )
    friday = datetime(2024, 1, 5, 20, tzinfo=UTC)  # the FX week ends at 22:00 UTC in winter
    sunday = datetime(2024, 1, 7, 23, tzinfo=UTC)  # and starts again at 22:00: first slot 23:00
    slots = [friday, friday + HOUR, friday + 2 * HOUR, sunday, sunday + HOUR]
    for slot in slots[:-1]:
        await record_run(resources, made, slot, version=1)
    await record_run(resources, made, slots[-1], outcome="data_missing")
    for slot in slots[:3]:
        await record_run(resources, made, slot, version=2)
    await record_run(resources, made, friday + 16 * HOUR, version=2)  # Saturday: off-calendar
    response = await forecasts.GetPerformance(
        pb.GetPerformanceRequest(model=made.name), metadata=made.owner.metadata
    )
    overall = response.overall.coverage
    assert overall.due_slots == 5  # 20:00, 21:00, 22:00 Friday; 23:00, 00:00 Sunday night
    # 8 ok runs over 5 slots: counting runs, not distinct slots, would give 8 / 5.
    assert (overall.runs, overall.runs_ok, overall.runs_data_missing) == (9, 8, 1)
    assert overall.slots_without_run == 0
    assert overall.ratio == 1.0  # 4 slots ok of the 4 whose data came
    by_version = {v.version: v.coverage for v in response.versions}
    assert by_version[1].due_slots == 5 and by_version[1].ratio == 1.0
    # Version 2: Friday 20:00 to its Saturday run; the Saturday run is no slot.
    assert by_version[2].due_slots == 3 and by_version[2].ratio == 1.0
    assert all(0 <= c.ratio <= 1 for c in (overall, *by_version.values()))
