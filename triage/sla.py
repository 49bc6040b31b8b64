"""The ITX SLA policy (``data/sla_policy.toml``) and the due dates it sets for a request.

The policy is data: calendars, the email channel's response target, priorities and one table
per request type. Loading validates everything once and names the offending line, because
``tomllib`` reports line numbers only for syntax errors. ``SlaPolicy.due`` is then a pure
function of (type, priority, contract, receipt instant); no clock is read anywhere here.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from classifiers.types import REQUEST_TYPES
from triage.calendar import MINUTES_PER_DAY, BusinessCalendar, Pause, check_holiday_country
from triage.messages import DueDates
from triage.resources import DATA_DIR

log = logging.getLogger(__name__)

DEFAULT_POLICY_PATH = DATA_DIR / "sla_policy.toml"
POLICY_ENV = "TRIAGE_SLA_POLICY"
UNITS = ("business_hours", "business_days", "hours")
STANDARD = "standard"
_CALENDAR_KEYS = ("timezone", "open", "close", "weekdays", "holidays", "extra_closed")

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {
    **{d: i for i, d in enumerate(_DAYS, 1)},
    **{d[:3]: i for i, d in enumerate(_DAYS, 1)},
}


class SlaPolicyError(ValueError):
    """The policy file is unusable; the message starts with ``file:line:``."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True)
class Target:
    """One SLA target in the units of docs/design.md: business_hours, business_days or hours."""

    unit: str
    amount: float

    def __str__(self) -> str:
        n = int(self.amount) if float(self.amount).is_integer() else self.amount
        return f"{n} {self.unit.replace('_', ' ')}"

    def in_words(self) -> str:
        """The target as a client reads it: ``within 4 hours``, ``the end of the next
        business day`` (a business-day target ends at closing time, not after 24 hours)."""
        n = int(self.amount) if float(self.amount).is_integer() else self.amount
        if self.unit == "business_days" and n == 1:
            return "the end of the next business day"
        noun = {"hours": "hour", "business_hours": "business hour",
                "business_days": "business day"}[self.unit]
        return f"within {n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class TypeRule:
    name: str
    priority: str  # the type's default priority
    meaning: str
    callback: Target | None
    fulfil: Target | None  # ``restore`` for website_down lands here
    milestones: tuple[tuple[str, Target], ...]


@dataclass(frozen=True)
class PriorityRule:
    name: str
    meaning: str
    fulfil: Target | None  # None: scheduled with the client


@dataclass(frozen=True)
class ClockState:
    """An SLA clock at ``now``: open time used and left, and the due date pauses pushed out."""

    elapsed: timedelta
    remaining: timedelta  # negative when overdue
    fraction_used: float  # 0.75 = 75 % of the target used; above 1 when overdue
    due: datetime  # the original due, moved later by the paused open time


def clock_state(
    start: datetime,
    due: datetime,
    now: datetime,
    calendar: BusinessCalendar,
    pauses: Sequence[Pause] = (),
) -> ClockState:
    """Measure an SLA clock in ``calendar`` open time (pass a 24x7 calendar for wall time).

    The target is the open time from ``start`` to ``due``; time inside ``pauses`` (work order
    waiting on the client; an unended pause lasts until ``now``) does not count against it.
    """
    target = calendar.business_time_between(start, due)
    closed = close_pauses(pauses, now)
    elapsed = max(calendar.business_time_between(start, now, closed), timedelta(0))
    fraction = elapsed / target if target > timedelta(0) else (1.0 if elapsed else 0.0)
    return ClockState(elapsed, target - elapsed, fraction,
                      moved_due(start, due, calendar, closed, target))


def close_pauses(pauses: Sequence[Pause], now: datetime) -> list[tuple[datetime, datetime]]:
    """Pauses with an end: one still running lasts until ``now``."""
    return [(b, e if e is not None else max(now, b)) for b, e in pauses]


