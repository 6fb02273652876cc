"""GetPerformance's answer: the report of `foretell.performance` as protobuf."""

from __future__ import annotations

from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.performance import Conventions, Curve, Measures, Performance, Report


def _series(curve: Curve) -> pb.Series:
    return pb.Series(times_unix=curve.times, values=curve.values)


def _measures(m: Measures) -> pb.Measures:
    return pb.Measures(
        calls=m.calls,
        hits=m.hits,
        hit_rate=m.hit_rate,
        hit_rate_low=m.hit_rate_low,
        hit_rate_high=m.hit_rate_high,
        mae=m.mae,
        rmse=m.rmse,
        brier=m.brier,
        log_loss=m.log_loss,
        information_coefficient=m.information_coefficient,
        trades=m.trades,
        total_return=m.total_return,
        sharpe=m.sharpe,
        sortino=m.sortino,
        max_drawdown=m.max_drawdown,
    )


def _performance(p: Performance) -> pb.Performance:
    c = p.coverage
    return pb.Performance(
        version=p.version,
        coverage=pb.Coverage(
            due_slots=c.due_slots,
            runs=c.runs,
            runs_ok=c.runs_ok,
            runs_failed=c.runs_failed,
            runs_missed=c.runs_missed,
            slots_without_run=c.slots_without_run,
            ratio=c.ratio,
            runs_data_missing=c.runs_data_missing,
        ),
        forecasts=pb.ForecastCounts(
            total=p.counts.total,
            scored=p.counts.scored,
            pending=p.counts.pending,
            unscorable=p.counts.unscorable,
        ),
        model=_measures(p.model),
        always_up=_measures(p.always_up),
        persistence=_measures(p.persistence),
        charts=pb.Charts(
            model_equity=_series(p.model.equity),
            always_up_equity=_series(p.always_up.equity),
            persistence_equity=_series(p.persistence.equity),
            cumulative_hit_rate=_series(p.model.cumulative_hit_rate),
        ),
    )


def performance_pb(
    model: str, kind: pb.RunKind.ValueType, cost_bps: float, report: Report
) -> pb.GetPerformanceResponse:
    return pb.GetPerformanceResponse(
        model=model,
        kind=kind,
        cost_bps=cost_bps,
        overall=_performance(report.overall),
        versions=[_performance(v) for v in report.versions],
        periods_per_year=report.periods_per_year,
        conventions=_conventions(report.conventions),
    )


def _conventions(c: Conventions) -> pb.Conventions:
    return pb.Conventions(
        calendar=c.calendar,
        periods_per_year=c.periods_per_year,
        returns=c.returns,
        costs=c.costs,
        annualisation=c.annualisation,
        realized=c.realized,
        coverage=c.coverage,
        order=c.order,
    )
