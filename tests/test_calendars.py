"""Trading calendars: which bars exist on each calendar (weekends, a US holiday, a daylight
saving change, a half day), target times across a close, several calendars at once, the
default calendar of a symbol, periods per year."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from foretell import calendars
from foretell.calendars import CRYPTO, FX, UnknownCalendar


def t(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def day(name: str, resolution: str, on: str) -> list[str]:
    """The slots of one UTC day (midnight excluded, the next midnight included)."""
    start = t(on)
    return [iso(int(s)) for s in calendars.get(name).slots(resolution, start, start + 86400)]


def test_nyse_hourly_bars_follow_new_york_time_across_daylight_saving() -> None:
    # Friday 2024-03-08 in EST: 09:30-16:00 is 14:30-21:00 UTC; the first bar is partial.
    assert day("XNYS", "1h", "2024-03-08") == [f"2024-03-08 {h}:00" for h in range(15, 22)]
    # Monday 2024-03-11, after the US change to EDT: 13:30-20:00 UTC.
    assert day("XNYS", "1h", "2024-03-11") == [f"2024-03-11 {h}:00" for h in range(14, 21)]
    assert day("XNYS", "4h", "2024-03-11") == ["2024-03-11 16:00", "2024-03-11 20:00"]


def test_nyse_has_no_bars_on_a_weekend_or_a_holiday() -> None:
    assert day("XNYS", "1h", "2024-03-09") == []  # Saturday
    assert day("XNYS", "1h", "2024-03-10") == []  # Sunday
    assert day("XNYS", "1h", "2024-07-04") == []  # Independence Day
    assert day("XNYS", "1h", "2024-11-28") == []  # Thanksgiving
    # Daily bars: one per session, closing the midnight UTC after its date.
    week = calendars.get("XNYS").slots("1d", t("2024-07-01"), t("2024-07-08"))
    assert [iso(int(s)) for s in week] == [
        "2024-07-02 00:00", "2024-07-03 00:00", "2024-07-04 00:00", "2024-07-06 00:00",
    ]  # fmt: skip


def test_nyse_half_days_end_early() -> None:
    # The day after Thanksgiving closes at 13:00 EST (18:00 UTC).
    assert day("XNYS", "1h", "2024-11-29") == [f"2024-11-29 {h}:00" for h in range(15, 19)]
    # 3 July 2024 closes at 13:00 EDT (17:00 UTC).
    assert day("XNYS", "1h", "2024-07-03") == [f"2024-07-03 {h}:00" for h in range(14, 18)]


def test_fx_trades_sunday_evening_to_friday_evening_new_york_time() -> None:
    # Winter: Friday 17:00 EST is 22:00 UTC; Sunday's open, 17:00 EST, is 22:00 UTC.
    assert day(FX, "1h", "2024-01-05")[-1] == "2024-01-05 22:00"
    assert day(FX, "1h", "2024-01-06") == []  # Saturday
    assert day(FX, "1h", "2024-01-07") == ["2024-01-07 23:00", "2024-01-08 00:00"]
    # Summer (EDT): one hour earlier in UTC.
    assert day(FX, "1h", "2024-07-05")[-1] == "2024-07-05 21:00"
    assert day(FX, "1h", "2024-07-07") == [
        "2024-07-07 22:00", "2024-07-07 23:00", "2024-07-08 00:00",
    ]  # fmt: skip
    # A whole weekday is 24 hourly bars, 6 four-hour bars, 1 daily bar.
    assert len(day(FX, "1h", "2024-01-09")) == 24
    assert len(day(FX, "4h", "2024-01-09")) == 6
    assert day(FX, "1d", "2024-01-09") == ["2024-01-10 00:00"]
    assert day(FX, "1d", "2024-01-06") == []


def test_crypto_never_closes() -> None:
    assert len(day(CRYPTO, "1h", "2024-01-06")) == 24
    assert day(CRYPTO, "1d", "2024-01-06") == ["2024-01-07 00:00"]


def test_target_times_skip_closed_markets() -> None:
    nyse = calendars.get("XNYS")
    # The last bar of Friday, plus one bar: the first bar of Monday.
    assert iso(nyse.target_time("1h", t("2024-03-08 21:00"), 1)) == "2024-03-11 14:00"
    assert iso(nyse.target_time("1h", t("2024-03-08 20:00"), 3)) == "2024-03-11 15:00"
    # Across the 4 July holiday, daily.
    assert iso(nyse.target_time("1d", t("2024-07-04 00:00"), 1)) == "2024-07-06 00:00"
    fx = calendars.get(FX)
    assert iso(fx.target_time("1h", t("2024-01-05 22:00"), 1)) == "2024-01-07 23:00"
    assert fx.bars_between("1h", t("2024-01-05 22:00"), t("2024-01-07 23:00")) == 1
    with pytest.raises(ValueError, match="horizon"):
        fx.target_time("1h", t("2024-01-05 22:00"), 0)


def test_latest_slot_and_is_slot() -> None:
    nyse = calendars.get("XNYS")
    # Saturday noon: the latest closed bar is Friday's last.
    assert iso(nyse.latest_slot("1h", t("2024-03-09 12:00")) or 0) == "2024-03-08 21:00"
    assert nyse.is_slot("1h", t("2024-03-08 21:00"))
    assert not nyse.is_slot("1h", t("2024-03-09 12:00"))


def test_several_calendars_share_only_common_bars() -> None:
    both = calendars.joint(["XNYS", FX])
    # A July Friday: NYSE's bars (14:00-20:00 UTC) all fall in the FX week.
    got = both.slots("1h", t("2024-07-05"), t("2024-07-06"))
    assert [iso(int(s)) for s in got] == [f"2024-07-05 {h}:00" for h in range(14, 21)]
    assert calendars.joint([FX, FX]) is calendars.get(FX)


def test_periods_per_year_count_the_calendar() -> None:
    """The mean of 2010-2019: 3,652 days, 2,608 weekdays; NYSE was closed on 92 of those
    weekdays: 89 holidays, Hurricane Sandy (2012-10-29 and 30) and President Bush's funeral
    (2018-12-05)."""
    days = (date(2020, 1, 1) - date(2010, 1, 1)).days
    weekdays = sum(1 for i in range(days) if (date(2010, 1, 1) + timedelta(i)).weekday() < 5)
    assert (days, weekdays) == (3652, 2608)
    nyse = calendars.get("XNYS")
    assert nyse.periods_per_year("1d") == (weekdays - 92) / 10
    assert calendars.get(CRYPTO).periods_per_year("1h") == 24 * days / 10
    assert calendars.get(CRYPTO).periods_per_year("1d") == days / 10
    # FX: every weekday is a 24-hour session.
    assert calendars.get(FX).periods_per_year("1h") == 24 * weekdays / 10


@pytest.mark.parametrize(
    ("symbol", "calendar"),
    [("EURUSD", FX), ("USDJPY", FX), ("XAUUSD", FX), ("GOOG", "XNYS"), ("BTC-USD", CRYPTO),
     ("ETHUSDT", CRYPTO), ("SPY", "XNYS"), ("EURUSD.X", FX), ("EUR_USD", FX),
     ("EURUSD-1A2B3C4D", FX), ("BTC", "XNYS"), ("EURUSDT", "XNYS")],
)  # fmt: skip
def test_default_calendars(symbol: str, calendar: str) -> None:
    assert calendars.default_for(symbol) == calendar


def test_unknown_calendars_are_refused() -> None:
    with pytest.raises(UnknownCalendar):
        calendars.get("NOPE")
    with pytest.raises(UnknownCalendar):
        calendars.get("xnys")
    assert {"XNYS", "XLON", FX, CRYPTO} <= set(calendars.names())