def moved_due(
    start: datetime,
    due: datetime,
    calendar: BusinessCalendar,
    closed: Sequence[Pause],
    target: timedelta | None = None,
) -> datetime:
    """The due date after ``closed`` pauses (all ended; see ``close_pauses``) pushed it out
    by the open time they covered; never earlier than ``due`` itself."""
    if target is None:
        target = calendar.business_time_between(start, due)
    return max(calendar.add_business_time(start, target, closed), due.astimezone(UTC))


@dataclass(frozen=True)
class SlaPolicy:
    """A loaded, validated policy. Build it with ``load_policy``."""

    source: str
    calendars: Mapping[str, BusinessCalendar]  # contract name -> calendar
    email_response: Target
    priority_rules: Mapping[str, PriorityRule]
    type_rules: Mapping[str, TypeRule]

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.type_rules)

    @property
    def priorities(self) -> tuple[str, ...]:
        return tuple(self.priority_rules)

    @property
    def contracts(self) -> tuple[str, ...]:
        return tuple(self.calendars)

    def calendar(self, contract: str = STANDARD) -> BusinessCalendar:
        try:
            return self.calendars[contract]
        except KeyError:
            raise ValueError(
                f"unknown contract {contract!r} (expected {_one_of(self.calendars)})"
            ) from None

    def rule(self, request_type: str) -> TypeRule:
        try:
            return self.type_rules[request_type]
        except KeyError:
            raise ValueError(
                f"unknown request type {request_type!r} (expected {_one_of(self.type_rules)})"
            ) from None

    def default_priority(self, request_type: str) -> str:
        return self.rule(request_type).priority

    def priority_meaning(self, priority: str) -> str:
        return self._priority(priority).meaning

    def _priority(self, priority: str) -> PriorityRule:
        try:
            return self.priority_rules[priority]
        except KeyError:
            raise ValueError(
                f"unknown priority {priority!r} (expected {_one_of(self.priority_rules)})"
            ) from None

    def fulfil_target(self, request_type: str, priority: str | None) -> Target | None:
        """The type's own target at its default priority, else the priority's target."""
        rule = self.rule(request_type)
        if priority is None or priority == rule.priority:
            return rule.fulfil
        return self._priority(priority).fulfil

    def fulfil_in_words(self, request_type: str, priority: str | None) -> str | None:
        """``fulfil_target`` as the acknowledgment words it; None without a target."""
        target = self.fulfil_target(request_type, priority)
        return None if target is None else target.in_words()

    def targets(self, request_type: str, priority: str | None) -> dict[str, Target | None]:
        """The targets behind ``due`` (callback, response, fulfil), e.g. to label SLA clocks."""
        return {
            "callback": self.rule(request_type).callback,
            "response": self.email_response,
            "fulfil": self.fulfil_target(request_type, priority),
        }

    def clock_calendar(self, target: Target, contract: str = STANDARD) -> BusinessCalendar:
        """The calendar to measure a clock on: wall time for ``hours``, else the contract's."""
        cal = self.calendar(contract)
        return BusinessCalendar.always_open(cal.tz, "wall") if target.unit == "hours" else cal

    def due(
        self,
        request_type: str,
        priority: str | None,
        contract: str,
        received: datetime,
    ) -> DueDates:
        """Due dates (UTC) for a request received at ``received`` (any zone, offset required)."""
        rule = self.rule(request_type)
        prio = rule.priority if priority is None else priority
        self._priority(prio)
        cal = self.calendar(contract)
        received = _aware(received).astimezone(UTC)
        start = cal.next_open(received)

        def at(target: Target) -> datetime:
            return _due_at(target, cal, received, start)

        own = prio == rule.priority
        fulfil = self.fulfil_target(request_type, prio)
        return DueDates(
            clock_start=start,
            response_due=at(self.email_response),
            callback_due=at(rule.callback) if rule.callback else None,
            fulfil_due=at(fulfil) if fulfil else None,
            milestones=tuple((n, at(t)) for n, t in rule.milestones) if own else (),
        )


