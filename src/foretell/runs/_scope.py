"""What one run may see and must produce: the model's symbols, resolution and horizon, and the
moment of the forecast."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from foretell.resolutions import STEP_S

# Forecasts one run may submit, over all its calls: far above any model's symbol count, low
# enough that a flood cannot exhaust the worker's memory.
MAX_FORECASTS = 1000
# Largest message the run's socket accepts: 1,000 forecasts take well under 100 KB.
MAX_MESSAGE_BYTES = 256 * 1024


@dataclass(frozen=True)
class RunScope:
    symbols: tuple[str, ...]
    # "1h", "4h" or "1d".
    resolution: str
    # Bars between as_of and the forecast's target time.
    horizon: int
    # The data cut-off: only bars closed at or before it are visible. A boundary of the
    # resolution's grid, so "closed by as_of" is exactly "opened before as_of".
    as_of: datetime

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        if self.resolution not in STEP_S:
            raise ValueError(f"unknown resolution {self.resolution!r}")
        if int(self.as_of.timestamp()) % self.step or self.as_of.microsecond:
            raise ValueError(f"as_of {self.as_of} is not a {self.resolution} boundary")
        if self.horizon < 1:
            raise ValueError("horizon must be at least 1")

    @property
    def step(self) -> int:
        return STEP_S[self.resolution]

    @property
    def as_of_s(self) -> int:
        return int(self.as_of.timestamp())

    @property
    def target_time(self) -> datetime:
        """The one target time a run's forecasts may have: as_of plus `horizon` bars. One point,
        not a grid of them: the track record compares forecasts of the same horizon only."""
        return (self.as_of + timedelta(seconds=self.horizon * self.step)).astimezone(UTC)
