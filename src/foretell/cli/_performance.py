"""`foretell performance MODEL`: the platform's measures of a model against the baselines."""

from __future__ import annotations

from typing import Any

import click

from foretell.cli._client import connect
from foretell.cli._output import echo_json, echo_table, json_option, message_dict
from foretell.cli._target import url_option
from foretell.forecast.v1 import forecast_service_pb2 as pb


def _f(message: Any, name: str, style: str) -> str:
    return format(getattr(message, name), style) if message.HasField(name) else "-"


def _row(label: str, m: pb.Measures) -> list[str]:
    interval = f"{m.hit_rate_low:.1%}-{m.hit_rate_high:.1%}" if m.HasField("hit_rate_low") else "-"
    return [
        label,
        str(m.calls),
        _f(m, "hit_rate", ".1%"),
        interval,
        _f(m, "mae", ".6f"),
        _f(m, "rmse", ".6f"),
        _f(m, "brier", ".4f"),
        _f(m, "log_loss", ".4f"),
        _f(m, "information_coefficient", ".3f"),
        f"{m.total_return:+.2%}",
        _f(m, "sharpe", ".2f"),
        _f(m, "sortino", ".2f"),
        f"{m.max_drawdown:.2%}",
    ]


_HEADERS = ("", "CALLS", "HIT", "95% CI", "MAE", "RMSE", "BRIER", "LOGLOSS", "IC", "RETURN",
            "SHARPE", "SORTINO", "MAXDD")  # fmt: skip


def _show(title: str, p: pb.Performance) -> None:
    c, n = p.coverage, p.forecasts
    click.echo(
        f"{title}: {n.total} forecasts ({n.scored} scored, {n.pending} pending, "
        f"{n.unscorable} unscorable); runs {c.runs_ok} ok of {c.due_slots} due slots "
        f"({c.ratio:.1%}), {c.runs_failed} failed, {c.runs_missed} missed, "
        f"{c.slots_without_run} without a run"
    )
    echo_table(
        _HEADERS,
        [
            _row("model", p.model),
            _row("always up", p.always_up),
            _row("persistence", p.persistence),
        ],
    )


@click.command(short_help="The model's performance, measured by the platform.")
@click.argument("model")
@click.option("--simulated", is_flag=True, help="Measure simulated replays instead of live runs.")
@click.option(
    "--cost-bps",
    type=click.FloatRange(0, 1000),
    default=0.0,
    show_default=True,
    help="Cost per trade of the equity curve, in basis points.",
)
@url_option
@json_option
def performance(model: str, simulated: bool, cost_bps: float, url: str, as_json: bool) -> None:
    """Print MODEL's performance as the platform measures it from recorded forecasts and the
    realized bars: hit rate with its 95% interval, MAE and RMSE of predicted returns, Brier
    score and log loss, information coefficient, and the equity curve of following the
    forecast direction (total return, Sharpe, Sortino, maximum drawdown), next to the
    always-up and persistence baselines; overall, then per version when there are several.
    --json prints the whole answer, chart series included.

    \b
    Examples:
      foretell performance eurusd-momentum
      foretell performance eurusd-momentum --cost-bps 1.5 --json
      foretell performance demo-eurusd-momentum --simulated
    """
    kind = pb.RUN_KIND_SIMULATED if simulated else pb.RUN_KIND_LIVE
    request = pb.GetPerformanceRequest(model=model, kind=kind, cost_bps=cost_bps)
    with connect(url) as client:
        response = client.unary(client.forecast.GetPerformance, request)
    if as_json:
        echo_json(message_dict(response))
        return
    label = "simulated" if simulated else "live"
    _show(f"{model} ({label}, cost {cost_bps:g} bps)", response.overall)
    if len(response.versions) > 1:
        for version in response.versions:
            click.echo()
            _show(f"version {version.version}", version)