def _due_at(target: Target, cal: BusinessCalendar, received: datetime, start: datetime) -> datetime:
    if target.unit == "business_hours":
        return cal.add_business_time(start, timedelta(hours=target.amount))
    if target.unit == "business_days":
        return cal.business_day_close(received, int(target.amount))
    return start + timedelta(hours=target.amount)  # "hours": wall-clock (elapsed) time


def _aware(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"instant {t.isoformat()} has no UTC offset")
    return t


def _one_of(names: Iterable[str]) -> str:
    return ", ".join(names)


# -- loading -----------------------------------------------------------------------------


def load_policy(
    path: Path | str | None = None, *, required_types: Iterable[str] = REQUEST_TYPES
) -> SlaPolicy:
    """Read and validate a policy file (default: ``$TRIAGE_SLA_POLICY`` or data/sla_policy.toml).

    Raises ``SlaPolicyError`` naming the file and line of the first problem.
    """
    if path is None:
        path = os.environ.get(POLICY_ENV) or DEFAULT_POLICY_PATH
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SlaPolicyError(str(p), 0, f"cannot read policy: {exc.strerror}") from exc
    policy = parse_policy(text, source=str(p), required_types=required_types)
    log.debug("SLA policy %s: %d types, contracts %s", p, len(policy.types), policy.contracts)
    return policy


def parse_policy(
    text: str, *, source: str = "<policy>", required_types: Iterable[str] = REQUEST_TYPES
) -> SlaPolicy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise SlaPolicyError(source, int(m.group(1)) if m else 0, f"bad TOML: {exc}") from exc
    return _Loader(text, source).policy(doc, tuple(required_types))


