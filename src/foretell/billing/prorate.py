"""The unused share of a paid period, in minor units: what a subscription that ends early is
credited.

The share is by time, to the microsecond: amount x unused / period, where a period is its
calendar month (28 to 31 days). It is rounded down to a whole minor unit of the invoice's
currency (`foretell.currencies`: a cent, a yen, a thousandth of a dinar), so the credit is never
more than the exact share and at most one minor unit less. Integer arithmetic throughout: no
float rounding can make two runs differ.
"""

from __future__ import annotations

from datetime import datetime, timedelta

_MICROSECOND = timedelta(microseconds=1)


def unused_minor(
    amount_minor: int, period_start: datetime, period_end: datetime, ended_at: datetime
) -> int:
    """The part of `amount_minor` (billed for [period_start, period_end)) not used when the
    subscription ends at `ended_at`: all of it before the period starts, none after it ends."""
    total = (period_end - period_start) // _MICROSECOND
    if total <= 0 or amount_minor <= 0:
        return 0
    unused = min(max((period_end - ended_at) // _MICROSECOND, 0), total)
    return amount_minor * unused // total


def describe(period_start: datetime, period_end: datetime, ended_at: datetime) -> str:
    """The credit note's line: which span of which period it credits."""
    unused_from = min(max(ended_at, period_start), period_end)
    days = (period_end - unused_from) / timedelta(days=1)
    length = (period_end - period_start) / timedelta(days=1)
    return (
        f"unused {days:.2f} of {length:.0f} days, {unused_from:%Y-%m-%d %H:%M} to "
        f"{period_end:%Y-%m-%d %H:%M} UTC"
    )
