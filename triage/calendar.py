"""Business calendars: when the helpdesk is open, and how much open time lies between instants.

Every computation runs on UTC instants. Python subtracts two datetimes that share one
``ZoneInfo`` as naive wall times, which is wrong across a DST switch, so each local opening
and closing is converted to UTC first and all arithmetic happens there. A day's window is
``[open, close)`` local time: an instant exactly at closing time is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

log = logging.getLogger(__name__)

MINUTES_PER_DAY = 24 * 60
# A calendar with no open day would loop forever; ten years of closed days means a bad config.
_MAX_DAYS_SCANNED = 3660

# A pause of the SLA clock (work order waiting on the client); ``end`` None = still paused.
Pause = tuple[datetime, datetime | None]


@lru_cache(maxsize=512)
def _holiday_dates(country: str, year: int) -> frozenset[date]:
    """Holidays of one year, observed days included (July 4 2026, a Saturday -> Friday July 3)."""
    return frozenset(holidays.country_holidays(country, years=year, observed=True).keys())


def check_holiday_country(country: str) -> None:
    """Raise ValueError for a country code the ``holidays`` package does not know."""
    try:
        holidays.country_holidays(country)
    except NotImplementedError as exc:
        raise ValueError(f"unknown holiday country {country!r}") from exc


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"instant {t.isoformat()} has no UTC offset")
    return t.astimezone(UTC)


@dataclass(frozen=True)
class BusinessCalendar:
    """Open hours on given ISO weekdays (Monday=1) in one zone, minus holidays and closed days.

    ``open_minute``/``close_minute`` are minutes after local midnight; ``close_minute`` may be
    1440 (midnight ending the day), which with all seven weekdays gives a 24x7 calendar.
    """

    name: str
    tz: ZoneInfo
    open_minute: int = 8 * 60
    close_minute: int = 20 * 60
    weekdays: frozenset[int] = frozenset({1, 2, 3, 4, 5})
    holiday_country: str | None = None
    extra_closed: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not 0 <= self.open_minute < self.close_minute <= MINUTES_PER_DAY:
            raise ValueError("opening time must be before closing time, within one day")
        if not self.weekdays or not self.weekdays <= set(range(1, 8)):
            raise ValueError("weekdays must be a non-empty set of ISO weekdays 1..7")

    @classmethod
    def always_open(cls, tz: ZoneInfo | None = None, name: str = "24x7") -> BusinessCalendar:
        """24 hours a day, every day, no holidays (contract clients, and wall-clock clocks)."""
        return cls(name, tz or ZoneInfo("UTC"), 0, MINUTES_PER_DAY, frozenset(range(1, 8)))

    @property
    def day_length(self) -> timedelta:
        """Nominal open time of one business day (12 h for 08:00-20:00)."""
        return timedelta(minutes=self.close_minute - self.open_minute)

    # -- days ---------------------------------------------------------------------------

    def is_business_day(self, d: date) -> bool:
        if d.isoweekday() not in self.weekdays or d in self.extra_closed:
            return False
        return not (self.holiday_country and d in _holiday_dates(self.holiday_country, d.year))

    def local_date(self, t: datetime) -> date:
        return _utc(t).astimezone(self.tz).date()

    def _local(self, d: date, minute: int) -> datetime:
        # 24:00 is the next day's midnight; zoneinfo resolves a time inside a DST gap with
        # the offset before the switch, which lands just after the gap.
        day, minute = (d + timedelta(days=1), 0) if minute == MINUTES_PER_DAY else (d, minute)
        local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=self.tz)
        return local.astimezone(UTC)

    def window(self, d: date) -> tuple[datetime, datetime] | None:
        """The UTC ``[open, close)`` of local date ``d``, or None when closed all day."""
        if not self.is_business_day(d):
            return None
        return self._local(d, self.open_minute), self._local(d, self.close_minute)

    def _windows_from(self, d: date) -> Iterator[tuple[datetime, datetime]]:
        for i in range(_MAX_DAYS_SCANNED):
            w = self.window(d + timedelta(days=i))
            if w is not None:
                yield w
        raise RuntimeError(f"calendar {self.name!r}: no business day in {_MAX_DAYS_SCANNED} days")

    # -- instants -----------------------------------------------------------------------

    def is_open(self, t: datetime) -> bool:
        w = self.window(self.local_date(t))
        return w is not None and w[0] <= _utc(t) < w[1]

    def next_open(self, t: datetime) -> datetime:
        """``t`` itself when open, else the next opening (UTC)."""
        u = _utc(t)
        for start, end in self._windows_from(self.local_date(u) - timedelta(days=1)):
            if u < end:
                return max(u, start)
        raise AssertionError("unreachable")  # _windows_from raises first

    def business_day_close(self, t: datetime, n: int) -> datetime:
        """Closing time of the ``n``-th business day strictly after the local date of ``t``."""
        if n < 1:
            raise ValueError("n must be at least 1")
        d = self.local_date(t)
        for i in range(1, _MAX_DAYS_SCANNED):
            day = d + timedelta(days=i)
            if self.is_business_day(day):
                n -= 1
                if n == 0:
                    return self._local(day, self.close_minute)
        raise RuntimeError(f"calendar {self.name!r}: no business day in {_MAX_DAYS_SCANNED} days")

    def add_business_time(
        self, start: datetime, amount: timedelta, pauses: Sequence[Pause] = ()
    ) -> datetime:
        """The instant when ``amount`` of open time (not paused) has passed since ``start``.

        Ends exactly at a closing time when the amount fits the day (12 h from 08:00 is 20:00
        that day, not 08:00 the next). Every pause must have an end here.
        """
        if amount < timedelta(0):
            raise ValueError("amount must not be negative")
        u = _utc(start)
        merged = _merge_pauses(pauses, horizon=None)
        remaining = amount
        for w_start, w_end in self._windows_from(self.local_date(u) - timedelta(days=1)):
            if w_end <= u:
                continue
            for a, b in _subtract((max(u, w_start), w_end), merged):
                if b - a >= remaining:
                    return a + remaining
                remaining -= b - a
        raise AssertionError("unreachable")

    def business_time_between(
        self, a: datetime, b: datetime, pauses: Sequence[Pause] = ()
    ) -> timedelta:
        """Open time in ``[a, b)`` not covered by a pause; negative when ``b`` is before ``a``.

        A pause without an end lasts until ``b`` (the clock is still stopped).
        """
        ua, ub = _utc(a), _utc(b)
        if ub < ua:
            return -self.business_time_between(ub, ua, pauses)
        merged = _merge_pauses(pauses, horizon=ub)
        total = timedelta(0)
        d = self.local_date(ua) - timedelta(days=1)
        last = self.local_date(ub)
        while d <= last:
            w = self.window(d)
            d += timedelta(days=1)
            if w is None:
                continue
            lo, hi = max(ua, w[0]), min(ub, w[1])
            if lo < hi:
                total += sum((y - x for x, y in _subtract((lo, hi), merged)), timedelta(0))
        return total


def _merge_pauses(
    pauses: Iterable[Pause], horizon: datetime | None
) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    spans = []
    for begin, end in pauses:
        if end is None:
            if horizon is None:
                raise ValueError("a pause without an end has no due date; end it first")
            end = max(horizon, _utc(begin))
        spans.append((_utc(begin), _utc(end)))
    for s, e in sorted(spans):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _subtract(
    span: tuple[datetime, datetime], cuts: list[tuple[datetime, datetime]]
) -> Iterator[tuple[datetime, datetime]]:
    """``span`` minus the sorted, disjoint ``cuts``, as sorted sub-spans (possibly empty)."""
    lo, hi = span
    for s, e in cuts:
        if e <= lo:
            continue
        if s >= hi:
            break
        if s > lo:
            yield lo, s
        lo = max(lo, e)
        if lo >= hi:
            return
    if lo < hi:
        yield lo, hi


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip


def humanize_due(due: datetime, tz: tzinfo | str) -> str:
    """``by 9:00 AM EST on Monday, November 30`` for acknowledgments (locale-independent)."""
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    local = _utc(due).astimezone(zone)
    hour12 = local.hour % 12 or 12
    ampm = "AM" if local.hour < 12 else "PM"
    return (
        f"by {hour12}:{local.minute:02d} {ampm} {local.tzname()} on "
        f"{_WEEKDAYS[local.weekday()]}, {_MONTHS[local.month - 1]} {local.day}"
    )
