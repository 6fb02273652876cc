"""Which slots of a live version are due, and which were missed: pure functions of the clock.

Slots sit on a UTC grid (no daylight saving anywhere): 1h on the hour, 4h at 00, 04, 08, …
and 1d at midnight. A slot is run once its bar has closed, i.e. at or after its boundary.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from foretell.resolutions import STEP_S

# Missed rows recorded by one scheduler cycle for one version; older gaps are noted, not rows.
MAX_MISSED = 1000


def _step(resolution: str) -> int:
    try:
        return STEP_S[resolution]
    except KeyError:
        raise ValueError(f"unknown resolution {resolution!r}") from None


def _check_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


def latest_closed_boundary(resolution: str, now: datetime) -> datetime:
    """The latest grid boundary at or before `now` (a bar ending exactly now has closed)."""
    _check_aware("now", now)
    step = _step(resolution)
    seconds = int(now.timestamp() // step) * step
    return datetime.fromtimestamp(seconds, UTC)


def _start(last_as_of: datetime | None, live_since: datetime) -> datetime:
    _check_aware("live_since", live_since)
    if last_as_of is None:
        return live_since
    _check_aware("last_as_of", last_as_of)
    return max(last_as_of, live_since)


def due_slots(
    resolution: str,
    last_as_of: datetime | None,
    now: datetime,
    live_since: datetime,
    *,
    cap: int = MAX_MISSED,
) -> tuple[datetime | None, list[datetime]]:
    """(due, missed) for one live version. `due` is the latest closed boundary if it is after
    both the last recorded (or enqueued) slot and the time the model went live (its latest
    publication: time offline is never missed), else None. `missed` are the
    boundaries strictly between that start and `due`, oldest first: the platform was not
    running then, and they are recorded as missed, never run late. At most `cap` of them, the
    most recent (see `missed_total` for how many there were)."""
    start = _start(last_as_of, live_since)
    latest = latest_closed_boundary(resolution, now)
    if latest <= start:
        return None, []
    step = timedelta(seconds=_step(resolution))
    count = min(missed_total(resolution, last_as_of, latest, live_since), cap)
    return latest, [latest - step * i for i in range(count, 0, -1)]


def missed_total(
    resolution: str, last_as_of: datetime | None, due: datetime, live_since: datetime
) -> int:
    """How many boundaries lie strictly between the start (last slot or going live) and
    `due`, before any cap."""
    start = _start(last_as_of, live_since)
    step = _step(resolution)
    # The first boundary strictly after start.
    first = (int(start.timestamp() // step) + 1) * step
    return max(0, (int(due.timestamp()) - first) // step)
