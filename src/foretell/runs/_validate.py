"""The checks SubmitForecasts applies to every forecast a model hands in."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from foretell.errors import FieldViolation, InvalidArgument, Violations
from foretell.forecast.v1 import forecast_service_pb2 as pb
from foretell.runs._scope import MAX_FORECASTS, RunScope

DIRECTIONS = {pb.DIRECTION_UP: "up", pb.DIRECTION_DOWN: "down", pb.DIRECTION_FLAT: "flat"}


@dataclass(frozen=True)
class AcceptedForecast:
    symbol: str
    target_time: datetime
    # "up", "down" or "flat".
    direction: str
    predicted_return: float | None
    probability: float | None


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_forecasts(
    scope: RunScope, forecasts: list[pb.Forecast], already: set[str]
) -> list[AcceptedForecast]:
    """The forecasts, checked; InvalidArgument listing every problem (`forecasts[I].FIELD`)
    otherwise. `already`: symbols forecast earlier in the run (one forecast per symbol: the
    recorded key is (version, as_of, symbol, target))."""
    problems = Violations(count_field="forecasts")
    add = problems.add
    if len(already) + len(forecasts) > MAX_FORECASTS:
        raise InvalidArgument(
            [FieldViolation("forecasts", f"at most {MAX_FORECASTS} forecasts per run")]
        )
    target = scope.target_time
    seen = set(already)
    accepted = []
    for i, f in enumerate(forecasts):
        at = f"forecasts[{i}]."
        if f.symbol not in scope.symbols:
            add(at + "symbol", f"not one of the model's symbols ({', '.join(scope.symbols)})")
        elif f.symbol in seen:
            add(at + "symbol", f"a second forecast for {f.symbol}: one per symbol and run")
        seen.add(f.symbol)
        when = None
        if not f.HasField("target_time"):
            add(at + "target_time", f"required: {_iso(target)}")
        elif f.target_time.nanos or f.target_time.seconds != int(target.timestamp()):
            add(
                at + "target_time",
                f"must be as_of plus the horizon ({scope.horizon} x {scope.resolution}): "
                f"{_iso(target)}",
            )
        else:
            when = datetime.fromtimestamp(f.target_time.seconds, UTC)
        direction = DIRECTIONS.get(f.direction)
        if direction is None:
            add(at + "direction", "required: DIRECTION_UP, DIRECTION_DOWN or DIRECTION_FLAT")
        predicted = f.predicted_return if f.HasField("predicted_return") else None
        if predicted is not None and not math.isfinite(predicted):
            add(at + "predicted_return", "must be a finite number")
        probability = f.probability if f.HasField("probability") else None
        if probability is not None and not 0.0 <= probability <= 1.0:  # NaN fails too
            add(at + "probability", "must be in [0, 1]")
        if when is not None and direction is not None:
            accepted.append(AcceptedForecast(f.symbol, when, direction, predicted, probability))
    problems.raise_if_any()
    return accepted
