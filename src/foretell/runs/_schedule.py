"""Which slots of a live version are due, and which are recorded unrun: pure functions of the
clock, the model's calendar and the bars that have landed.

A slot is the close of one of the calendar's bars (`foretell.calendars`): closed markets
(nights, weekends, holidays) have none, so they are neither due nor missed. A slot after the
model went live (and after its last recorded or enqueued slot) is, at time `now`:

- **due** when the bars closing at it have landed for every one of the model's symbols and
  the data deadline (`deadline` after the slot) has not passed: the newest such slot runs;
- **missed** when its bars landed but the deadline passed before it ran (the platform was
  not running, or was running behind): recorded, never run late;
- **data missing** when its bars had not landed for some symbol by the deadline: recorded
  with that outcome, never run later, never counted against the model;
- **waiting** otherwise (its bars may still come): nothing yet. Waiting slots are always the
  newest ones, so recording the others never skips past one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from foretell.calendars import Slots

# Rows recorded by one scheduler cycle for one version; older gaps are noted, not rows.
MAX_MISSED = 1000


def _check_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def latest_slot(calendar: Slots, resolution: str, now: datetime) -> datetime | None:
    """The calendar's latest slot at or before `now` (a bar closing exactly now has closed)."""
    _check_aware("now", now)
    found = calendar.latest_slot(resolution, int(now.timestamp()))
    return None if found is None else utc(found)


@dataclass(frozen=True)
class SlotPlan:
    """What one scheduler cycle does for one live version."""

    due: datetime | None = None
    # Oldest first; at most `cap` of each kind together, the most recent.
    missed: list[datetime] = field(default_factory=list)
    data_missing: dict[datetime, list[str]] = field(default_factory=dict)
    # How many slots were recorded unrun before the cap (missed and data missing).
    unrun_total: int = 0

    @property
    def unrun(self) -> int:
        return len(self.missed) + len(self.data_missing)


def plan_slots(
    calendar: Slots,
    resolution: str,
    *,
    last_as_of: datetime | None,
    now: datetime,
    live_since: datetime,
    landed: Mapping[str, datetime | None],
    deadline: timedelta,
    cap: int = MAX_MISSED,
) -> SlotPlan:
    """The plan for one live version. `landed`: for each of the model's symbols, the close of
    its newest stored bar at the resolution (None: no bars)."""
    _check_aware("now", now)
    _check_aware("live_since", live_since)
    start = live_since if last_as_of is None else max(last_as_of, live_since)
    _check_aware("last_as_of", start)
    now_s = int(now.timestamp())
    slots = calendar.slots(resolution, int(start.timestamp()), now_s)
    if not len(slots):
        return SlotPlan()
    late = int(deadline.total_seconds())
    newest = {s: -(2**62) if t is None else int(t.timestamp()) for s, t in landed.items()}
    all_landed = min(newest.values()) if newest else -(2**62)
    has_data = slots <= all_landed
    fresh = now_s < slots + late
    resolved = has_data | ~fresh
    runnable = np.flatnonzero(has_data & fresh)
    due_index = int(runnable[-1]) if len(runnable) else None
    # Everything resolved before the due slot (or, with none, every resolved slot) is
    # recorded unrun.
    stop = due_index if due_index is not None else int(np.count_nonzero(resolved))
    unrun = slots[:stop]
    total = len(unrun)
    kept = unrun[max(0, total - cap) :] if cap else unrun[:0]
    missed: list[datetime] = []
    data_missing: dict[datetime, list[str]] = {}
    for slot in kept.tolist():
        if slot <= all_landed:
            missed.append(utc(slot))
        else:
            data_missing[utc(slot)] = sorted(s for s, t in newest.items() if t < slot)
    due = None if due_index is None else utc(int(slots[due_index]))
    return SlotPlan(due, missed, data_missing, total)