_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_HEADER = re.compile(rf"^\[\[?\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """First line of each table header and key assignment, by full dotted path."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for no, raw in enumerate(text.splitlines(), start=1):
        s = raw.strip()
        if m := _HEADER.match(s):
            table = _split_key(m.group(1))
            for i in range(1, len(table) + 1):
                lines.setdefault(table[:i], no)
        elif m := _ASSIGN.match(s):
            key = table + _split_key(m.group(1))
            for i in range(len(table) + 1, len(key) + 1):
                lines.setdefault(key[:i], no)
    return lines


class _Loader:
    """Turns the TOML document into an ``SlaPolicy``, failing with the line of the bad key."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines = _key_lines(text)

    def fail(
        self, path: Sequence[str], message: str, at: Sequence[str] | None = None
    ) -> SlaPolicyError:
        """An error for ``path``, located at the line of ``at`` (default ``path``) or its parent."""
        key = tuple(path if at is None else at)
        while key and key not in self.lines:
            key = key[:-1]
        line = self.lines.get(key, 1) if key else 1
        where = ".".join(path)
        return SlaPolicyError(self.source, line, f"{where}: {message}" if where else message)

    def table(self, value: object, path: Sequence[str], allowed: Iterable[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "must be a table")
        allowed = set(allowed)
        for key in value:
            if key not in allowed:
                raise self.fail(
                    (*path, key), f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})"
                )
        return value

    def policy(self, doc: dict[str, Any], required: tuple[str, ...]) -> SlaPolicy:
        self.table(doc, (), ("calendar", "email", "priorities", "types"))
        for key in ("calendar", "email", "priorities", "types"):
            if key not in doc:
                raise self.fail((), f"missing [{key}] table")
        calendars = self.calendars(doc["calendar"])
        email = self.table(doc["email"], ("email",), ("response",))
        if "response" not in email:
            raise self.fail(("email",), "missing key 'response'")
        response = self.target(email["response"], ("email", "response"))
        prios = self.table(doc["priorities"], ("priorities",), doc["priorities"])
        if not prios:
            raise self.fail(("priorities",), "no priority defined")
        priority_rules = {n: self.priority(v, ("priorities", n)) for n, v in prios.items()}
        types = self.table(doc["types"], ("types",), doc["types"])
        type_rules = {n: self.type_rule(n, v, priority_rules) for n, v in types.items()}
        for name in required:
            if name not in type_rules:
                raise self.fail(
                    ("types",), f"no [types.{name}] table (every request type needs one)"
                )
        return SlaPolicy(self.source, calendars, response, priority_rules, type_rules)

    def calendars(self, value: object) -> dict[str, BusinessCalendar]:
        path = ("calendar",)
        if not isinstance(value, dict):
            raise self.fail(path, "must be a table")
        base = {k: v for k, v in value.items() if not isinstance(v, dict)}
        for key in _CALENDAR_KEYS:
            if isinstance(value.get(key), dict):
                raise self.fail((*path, key), "must be a value, not a table")
        out = {STANDARD: self.calendar(STANDARD, base, path, None)}
        for name, sub in value.items():
            if isinstance(sub, dict):
                # A variant inherits only the zone: by default it is open around the clock.
                out[name] = self.calendar(name, sub, (*path, name), out[STANDARD].tz)
        return out

    def calendar(
        self, name: str, cfg: dict[str, Any], path: tuple[str, ...], inherit_tz: ZoneInfo | None
    ) -> BusinessCalendar:
        self.table(cfg, path, _CALENDAR_KEYS)
        if "timezone" in cfg:
            tz = self.zone(cfg["timezone"], (*path, "timezone"))
        elif inherit_tz is not None:
            tz = inherit_tz
        else:
            raise self.fail(path, "missing key 'timezone'")
        variant = inherit_tz is not None
        open_m = self.clock(cfg.get("open", "00:00" if variant else None), (*path, "open"))
        close_m = self.clock(cfg.get("close", "24:00" if variant else None), (*path, "close"))
        if open_m >= close_m:
            raise self.fail((*path, "close"), "closing time must be after opening time")
        days = cfg.get("weekdays", list(range(1, 8)) if variant else None)
        weekdays = self.weekdays(days, (*path, "weekdays"))
        country = cfg.get("holidays", "")
        if not isinstance(country, str):
            raise self.fail((*path, "holidays"), 'must be a country code such as "US" or ""')
        if country:
            try:
                check_holiday_country(country)
            except ValueError as exc:
                raise self.fail((*path, "holidays"), str(exc)) from None
        extra = self.dates(cfg.get("extra_closed", []), (*path, "extra_closed"))
        return BusinessCalendar(name, tz, open_m, close_m, weekdays, country or None, extra)

    def zone(self, value: object, path: Sequence[str]) -> ZoneInfo:
        if not isinstance(value, str) or not value:
            raise self.fail(path, "must be an IANA zone name such as 'America/New_York'")
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(path, f"unknown time zone {value!r}") from None

    def clock(self, value: object, path: Sequence[str]) -> int:
        if value is None:
            raise self.fail(path, "missing (HH:MM)")
        if isinstance(value, time):
            return value.hour * 60 + value.minute
        m = re.fullmatch(r"(\d{2}):(\d{2})", value) if isinstance(value, str) else None
        if m is None:
            raise self.fail(path, f"{value!r} is not a time of day HH:MM")
        minutes = int(m.group(1)) * 60 + int(m.group(2))
        if int(m.group(2)) > 59 or minutes > MINUTES_PER_DAY:
            raise self.fail(path, f"{value!r} is not a time of day between 00:00 and 24:00")
        return minutes

    def weekdays(self, value: object, path: Sequence[str]) -> frozenset[int]:
        if not isinstance(value, list) or not value:
            raise self.fail(path, "must be a non-empty list of ISO weekdays 1..7 or day names")
        out = set()
        for d in value:
            if isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7:
                out.add(d)
            elif isinstance(d, str) and d.lower() in _DAY_NAMES:
                out.add(_DAY_NAMES[d.lower()])
            else:
                raise self.fail(path, f"{d!r} is not a weekday (1=Monday..7=Sunday, or 'mon')")
        return frozenset(out)

    def dates(self, value: object, path: Sequence[str]) -> frozenset[date]:
        if not isinstance(value, list):
            raise self.fail(path, "must be a list of dates")
        out = set()
        for d in value:
            if isinstance(d, date) and not isinstance(d, datetime):
                out.add(d)
            elif isinstance(d, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
                try:
                    out.add(date.fromisoformat(d))
                except ValueError:
                    raise self.fail(path, f"{d!r} is not a date YYYY-MM-DD") from None
            else:
                raise self.fail(path, f"{d!r} is not a date YYYY-MM-DD")
        return frozenset(out)

    def target(self, value: object, path: Sequence[str], extra: Iterable[str] = ()) -> Target:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table such as {{ business_hours = 1 }} ({_units()})")
        units = [k for k in value if k not in set(extra)]
        for k in units:
            if k not in UNITS:
                raise self.fail(path, f"unknown unit {k!r} (expected {_units()})", (*path, k))
        if len(units) != 1:
            raise self.fail(path, f"needs exactly one unit ({_units()})")
        unit = units[0]
        amount = value[unit]
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount <= 0:
            raise self.fail(
                path, f"{unit} must be a positive number, not {amount!r}", (*path, unit)
            )
        if unit == "business_days" and not isinstance(amount, int):
            raise self.fail(path, "business_days must be a whole number")
        return Target(unit, amount)

    def priority(self, value: object, path: tuple[str, ...]) -> PriorityRule:
        cfg = self.table(value, path, ("meaning", "fulfil"))
        meaning = cfg.get("meaning")
        if not isinstance(meaning, str) or not meaning.strip():
            raise self.fail((*path, "meaning"), "needs a one-line 'meaning'")
        fulfil = self.target(cfg["fulfil"], (*path, "fulfil")) if "fulfil" in cfg else None
        return PriorityRule(path[-1], meaning.strip(), fulfil)

    def type_rule(
        self, name: str, value: object, priorities: Mapping[str, PriorityRule]
    ) -> TypeRule:
        path = ("types", name)
        allowed = ("priority", "meaning", "callback", "fulfil", "restore", "milestones")
        cfg = self.table(value, path, allowed)
        prio = cfg.get("priority")
        if prio is None:
            raise self.fail(path, "missing key 'priority'")
        if prio not in priorities:
            raise self.fail((*path, "priority"), f"unknown priority {prio!r}")
        meaning = cfg.get("meaning", "")
        if not isinstance(meaning, str):
            raise self.fail((*path, "meaning"), "must be a string")
        if "fulfil" in cfg and "restore" in cfg:
            raise self.fail((*path, "restore"), "give either 'fulfil' or 'restore', not both")
        key = "restore" if "restore" in cfg else "fulfil"
        fulfil = self.target(cfg[key], (*path, key)) if key in cfg else None
        callback = self.target(cfg["callback"], (*path, "callback")) if "callback" in cfg else None
        milestones = self.milestones(cfg.get("milestones", []), (*path, "milestones"))
        return TypeRule(name, prio, meaning, callback, fulfil, milestones)

    def milestones(self, value: object, path: tuple[str, ...]) -> tuple[tuple[str, Target], ...]:
        if not isinstance(value, list):
            raise self.fail(path, "must be a list of { name = ..., <unit> = N }")
        out: list[tuple[str, Target]] = []
        for item in value:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name:
                raise self.fail(path, "each milestone needs a 'name'")
            if any(name == n for n, _ in out):
                raise self.fail(path, f"milestone {name!r} appears twice")
            out.append((name, self.target(item, path, extra=("name",))))
        return tuple(out)


def _units() -> str:
    return ", ".join(UNITS)
