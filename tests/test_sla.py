"""SLA policy: due dates derived by hand from data/sla_policy.toml, properties, load errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.types import REQUEST_TYPES
from triage.calendar import BusinessCalendar
from triage.messages import DueDates
from triage.sla import (
    DEFAULT_POLICY_PATH,
    SlaPolicy,
    SlaPolicyError,
    Target,
    clock_state,
    load_policy,
    parse_policy,
)

NY = ZoneInfo("America/New_York")
H = timedelta(hours=1)
POLICY_TEXT = DEFAULT_POLICY_PATH.read_text(encoding="utf-8")


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY).astimezone(UTC)


@pytest.fixture(scope="module")
def policy() -> SlaPolicy:
    return load_policy(DEFAULT_POLICY_PATH)


def test_policy_covers_every_request_type(policy):
    assert set(policy.types) == set(REQUEST_TYPES)
    assert policy.contracts == ("standard", "24x7")
    assert policy.priorities == ("urgent", "high", "normal")
    assert policy.default_priority("website_down") == "urgent"
    assert policy.default_priority("quickbooks_print") == "high"
    assert policy.default_priority("other") == "normal"
    assert policy.fulfil_target("quickbooks_print", "high") == Target("hours", 48)
    assert policy.fulfil_in_words("website_down", None) == "within 4 hours"
    assert policy.fulfil_in_words("website_down", "high") == "within 48 hours"
    assert policy.fulfil_in_words("new_account", None) == "the end of the next business day"
    assert policy.fulfil_in_words("virtual_server_setup", None) == "within 5 business days"
    assert policy.fulfil_in_words("other", None) is None
    # The acknowledgment states one target; a meaning that named its own would contradict
    # a type's target (website_down: 4 h, not urgent's 24 h).
    for prio in policy.priorities:
        assert not any(ch.isdigit() for ch in policy.priority_meaning(prio)), prio
    assert policy.calendar("standard").day_length == 12 * H


# (case, type, priority, contract, received, clock_start, callback, response, fulfil, milestones)
# Standard calendar: 08:00-20:00 New York, Mon-Fri, US federal holidays closed (the SLA's).
CASES = [
    ("friday evening", "email_problem", None, "standard", ny(2026, 11, 27, 19, 30),
     ny(2026, 11, 27, 19, 30), ny(2026, 11, 30, 8, 30), ny(2026, 11, 30, 19, 30),
     ny(2026, 11, 28, 19, 30), ()),
    ("thanksgiving", "email_problem", None, "standard", ny(2026, 11, 26, 10),
     ny(2026, 11, 27, 8), ny(2026, 11, 27, 9), ny(2026, 11, 27, 20), ny(2026, 11, 28, 8), ()),
    ("weekend", "password_reset", None, "standard", ny(2026, 11, 21, 10),
     ny(2026, 11, 23, 8), ny(2026, 11, 23, 9), ny(2026, 11, 23, 20), ny(2026, 11, 24, 8), ()),
    ("before opening", "new_account", None, "standard", ny(2026, 11, 24, 7, 59),
     ny(2026, 11, 24, 8), None, ny(2026, 11, 24, 20), ny(2026, 11, 25, 20), ()),
    ("after closing", "new_account", None, "standard", ny(2026, 11, 25, 20, 30),
     ny(2026, 11, 27, 8), None, ny(2026, 11, 27, 20), ny(2026, 11, 27, 20), ()),
    ("exactly at opening", "server_down", None, "standard", ny(2026, 11, 30, 8),
     ny(2026, 11, 30, 8), ny(2026, 11, 30, 9), ny(2026, 11, 30, 20), ny(2026, 12, 1, 8), ()),
    ("exactly at closing", "server_down", None, "standard", ny(2026, 11, 30, 20),
     ny(2026, 12, 1, 8), ny(2026, 12, 1, 9), ny(2026, 12, 1, 20), ny(2026, 12, 2, 8), ()),
    ("july 4 2026 observed friday", "quickbooks_print", None, "standard", ny(2026, 7, 2, 19, 30),
     ny(2026, 7, 2, 19, 30), ny(2026, 7, 6, 8, 30), ny(2026, 7, 6, 19, 30),
     ny(2026, 7, 4, 19, 30), ()),
    ("july 4 2027 observed monday", "software_install", None, "standard", ny(2027, 7, 2, 12),
     ny(2027, 7, 2, 12), None, ny(2027, 7, 6, 12), ny(2027, 7, 6, 20), ()),
    ("christmas 2027 observed", "post_office_setup", None, "standard", ny(2027, 12, 23, 10),
     ny(2027, 12, 23, 10), None, ny(2027, 12, 27, 10), ny(2027, 12, 28, 20), ()),
    ("christmas eve is a business day", "printer_setup", None, "standard",
     ny(2026, 12, 23, 15), ny(2026, 12, 23, 15), None, ny(2026, 12, 24, 15),
     ny(2026, 12, 24, 20), ()),
    ("new year 2028 observed in 2027", "virtual_server_setup", None, "standard",
     ny(2027, 12, 30, 9), ny(2027, 12, 30, 9), None, ny(2028, 1, 3, 9),
     ny(2028, 1, 7, 20), ()),
    ("physical server milestones", "physical_server_setup", None, "standard", ny(2026, 11, 25, 10),
     ny(2026, 11, 25, 10), None, ny(2026, 11, 27, 10), ny(2026, 12, 10, 20),
     (("hardware", ny(2026, 12, 3, 20)), ("configured", ny(2026, 12, 10, 20)))),
    ("website restore 4 h", "website_down", None, "standard", ny(2026, 11, 30, 17),
     ny(2026, 11, 30, 17), None, ny(2026, 12, 1, 17), ny(2026, 11, 30, 21), ()),
    ("other is scheduled", "other", None, "standard", ny(2026, 11, 30, 17),
     ny(2026, 11, 30, 17), None, ny(2026, 12, 1, 17), None, ()),
    # DST: 2026-03-08 and 2027-03-14 spring forward, 2026-11-01 and 2027-11-07 fall back
    ("spring forward 2026", "email_problem", None, "standard", ny(2026, 3, 6, 19, 30),
     ny(2026, 3, 6, 19, 30), ny(2026, 3, 9, 8, 30), ny(2026, 3, 9, 19, 30),
     ny(2026, 3, 7, 19, 30), ()),
    ("fall back 2026", "email_problem", None, "standard", ny(2026, 10, 30, 19),
     ny(2026, 10, 30, 19), ny(2026, 10, 30, 20), ny(2026, 11, 2, 19), ny(2026, 10, 31, 19), ()),
    ("spring forward 2027", "server_down", None, "standard", ny(2027, 3, 12, 19, 45),
     ny(2027, 3, 12, 19, 45), ny(2027, 3, 15, 8, 45), ny(2027, 3, 15, 19, 45),
     ny(2027, 3, 13, 19, 45), ()),
    ("fall back 2027", "company_file_error", None, "standard", ny(2027, 11, 5, 19, 15),
     ny(2027, 11, 5, 19, 15), ny(2027, 11, 8, 8, 15), ny(2027, 11, 8, 19, 15),
     ny(2027, 11, 6, 19, 15), ()),
    # 24x7 contract: every hour counts; "hours" are elapsed time across the DST switch
    ("24x7 spring forward", "password_reset", None, "24x7", ny(2026, 3, 7, 12),
     ny(2026, 3, 7, 12), ny(2026, 3, 7, 13), ny(2026, 3, 8, 0), ny(2026, 3, 8, 13), ()),
    ("24x7 restore over the gap", "website_down", None, "24x7", ny(2026, 3, 7, 23),
     ny(2026, 3, 7, 23), None, ny(2026, 3, 8, 12), ny(2026, 3, 8, 4), ()),
    ("24x7 fall back", "new_account", None, "24x7", ny(2026, 11, 1, 0),
     ny(2026, 11, 1, 0), None, ny(2026, 11, 1, 11), ny(2026, 11, 3, 0), ()),
    ("24x7 spring forward 2027", "server_down", None, "24x7", ny(2027, 3, 14, 1, 30),
     ny(2027, 3, 14, 1, 30), ny(2027, 3, 14, 3, 30), ny(2027, 3, 14, 14, 30),
     ny(2027, 3, 15, 2, 30), ()),
    ("24x7 thanksgiving", "email_problem", None, "24x7", ny(2026, 11, 26, 10),
     ny(2026, 11, 26, 10), ny(2026, 11, 26, 11), ny(2026, 11, 26, 22), ny(2026, 11, 27, 10), ()),
    # priority decides the fulfil target when it differs from the type's own
    ("urgent with workaround -> high", "website_down", "high", "standard", ny(2026, 11, 30, 17),
     ny(2026, 11, 30, 17), None, ny(2026, 12, 1, 17), ny(2026, 12, 2, 17), ()),
    ("email problem high", "email_problem", "high", "standard", ny(2026, 11, 27, 19, 30),
     ny(2026, 11, 27, 19, 30), ny(2026, 11, 30, 8, 30), ny(2026, 11, 30, 19, 30),
     ny(2026, 11, 29, 19, 30), ()),
    ("email problem lowered to normal", "email_problem", "normal", "standard",
     ny(2026, 11, 30, 9), ny(2026, 11, 30, 9), ny(2026, 11, 30, 10), ny(2026, 12, 1, 9),
     None, ()),
    ("physical server raised to urgent", "physical_server_setup", "urgent", "standard",
     ny(2026, 11, 30, 9), ny(2026, 11, 30, 9), None, ny(2026, 12, 1, 9),
     ny(2026, 12, 1, 9), ()),
    ("own priority given explicitly", "new_account", "normal", "standard", ny(2026, 11, 24, 10),
     ny(2026, 11, 24, 10), None, ny(2026, 11, 25, 10), ny(2026, 11, 25, 20), ()),
    # the receipt instant may come in any zone; the calendar's local date decides
    ("given in UTC", "email_problem", None, "standard",
     datetime.fromisoformat("2026-11-28T00:30:00Z"), ny(2026, 11, 27, 19, 30),
     ny(2026, 11, 30, 8, 30), ny(2026, 11, 30, 19, 30), ny(2026, 11, 28, 19, 30), ()),
    ("given in Tokyo", "email_problem", None, "standard",
     datetime.fromisoformat("2026-11-28T09:30:00+09:00"), ny(2026, 11, 27, 19, 30),
     ny(2026, 11, 30, 8, 30), ny(2026, 11, 30, 19, 30), ny(2026, 11, 28, 19, 30), ()),
    ("given in Paris, next day there", "new_account", None, "standard",
     datetime.fromisoformat("2026-11-25T02:00:00+01:00"), ny(2026, 11, 25, 8), None,
     ny(2026, 11, 25, 20), ny(2026, 11, 25, 20), ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rtype", "prio", "contract", "received", "start", "callback", "response", "fulfil", "miles"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_due(policy, rtype, prio, contract, received, start, callback, response, fulfil, miles):
    due = policy.due(rtype, prio, contract, received)
    assert due == DueDates(start, response, callback, fulfil, miles)
    for t in (due.clock_start, due.response_due, due.callback_due, due.fulfil_due):
        assert t is None or t.utcoffset() == timedelta(0)


def test_shipped_policy_closes_only_the_slas_holidays(policy):
    """ITX's SLA names US federal holidays and nothing else: a closure the clients were never
    told about would make every due date around it a business day late."""
    assert policy.calendar("standard").extra_closed == frozenset()
    assert "# extra_closed = " in POLICY_TEXT  # the documented example stays


def test_an_extra_closed_day_in_a_policy_moves_due_dates():
    text = POLICY_TEXT.replace('# extra_closed = ["2026-12-24"]', 'extra_closed = ["2026-12-24"]')
    assert text != POLICY_TEXT
    due = parse_policy(text).due("printer_setup", None, "standard", ny(2026, 12, 23, 15))
    # Dec 24 closed, Dec 25 Christmas, then the weekend: Monday Dec 28.
    assert due.response_due == ny(2026, 12, 28, 15)
    assert due.fulfil_due == ny(2026, 12, 28, 20)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", None, "standard"), "unknown request type 'nope'"),
        (("email_problem", "low", "standard"), "unknown priority 'low'"),
        (("email_problem", None, "gold"), "unknown contract 'gold'"),
    ],
)
def test_due_rejects_bad_arguments(policy, args, message):
    with pytest.raises(ValueError, match=message):
        policy.due(*args, ny(2026, 11, 30, 9))


def test_due_rejects_naive_instant(policy):
    with pytest.raises(ValueError, match="UTC offset"):
        policy.due("email_problem", None, "standard", datetime(2026, 11, 30, 9))


# -- properties ------------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2029, 1, 1), timezones=st.just(UTC)
)
requests = st.tuples(
    st.sampled_from(REQUEST_TYPES),
    st.sampled_from([None, "urgent", "high", "normal"]),
    st.sampled_from(["standard", "24x7"]),
)


def _instants(d: DueDates) -> list[datetime]:
    out = [d.clock_start, d.response_due, d.callback_due, d.fulfil_due]
    return [t for t in out if t is not None] + [t for _, t in d.milestones]


@settings(deadline=None, max_examples=300)
@given(req=requests, received=instants)
def test_due_not_before_receipt(policy, req, received):
    due = policy.due(*req, received)
    assert all(t >= received for t in _instants(due))
    assert due.clock_start <= min(_instants(due))


@settings(deadline=None, max_examples=300)
@given(req=requests, a=instants, b=instants)
def test_due_monotone_in_receipt(policy, req, a, b):
    early, late = policy.due(*req, min(a, b)), policy.due(*req, max(a, b))
    assert all(x <= y for x, y in zip(_instants(early), _instants(late), strict=True))


@settings(deadline=None, max_examples=300)
@given(req=requests, received=instants)
def test_business_hours_targets_are_exact(policy, req, received):
    rtype, prio, contract = req
    due = policy.due(rtype, prio, contract, received)
    cal = policy.calendar(contract)
    assert cal.business_time_between(due.clock_start, due.response_due) == 12 * H
    if due.callback_due is not None:
        assert cal.business_time_between(due.clock_start, due.callback_due) == H


# -- SLA clocks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def std(policy) -> BusinessCalendar:
    return policy.calendar("standard")


def test_clock_at_75_percent(std):
    state = clock_state(ny(2026, 11, 30, 8), ny(2026, 11, 30, 20), ny(2026, 11, 30, 17), std)
    assert (state.elapsed, state.remaining, state.fraction_used) == (9 * H, 3 * H, 0.75)
    assert state.due == ny(2026, 11, 30, 20)


def test_clock_over_a_weekend_counts_open_time_only(std):
    # callback due Monday 08:30 from Friday 19:30; at Monday 08:15, 45 of 60 minutes are used.
    state = clock_state(
        ny(2026, 11, 27, 19, 30), ny(2026, 11, 30, 8, 30), ny(2026, 11, 30, 8, 15), std
    )
    assert state.elapsed == timedelta(minutes=45)
    assert state.fraction_used == 0.75


def test_paused_clock_moves_due(std):
    pauses = [(ny(2026, 11, 30, 10), ny(2026, 11, 30, 12))]
    state = clock_state(
        ny(2026, 11, 30, 8), ny(2026, 11, 30, 20), ny(2026, 11, 30, 17), std, pauses
    )
    assert (state.elapsed, state.remaining) == (7 * H, 5 * H)
    assert state.due == ny(2026, 12, 1, 10)


def test_clock_still_paused(std):
    # waiting on the client since 16:00: 8 h used; 4 h left from now (Tue 09:00) -> 13:00
    pauses = [(ny(2026, 11, 30, 16), None)]
    state = clock_state(ny(2026, 11, 30, 8), ny(2026, 11, 30, 20), ny(2026, 12, 1, 9), std, pauses)
    assert (state.elapsed, state.remaining) == (8 * H, 4 * H)
    assert state.due == ny(2026, 12, 1, 13)


def test_clock_overdue(std):
    state = clock_state(ny(2026, 11, 30, 8), ny(2026, 11, 30, 20), ny(2026, 12, 1, 10), std)
    assert (state.elapsed, state.remaining) == (14 * H, -2 * H)
    assert state.fraction_used == pytest.approx(14 / 12)


def test_wall_clock_target_on_24x7(policy):
    # fulfil 24 h from Friday 19:30: at Saturday 13:30 (18 h later) 75 % is used.
    wall = BusinessCalendar.always_open(NY)
    due = policy.due("email_problem", None, "standard", ny(2026, 11, 27, 19, 30))
    state = clock_state(due.clock_start, due.fulfil_due, ny(2026, 11, 28, 13, 30), wall)
    assert state.fraction_used == 0.75


# -- policy file errors ----------------------------------------------------------------------


def _line_of(text: str, needle: str) -> int:
    (no,) = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return no


def _remove_block(text: str, header: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    return "".join(lines[:start] + lines[end:])


ERRORS = [
    ("unknown unit", 'restore = { hours = 4 }', 'restore = { minutes = 4 }',
     'restore = { minutes', "unknown unit 'minutes'"),
    ("bad zone", 'timezone = "America/New_York"', 'timezone = "America/New_Yrok"',
     "New_Yrok", "unknown time zone 'America/New_Yrok'"),
    ("typo in a key", "callback = { business_hours = 1 }   # a call back",
     "calback = { business_hours = 1 }   # a call back", "calback", "unknown key 'calback'"),
    ("bad closing time", 'close = "20:00"', 'close = "25:00"', '"25:00"', "not a time of day"),
    ("close before open", 'close = "20:00"', 'close = "07:00"', '"07:00"', "after opening"),
    ("bad weekday", '"thu", "fri"]', '"thu", "fry"]', '"fry"', "'fry' is not a weekday"),
    ("bad holiday country", 'holidays = "US"', 'holidays = "XX"', '"XX"', "unknown holiday"),
    ("bad closed day", 'holidays = "US"', 'holidays = "US"\nextra_closed = ["2026-12-32"]',
     "2026-12-32", "not a date"),
    ("negative amount", "fulfil = { business_days = 2 }", "fulfil = { business_days = -2 }",
     "business_days = -2", "positive number"),
    ("fractional days", "fulfil = { business_days = 5 }", "fulfil = { business_days = 5.5 }",
     "5.5", "whole number"),
    ("unknown priority", 'priority = "high"', 'priority = "medium"', '"medium"',
     "unknown priority 'medium'"),
    ("two units", "response = { business_hours = 12 }",
     "response = { business_hours = 12, hours = 12 }", "hours = 12,", "exactly one unit"),
    ("bad toml", "[types.other]", "[types.other", "[types.other", "bad TOML"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "line_text", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_policy_errors_name_the_line(old, new, line_text, message):
    assert POLICY_TEXT.count(old) == 1
    text = POLICY_TEXT.replace(old, new)
    with pytest.raises(SlaPolicyError, match=message) as info:
        parse_policy(text, source="p.toml")
    line = _line_of(text, line_text)
    assert info.value.line == line
    assert str(info.value).startswith(f"p.toml:{line}: ")


def test_missing_type_names_the_types_section():
    text = _remove_block(POLICY_TEXT, "[types.printer_setup]")
    with pytest.raises(SlaPolicyError, match=r"no \[types.printer_setup\] table") as info:
        parse_policy(text, source="p.toml")
    assert info.value.line == _line_of(text, "[types.password_reset]")


def test_type_without_priority_names_its_table():
    text = POLICY_TEXT.replace('priority = "normal"\n# no fulfil target', "# no fulfil target")
    with pytest.raises(SlaPolicyError, match=r"types\.other: missing key 'priority'") as info:
        parse_policy(text)
    assert info.value.line == _line_of(text, "[types.other]")


def test_unit_in_a_standalone_table_names_its_own_line():
    text = _remove_block(POLICY_TEXT, "[types.other]") + (
        '[types.other]\npriority = "normal"\n\n[types.other.fulfil]\nbusiness_dayz = 3\n'
    )
    with pytest.raises(SlaPolicyError, match="unknown unit 'business_dayz'") as info:
        parse_policy(text)
    assert info.value.line == _line_of(text, "business_dayz")


def test_load_policy_reads_env_and_reports_unreadable_file(tmp_path, monkeypatch):
    custom = tmp_path / "sla.toml"
    custom.write_text(POLICY_TEXT.replace("business_hours = 12", "business_hours = 6"))
    monkeypatch.setenv("TRIAGE_SLA_POLICY", str(custom))
    assert load_policy().email_response.amount == 6
    with pytest.raises(SlaPolicyError, match="cannot read policy"):
        load_policy(tmp_path / "missing.toml")


def test_default_path_is_the_repository_data_file():
    expected = Path(__file__).resolve().parents[1] / "data" / "sla_policy.toml"
    assert expected == DEFAULT_POLICY_PATH


def test_targets_and_clock_calendar(policy):
    targets = policy.targets("website_down", None)
    assert (str(targets["fulfil"]), targets["callback"]) == ("4 hours", None)
    assert str(policy.targets("website_down", "high")["fulfil"]) == "48 hours"
    assert str(targets["response"]) == "12 business hours"
    wall = policy.clock_calendar(targets["fulfil"], "standard")
    assert wall.is_open(ny(2026, 11, 28, 3))  # a Saturday night counts for wall-clock targets
    assert policy.clock_calendar(targets["response"], "standard") is policy.calendar("standard")


def test_calendar_key_given_as_table_is_an_error():
    text = POLICY_TEXT.replace('open = "08:00"\n', "").replace(
        "[calendar.24x7]", "[calendar.open]\nhour = 8\n\n[calendar.24x7]"
    )
    with pytest.raises(SlaPolicyError, match="must be a value, not a table") as info:
        parse_policy(text)
    assert info.value.line == _line_of(text, "[calendar.open]")
