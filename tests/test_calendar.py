"""Business calendar: openings, holidays (observed days), DST switches, business time, pauses."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triage.calendar import BusinessCalendar, humanize_due

NY = ZoneInfo("America/New_York")
H = timedelta(hours=1)


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY).astimezone(UTC)


@pytest.fixture(scope="module")
def std() -> BusinessCalendar:
    return BusinessCalendar(
        "standard",
        NY,
        8 * 60,
        20 * 60,
        frozenset(range(1, 6)),
        "US",
        frozenset({date(2026, 12, 24)}),
    )


@pytest.fixture(scope="module")
def always() -> BusinessCalendar:
    return BusinessCalendar.always_open(NY)


# -- business days ------------------------------------------------------------------------

CLOSED_DAYS = [
    date(2026, 7, 3),  # Independence Day observed (July 4 2026 is a Saturday)
    date(2026, 11, 26),  # Thanksgiving
    date(2026, 12, 24),  # extra closed day from config
    date(2026, 12, 25),
    date(2027, 6, 18),  # Juneteenth observed (June 19 2027 is a Saturday)
    date(2027, 7, 5),  # Independence Day observed (July 4 2027 is a Sunday)
    date(2027, 12, 24),  # Christmas observed
    date(2027, 12, 31),  # New Year's Day 2028 observed, in 2027
    date(2026, 11, 28),  # Saturday
    date(2026, 11, 29),  # Sunday
]
OPEN_DAYS = [date(2026, 7, 2), date(2026, 7, 6), date(2026, 11, 27), date(2027, 12, 30)]


@pytest.mark.parametrize("d", CLOSED_DAYS)
def test_closed_days(std, d):
    assert not std.is_business_day(d)
    assert std.window(d) is None


@pytest.mark.parametrize("d", OPEN_DAYS)
def test_open_days(std, d):
    assert std.is_business_day(d)


def test_24x7_has_no_holidays(always):
    assert all(always.is_business_day(d) for d in CLOSED_DAYS)


# -- next opening ---------------------------------------------------------------------------

NEXT_OPEN = [
    # (received, clock start), all hand-derived from 08:00-20:00 Mon-Fri New York
    (ny(2026, 11, 24, 7, 59), ny(2026, 11, 24, 8)),  # before opening
    (ny(2026, 11, 24, 8), ny(2026, 11, 24, 8)),  # exactly at opening
    (ny(2026, 11, 24, 19, 59, 59), ny(2026, 11, 24, 19, 59, 59)),  # last open second
    (ny(2026, 11, 24, 20), ny(2026, 11, 25, 8)),  # exactly at closing: closed
    (ny(2026, 11, 25, 21), ny(2026, 11, 27, 8)),  # evening before Thanksgiving
    (ny(2026, 11, 27, 20, 30), ny(2026, 11, 30, 8)),  # Friday evening
    (ny(2026, 11, 28, 12), ny(2026, 11, 30, 8)),  # weekend
    (ny(2026, 7, 2, 21), ny(2026, 7, 6, 8)),  # observed July 4 on Friday July 3
    (ny(2026, 12, 23, 20, 1), ny(2026, 12, 28, 8)),  # extra closed 24th, Christmas, weekend
    (ny(2026, 3, 7, 9), ny(2026, 3, 9, 8)),  # across spring-forward Sunday (EST -> EDT)
    (ny(2026, 10, 31, 9), ny(2026, 11, 2, 8)),  # across fall-back Sunday (EDT -> EST)
    (datetime(2026, 11, 24, 13, 0, tzinfo=UTC), ny(2026, 11, 24, 8)),  # given in UTC
    (datetime.fromisoformat("2026-11-25T02:00:00+01:00"), ny(2026, 11, 25, 8)),  # Paris
]


@pytest.mark.parametrize(("received", "expected"), NEXT_OPEN)
def test_next_open(std, received, expected):
    assert std.next_open(received) == expected


def test_dst_windows_keep_local_hours(std):
    # 08:00 local is 13:00Z in winter and 12:00Z in summer, on both sides of each switch.
    assert std.window(date(2026, 3, 6)) == (ny(2026, 3, 6, 8), ny(2026, 3, 6, 20))
    assert std.window(date(2026, 3, 6))[0].hour == 13
    assert std.window(date(2026, 3, 9))[0].hour == 12
    assert std.window(date(2026, 10, 30))[0].hour == 12
    assert std.window(date(2026, 11, 2))[0].hour == 13
    assert std.window(date(2027, 3, 12))[0].hour == 13
    assert std.window(date(2027, 3, 15))[0].hour == 12
    assert std.window(date(2027, 11, 5))[0].hour == 12
    assert std.window(date(2027, 11, 8))[0].hour == 13


# -- adding and measuring business time ------------------------------------------------------

ADD = [
    (ny(2026, 11, 27, 19, 30), H, ny(2026, 11, 30, 8, 30)),  # Friday evening
    (ny(2026, 11, 24, 8), 12 * H, ny(2026, 11, 24, 20)),  # fits the day: ends at closing
    (ny(2026, 11, 24, 20), H, ny(2026, 11, 25, 9)),  # exactly at closing
    (ny(2026, 11, 25, 19), 2 * H, ny(2026, 11, 27, 9)),  # over Thanksgiving
    (ny(2026, 3, 6, 19), 2 * H, ny(2026, 3, 9, 9)),  # spring forward 2026
    (ny(2026, 10, 30, 19), 2 * H, ny(2026, 11, 2, 9)),  # fall back 2026
    (ny(2027, 3, 12, 19, 45), 12 * H, ny(2027, 3, 15, 19, 45)),  # spring forward 2027
    (ny(2027, 11, 5, 19, 15), 12 * H, ny(2027, 11, 8, 19, 15)),  # fall back 2027
    (ny(2026, 7, 2, 19, 30), H, ny(2026, 7, 6, 8, 30)),  # observed July 4
    (ny(2026, 11, 28, 10), timedelta(0), ny(2026, 11, 30, 8)),  # zero from a closed instant
]


@pytest.mark.parametrize(("start", "amount", "expected"), ADD)
def test_add_business_time(std, start, amount, expected):
    assert std.add_business_time(start, amount) == expected
    assert std.business_time_between(start, expected) == amount


def test_business_time_between_across_dst_is_real_time(std):
    # Friday 19:00 EST to Monday 09:00 EDT: 1 h Friday + 1 h Monday, not off by the shift.
    assert std.business_time_between(ny(2026, 3, 6, 19), ny(2026, 3, 9, 9)) == 2 * H
    assert std.business_time_between(ny(2026, 3, 9, 9), ny(2026, 3, 6, 19)) == -2 * H
    # A whole working week of November 2026 (Thanksgiving closed): 4 days x 12 h.
    assert std.business_time_between(ny(2026, 11, 23), ny(2026, 11, 30)) == 48 * H


@pytest.mark.parametrize(
    ("day", "hours"),
    [
        (date(2026, 3, 8), 23),
        (date(2026, 11, 1), 25),
        (date(2027, 3, 14), 23),
        (date(2027, 11, 7), 25),
    ],
)
def test_24x7_day_length_on_dst_sundays(always, day, hours):
    start, end = always.window(day)
    assert end - start == hours * H
    assert always.business_time_between(start, end) == hours * H


def test_24x7_adds_elapsed_time_across_dst(always):
    # Sat 2026-03-07 12:00 EST + 24 h = Sun 13:00 EDT (the skipped hour is not open time).
    assert always.add_business_time(ny(2026, 3, 7, 12), 24 * H) == ny(2026, 3, 8, 13)
    # Sun 2026-11-01 00:00 EDT + 12 h = 11:00 EST (01:00 happens twice).
    assert always.add_business_time(ny(2026, 11, 1, 0), 12 * H) == ny(2026, 11, 1, 11)


BUSINESS_DAY_CLOSE = [
    (ny(2026, 11, 24, 10), 1, ny(2026, 11, 25, 20)),
    (ny(2026, 11, 24, 7), 1, ny(2026, 11, 25, 20)),  # before opening still counts from the date
    (ny(2026, 11, 25, 20, 30), 1, ny(2026, 11, 27, 20)),  # after closing, Thanksgiving skipped
    (ny(2026, 11, 28, 10), 1, ny(2026, 11, 30, 20)),  # Saturday
    (ny(2026, 12, 23, 15), 1, ny(2026, 12, 28, 20)),  # extra closed 24th + Christmas
    (ny(2027, 12, 30, 9), 5, ny(2028, 1, 7, 20)),  # Dec 31 2027 observed New Year
    (ny(2026, 3, 5, 12), 2, ny(2026, 3, 9, 20)),  # ends after the spring-forward weekend
    # local date is New York's: 02:00 Paris on the 25th is 20:00 on the 24th in New York
    (datetime.fromisoformat("2026-11-25T02:00:00+01:00"), 1, ny(2026, 11, 25, 20)),
]


@pytest.mark.parametrize(("received", "n", "expected"), BUSINESS_DAY_CLOSE)
def test_business_day_close(std, received, n, expected):
    assert std.business_day_close(received, n) == expected


def test_24x7_business_day_ends_at_midnight(always):
    assert always.business_day_close(ny(2026, 10, 31, 12), 1) == ny(2026, 11, 2, 0)


# -- pauses ------------------------------------------------------------------------------------


def test_pause_is_not_counted(std):
    start, end = ny(2026, 11, 30, 8), ny(2026, 11, 30, 20)
    pauses = [
        (ny(2026, 11, 30, 10), ny(2026, 11, 30, 12)),
        (ny(2026, 11, 30, 11), ny(2026, 11, 30, 13)),
    ]
    # overlapping pauses merge into 10:00-13:00: 12 h open - 3 h paused
    assert std.business_time_between(start, end, pauses) == 9 * H
    # 12 h of unpaused open time from Monday 08:00: 9 h Monday, 3 h Tuesday -> 11:00.
    assert std.add_business_time(start, 12 * H, pauses) == ny(2026, 12, 1, 11)


def test_open_pause_lasts_until_the_end(std):
    start, now = ny(2026, 11, 30, 8), ny(2026, 12, 1, 9)
    assert std.business_time_between(start, now, [(ny(2026, 11, 30, 16), None)]) == 8 * H
    with pytest.raises(ValueError, match="without an end"):
        std.add_business_time(start, H, [(ny(2026, 11, 30, 16), None)])


def test_pause_over_closed_time_changes_nothing(std):
    weekend = [(ny(2026, 11, 28, 0), ny(2026, 11, 30, 0))]
    a, b = ny(2026, 11, 27, 19), ny(2026, 11, 30, 9)
    assert std.business_time_between(a, b, weekend) == std.business_time_between(a, b) == 2 * H


def test_rejects_naive_instants_and_bad_hours(std):
    with pytest.raises(ValueError, match="UTC offset"):
        std.next_open(datetime(2026, 11, 24, 9))
    with pytest.raises(ValueError):
        BusinessCalendar("bad", NY, 20 * 60, 8 * 60)
    with pytest.raises(ValueError):
        BusinessCalendar("bad", NY, weekdays=frozenset())


# -- humanize ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due", "text"),
    [
        (ny(2026, 11, 30, 9), "by 9:00 AM EST on Monday, November 30"),
        (ny(2026, 7, 6, 19, 30), "by 7:30 PM EDT on Monday, July 6"),
        (ny(2026, 11, 2, 0), "by 12:00 AM EST on Monday, November 2"),
        (ny(2026, 11, 2, 12, 5), "by 12:05 PM EST on Monday, November 2"),
    ],
)
def test_humanize_due(due, text):
    assert humanize_due(due, NY) == text
    assert humanize_due(due, "America/New_York") == text


# -- properties --------------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2029, 1, 1), timezones=st.just(UTC)
)
amounts = st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=300))


@settings(deadline=None, max_examples=200)
@given(t=instants)
def test_next_open_is_open_and_not_before(std, t):
    start = std.next_open(t)
    assert start >= t
    assert std.is_open(start)
    assert std.business_time_between(t, start) == timedelta(0)


@settings(deadline=None, max_examples=200)
@given(t=instants, amount=amounts)
def test_add_then_measure_round_trips(std, always, t, amount):
    for cal in (std, always):
        due = cal.add_business_time(t, amount)
        assert due >= t
        assert cal.business_time_between(t, due) == amount


@settings(deadline=None, max_examples=200)
@given(t1=instants, t2=instants, amount=amounts, n=st.integers(1, 12))
def test_monotone_in_start(std, t1, t2, amount, n):
    t1, t2 = min(t1, t2), max(t1, t2)
    assert std.next_open(t1) <= std.next_open(t2)
    assert std.add_business_time(t1, amount) <= std.add_business_time(t2, amount)
    assert std.business_day_close(t1, n) <= std.business_day_close(t2, n)


@settings(deadline=None, max_examples=200)
@given(t=instants, amount=amounts, p=instants, length=amounts)
def test_paused_time_adds_up(std, t, amount, p, length):
    pauses = [(p, p + length)]
    due = std.add_business_time(t, amount, pauses)
    assert std.business_time_between(t, due, pauses) == amount
    # paused open time inside [t, due) plus the counted time is all open time in [t, due)
    paused = std.business_time_between(max(t, p), min(due, p + length)) if p < due else timedelta(0)
    assert amount + max(paused, timedelta(0)) == std.business_time_between(t, due)
