"""The measures of one forecaster (the model or a baseline) on scored forecasts: pure numpy.

Definitions (the README repeats them for users):
- a *call* is a forecast saying up (+1) or down (-1) whose realized return is not exactly 0;
  flat forecasts and ties are not calls. Hit rate = hits / calls, with a Wilson 95 % interval.
- MAE and RMSE compare predicted_return with the realized return, over the forecasts that give
  a predicted return.
- Brier score and log loss score `probability` (that the direction is right) against the
  outcome of the call (1 hit, 0 miss), over calls that give a probability; log loss clips p to
  [1e-15, 1 - 1e-15].
- The information coefficient is Spearman's rank correlation (average ranks for ties) of
  predicted and realized returns, over the forecasts that give a predicted return (at least
  3, and neither side constant).
- The equity curve follows the direction: position +1 (up), -1 (down) or 0 (flat). The
  record's periods are the model's calendar bars, every one from the first scored as_of to the
  last (a period with no forecast has no new position and returns 0). A forecast made at as_of
  over h bars takes weight w = position / (h * n), n the number of forecasts made at that
  as_of (they share the period equally), and holds it for its h bars (h overlapping tranches);
  its return w * realized is booked in the period of its as_of. The book's weight in a symbol
  is the sum of the weights of its tranches still open; costs are charged on changes of the
  book (turnover): cost * sum over symbols of |book_k - book_(k-1)| in period k (flat to long
  costs once, long to short twice; the book left open at the end is not charged). Period
  return R_k = sum of the tranche returns booked in it - its cost. Equity starts at 1 and
  compounds period returns; each point is at the close of its period's bar (the calendar's
  next slot). Sharpe = mean(R) / stdev(R, n-1) * sqrt(periods per year); Sortino = mean(R) /
  sqrt(mean(min(R, 0)^2)) * sqrt(periods per year), periods per year from the calendar;
  maximum drawdown is the largest fall from a running peak (the start, 1, counts as a peak),
  as a fraction.
- Series are in a fixed order: forecasts by (as_of, symbol, target, version); the cumulative
  hit rate by (target, as_of, symbol, version) of its calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

WILSON_Z = 1.959963984540054  # the 97.5th percentile of the standard normal: a 95 % interval
LOG_LOSS_EPS = 1e-15


@dataclass(frozen=True)
class Scored:
    """Scored forecasts, one element per forecast, sorted by (as_of, symbol, target,
    version). Missing optional values are NaN."""

    as_of: Ints  # seconds since the epoch, a slot of the model's calendar
    target: Ints
    horizon: Ints  # calendar bars between as_of and target (>= 1)
    symbol: Ints  # 0-based index of the symbol
    position: Ints  # +1 up, -1 down, 0 flat (or no call)
    predicted: Floats
    probability: Floats
    realized: Floats


@dataclass(frozen=True)
class Curve:
    times: list[int]
    values: list[float]


@dataclass(frozen=True)
class Measures:
    calls: int
    hits: int
    hit_rate: float | None
    hit_rate_low: float | None
    hit_rate_high: float | None
    mae: float | None
    rmse: float | None
    brier: float | None
    log_loss: float | None
    information_coefficient: float | None
    trades: int
    total_return: float
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    equity: Curve
    cumulative_hit_rate: Curve


def wilson(hits: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def ranks(values: Floats) -> Floats:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    _, first, counts = np.unique(ordered, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    out = np.empty(len(values), dtype=np.float64)
    out[order] = np.repeat(average, counts)
    return out


def spearman(x: Floats, y: Floats) -> float | None:
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denominator == 0:
        return None
    return float(dx @ dy) / denominator


def _optional(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Periods:
    """The record's calendar bars: `starts[k]` is period k's as_of slot, `ends[k]` the close of
    its bar (the next slot). Increasing; every as_of of the scored forecasts is among them."""

    starts: Ints
    ends: Ints
    symbols: int


def _period_returns(s: Scored, cost: float, periods: Periods) -> Floats:
    n_periods = len(periods.starts)
    k = np.searchsorted(periods.starts, s.as_of)
    per_period = np.bincount(k, minlength=n_periods)
    weight = s.position / (s.horizon * np.maximum(per_period[k], 1))
    booked = np.bincount(k, weights=weight * s.realized, minlength=n_periods)
    # The book: each tranche held from its period for `horizon` periods (a difference array
    # per symbol, summed up).
    changes = np.zeros((n_periods + 1, max(periods.symbols, 1)), dtype=np.float64)
    np.add.at(changes, (k, s.symbol), weight)
    np.add.at(changes, (np.minimum(k + s.horizon, n_periods), s.symbol), -weight)
    book = np.cumsum(changes[:n_periods], axis=0)
    turnover = np.abs(np.diff(book, axis=0, prepend=0.0)).sum(axis=1)
    returns: Floats = booked - cost * turnover
    return returns


def measure(s: Scored, *, cost: float, periods_per_year: float, periods: Periods) -> Measures:
    realized = s.realized
    calls_mask = (s.position != 0) & (realized != 0)
    hit_mask = calls_mask & (np.sign(realized).astype(np.int64) == s.position)
    calls, hits = int(calls_mask.sum()), int(hit_mask.sum())
    low = high = rate = None
    if calls:
        rate = hits / calls
        low, high = wilson(hits, calls)

    has_pred = ~np.isnan(s.predicted)
    mae = rmse = ic = None
    if has_pred.any():
        error = s.predicted[has_pred] - realized[has_pred]
        mae = float(np.abs(error).mean())
        rmse = math.sqrt(float((error * error).mean()))
        ic = spearman(s.predicted[has_pred], realized[has_pred])

    scored_prob = calls_mask & ~np.isnan(s.probability)
    brier = log_loss = None
    if scored_prob.any():
        p = s.probability[scored_prob]
        outcome = hit_mask[scored_prob].astype(np.float64)
        brier = float(((p - outcome) ** 2).mean())
        clipped = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        log_loss = float(-(outcome * np.log(clipped) + (1 - outcome) * np.log1p(-clipped)).mean())

    period = _period_returns(s, cost, periods) if len(s.as_of) else np.zeros(0)
    equity = np.cumprod(1.0 + period)
    ends = periods.ends if len(s.as_of) else np.zeros(0, dtype=np.int64)
    sharpe = sortino = None
    if len(period) >= 2:
        sd = float(period.std(ddof=1))
        if sd > 0:
            sharpe = _optional(float(period.mean()) / sd * math.sqrt(periods_per_year))
        downside = math.sqrt(float((np.minimum(period, 0.0) ** 2).mean()))
        if downside > 0:
            sortino = _optional(float(period.mean()) / downside * math.sqrt(periods_per_year))
    peaks = np.maximum.accumulate(np.concatenate(([1.0], equity)))[1:]
    drawdown = float((1.0 - equity / peaks).max()) if len(equity) else 0.0

    # Calls in the order their outcomes became known: by target, then as the forecasts are
    # sorted (as_of, symbol, version); lexsort is stable.
    order = np.lexsort((np.arange(len(s.target)), s.target))
    in_order = calls_mask[order]
    call_times = s.target[order][in_order]
    cumulative = np.cumsum(hit_mask[order][in_order]) / np.arange(1, calls + 1)
    return Measures(
        calls=calls,
        hits=hits,
        hit_rate=rate,
        hit_rate_low=low,
        hit_rate_high=high,
        mae=mae,
        rmse=rmse,
        brier=brier,
        log_loss=log_loss,
        information_coefficient=ic,
        trades=int((s.position != 0).sum()),
        total_return=float(equity[-1] - 1.0) if len(equity) else 0.0,
        sharpe=sharpe,
        sortino=sortino,
        max_drawdown=max(0.0, drawdown),
        equity=Curve(ends.tolist(), equity.tolist()),
        cumulative_hit_rate=Curve(call_times.tolist(), cumulative.tolist()),
    )
