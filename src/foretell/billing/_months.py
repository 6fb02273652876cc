"""Calendar-month arithmetic for billing periods."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole calendar months, its day clamped to the month's end: from
    Jan 31, one month is Feb 28 (29), two are Mar 31. Always computed from the anchor, never
    chained, so a clamped month does not shift the later ones."""
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)
