"""The SLA watch on real SQLite and real PostgreSQL, schema built by the migrations, with an
injected clock and work orders whose due dates come from the real policy."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from tests.factories import Clock, add_work_order
from triage.ack import make_env
from triage.sla import SlaPolicy, load_policy
from triage.slawatch import SlaWatch, WatchResult, render_escalation
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Outbox, SlaAlert, WorkOrder

NY = ZoneInfo("America/New_York")
LEAD = "lead@itx.net"
ONCALL = "oncall@itx.net"
FRI_10 = datetime(2026, 11, 27, 10, 0, tzinfo=NY)  # a Friday, office open
SAT_03 = datetime(2026, 11, 28, 3, 0, tzinfo=NY)  # out of hours


@pytest.fixture(scope="module")
def policy() -> SlaPolicy:
    return load_policy()


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def watch(sessions: Any, policy: SlaPolicy, clock: Clock, *, oncall: str | None = ONCALL,
          reads: Any = None) -> SlaWatch:
    return SlaWatch(sessions, policy, clock, lead_address=LEAD, oncall_address=oncall,
                    from_domain="itx.net", reads=reads)


def open_wo(sessions: sessionmaker[Session], policy: SlaPolicy, received: datetime,
            **fields: Any) -> int:
    """A work order due by ``policy`` (``tests.factories.add_work_order``'s fields)."""
    with sessions.begin() as s:
        return add_work_order(s, received, policy=policy, **fields).id


def alerts(sessions: sessionmaker[Session]) -> list[tuple[int, str, str]]:
    with sessions() as s:
        return sorted(tuple(r) for r in s.execute(
            select(SlaAlert.work_order_id, SlaAlert.target, SlaAlert.state)))


def outbox(sessions: sessionmaker[Session]) -> list[Outbox]:
    with sessions() as s:
        return list(s.scalars(select(Outbox).order_by(Outbox.id)))


def test_migrations_create_sla_alerts(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        assert int(s.scalar(text("select version_num from alembic_version"))) >= 2
        assert s.scalar(select(func.count()).select_from(SlaAlert)) == 0


def test_at_risk_at_75_percent_then_breached_at_100(sessions, policy) -> None:
    wo = open_wo(sessions, policy, FRI_10)  # callback: 1 business hour, due 11:00
    clock = Clock(FRI_10 + timedelta(minutes=44))
    w = watch(sessions, policy, clock)
    assert w.run_once() == WatchResult(scanned=1)
    assert outbox(sessions) == []

    clock.t = FRI_10 + timedelta(minutes=45)
    assert w.run_once() == WatchResult(scanned=1, at_risk=1)
    assert alerts(sessions) == [(wo, "callback", "at_risk")]
    (row,) = outbox(sessions)
    assert (row.kind, row.to_addr, row.template, row.status) == (
        "escalation", LEAD, "escalation", "pending")
    assert re.fullmatch(r"ITX-\d{6}\.escalation\.\d+\.[0-9a-f]{12}@itx\.net", row.message_id)
    assert row.context["target"] == "callback" and row.context["state"] == "at_risk"
    assert row.context["due"] == (FRI_10 + timedelta(hours=1)).astimezone(UTC).isoformat()
    assert row.context["client_domain"] == "harborview.com"
    with sessions() as s:
        assert s.get(SlaAlert, 1).outbox_id == row.id  # type: ignore[union-attr]

    clock.t = FRI_10 + timedelta(hours=1)
    assert w.run_once() == WatchResult(scanned=1, breached=1)
    assert alerts(sessions) == [(wo, "callback", "at_risk"), (wo, "callback", "breached")]


def test_one_notice_per_work_order_target_and_state_across_runs(sessions, policy) -> None:
    for _ in range(3):
        open_wo(sessions, policy, FRI_10)
    clock = Clock(FRI_10 + timedelta(minutes=50))
    w = watch(sessions, policy, clock)
    assert w.run_once().at_risk == 3
    for minutes in (51, 55, 59):
        clock.t = FRI_10 + timedelta(minutes=minutes)
        assert w.run_once() == WatchResult(scanned=3)
    assert len(outbox(sessions)) == 3
    # A new process (nothing in memory) after a restart: still nothing new.
    assert watch(sessions, policy, clock).run_once().queued == 0
    assert len(outbox(sessions)) == 3 and len(alerts(sessions)) == 3


def test_resolved_work_orders_and_answered_responses_are_left_alone(sessions, policy) -> None:
    # Monday 10:00 New York: the 12 business-hour email response of Friday 10:00 is due.
    mon_10 = datetime(2026, 11, 30, 10, 0, tzinfo=NY)
    answered = open_wo(sessions, policy, FRI_10, request_type="new_account",
                       priority="normal", first_response_at=FRI_10 + timedelta(hours=2))
    open_wo(sessions, policy, FRI_10, status="resolved")  # callback long breached
    waiting = open_wo(sessions, policy, FRI_10, request_type="new_account", priority="normal")
    result = watch(sessions, policy, Clock(mon_10)).run_once()
    assert result == WatchResult(scanned=2, breached=1)
    assert alerts(sessions) == [(waiting, "response", "breached")]
    assert answered not in {wo for wo, _, _ in alerts(sessions)}


def test_business_hour_targets_do_not_run_over_a_weekend(sessions, policy) -> None:
    # Friday 19:00: one open hour left that day, 11 more on Monday.
    fri_19 = datetime(2026, 11, 27, 19, 0, tzinfo=NY)
    wo = open_wo(sessions, policy, fri_19, request_type="new_account", priority="normal")
    clock = Clock(datetime(2026, 11, 29, 23, 0, tzinfo=NY))  # 52 wall hours later
    w = watch(sessions, policy, clock)
    assert w.run_once() == WatchResult(scanned=1)
    clock.t = datetime(2026, 11, 30, 16, 0, tzinfo=NY)  # 1 + 8 of 12 open hours: 75 %
    assert w.run_once() == WatchResult(scanned=1, at_risk=1)
    assert alerts(sessions) == [(wo, "response", "at_risk")]


def test_holidays_do_not_count(sessions, policy) -> None:
    # Thursday Dec 24, 18:00: Christmas (Friday) and the weekend follow.
    wo = open_wo(sessions, policy, datetime(2026, 12, 24, 18, 0, tzinfo=NY),
                 request_type="new_account", priority="normal")
    clock = Clock(datetime(2026, 12, 27, 23, 0, tzinfo=NY))
    w = watch(sessions, policy, clock)
    assert w.run_once() == WatchResult(scanned=1)
    clock.t = datetime(2026, 12, 28, 16, 0, tzinfo=NY)  # 2 + 8 of 12 open hours
    assert w.run_once() == WatchResult(scanned=1, at_risk=1)
    assert alerts(sessions) == [(wo, "response", "at_risk")]


def test_urgent_24x7_out_of_hours_pages_once(sessions, policy) -> None:
    wo = open_wo(sessions, policy, SAT_03, contract="24x7", domain="contract.example")
    clock = Clock(SAT_03 + timedelta(minutes=1))
    w = watch(sessions, policy, clock)
    assert w.run_once() == WatchResult(scanned=1, pages=1)
    assert w.run_once() == WatchResult(scanned=1)
    (page,) = outbox(sessions)
    assert (page.kind, page.to_addr, page.template) == ("page", ONCALL, "escalation")
    assert re.fullmatch(r"ITX-\d{6}\.page\.\d+\.[0-9a-f]{12}@itx\.net", page.message_id)
    assert alerts(sessions) == [(wo, "oncall_return", "paged")]

    # The return call is a 1 h wall-clock clock; the 24x7 callback (1 business hour on an
    # always-open calendar) runs alongside it.
    clock.t = SAT_03 + timedelta(minutes=45)
    assert w.run_once() == WatchResult(scanned=1, at_risk=2)
    clock.t = SAT_03 + timedelta(hours=1)
    assert w.run_once() == WatchResult(scanned=1, breached=2)
    assert alerts(sessions) == sorted([
        (wo, "oncall_return", "paged"), (wo, "oncall_return", "at_risk"),
        (wo, "oncall_return", "breached"), (wo, "callback", "at_risk"),
        (wo, "callback", "breached"),
    ])
    assert [r.to_addr for r in outbox(sessions)] == [ONCALL, LEAD, LEAD, LEAD, LEAD]


@pytest.mark.parametrize(("received", "contract"), [
    (SAT_03, "standard"),  # out of hours, but no contract: waits for Monday
    (FRI_10, "24x7"),  # contract client, but the office is open
])
def test_no_page_for_standard_clients_or_office_hours(
    sessions, policy, received: datetime, contract: str
) -> None:
    open_wo(sessions, policy, received, contract=contract)
    w = watch(sessions, policy, Clock(received + timedelta(minutes=10)))
    assert w.run_once() == WatchResult(scanned=1)
    assert outbox(sessions) == [] and alerts(sessions) == []


def test_no_page_without_an_oncall_address_but_the_return_is_still_watched(
    sessions, policy
) -> None:
    wo = open_wo(sessions, policy, SAT_03, contract="24x7", domain="contract.example")
    w = watch(sessions, policy, Clock(SAT_03 + timedelta(hours=1)), oncall=None)
    assert w.run_once() == WatchResult(scanned=1, breached=2)
    assert ("oncall_return", "breached") in {(t, st) for _, t, st in alerts(sessions)}
    assert (wo, "oncall_return", "paged") not in alerts(sessions)


def test_two_watches_racing_queue_each_notice_once(sessions, policy) -> None:
    """Both watches read before either writes (a barrier holds them), so both believe every
    notice is new: only the unique key stops the second copy."""
    n = 5
    for _ in range(n):
        open_wo(sessions, policy, FRI_10)
    barrier = threading.Barrier(2, timeout=30)

    @contextmanager
    def stale_reads() -> Iterator[Session]:
        with sessions() as s:
            yield s
        barrier.wait()  # read done, session closed; now both go on to write

    clock = Clock(FRI_10 + timedelta(hours=2))
    results: list[WatchResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(watch(sessions, policy, clock, reads=stale_reads).run_once())
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(r.breached for r in results) == n
    assert sum(r.already for r in results) == n
    assert len(alerts(sessions)) == n and len(outbox(sessions)) == n


def test_render_escalation_quotes_only_the_cut_subject(sessions, policy) -> None:
    open_wo(sessions, policy, FRI_10, subject="Down!! see http://evil.example/x or evil.example")
    open_wo(sessions, policy, SAT_03, contract="24x7", domain="contract.example")
    watch(sessions, policy, Clock(SAT_03 + timedelta(minutes=1))).run_once()
    # The first: callback breached, response at risk (10 of 12 open hours); then the page.
    escalation, _, page = outbox(sessions)
    env = make_env()

    msg = render_escalation(env, escalation.context, escalation.message_id,
                            escalation.to_addr, "helpdesk@itx.net")
    assert msg["Subject"] == "[ITX-000001] SLA BREACHED: call back"
    assert msg["To"] == LEAD and msg["Message-ID"] == f"<{escalation.message_id}>"
    assert msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert "ITX-000001" in body and "harborview.com" in body
    assert "[link removed]" in body and "evil[.]example" in body
    assert "http://" not in body and "evil.example" not in body
    assert "by 11:00 AM EST on Friday, November 27" in body

    pmsg = render_escalation(env, page.context, page.message_id, page.to_addr,
                             "helpdesk@itx.net")
    assert pmsg["Subject"] == "[ITX-000002] PAGE: urgent 24x7 request received out of hours"
    assert pmsg["To"] == ONCALL and pmsg["X-Priority"] == "1"
    assert "ON-CALL PAGE" in pmsg.get_content()


def test_escalations_go_to_the_assignee_when_there_is_one(sessions, policy) -> None:
    from triage.desk.users import add_user

    wo = open_wo(sessions, policy, FRI_10)
    with sessions.begin() as s:
        user = add_user(s, "bob", "long enough password", email="bob@itx.net")
        s.get(WorkOrder, wo).assignee_id = user.id  # type: ignore[union-attr]
    clock = Clock(FRI_10 + timedelta(minutes=45))
    assert watch(sessions, policy, clock).run_once().at_risk == 1
    (row,) = outbox(sessions)
    assert row.to_addr == "bob@itx.net"


def test_paused_work_orders_are_not_escalated_and_pauses_move_the_clock(sessions,
                                                                        policy) -> None:
    wo = open_wo(sessions, policy, FRI_10)  # callback due 11:00, at risk at 10:45
    start = (FRI_10 + timedelta(minutes=10)).astimezone(UTC).isoformat()
    with sessions.begin() as s:
        row = s.get(WorkOrder, wo)
        assert row is not None
        row.status, row.pauses = "waiting_client", [[start, None]]
    clock = Clock(FRI_10 + timedelta(hours=3))
    w = watch(sessions, policy, clock)
    assert w.run_once() == WatchResult(scanned=1)  # waiting on the client: silence
    # The client answered at 10:40: 30 minutes paused, so at risk at 11:15, not 10:45.
    end = (FRI_10 + timedelta(minutes=40)).astimezone(UTC).isoformat()
    with sessions.begin() as s:
        row = s.get(WorkOrder, wo)
        assert row is not None
        row.status, row.pauses = "open", [[start, end]]
    clock.t = FRI_10 + timedelta(minutes=74)
    assert w.run_once() == WatchResult(scanned=1)
    clock.t = FRI_10 + timedelta(minutes=75)
    assert w.run_once() == WatchResult(scanned=1, at_risk=1)
    assert outbox(sessions)[0].context["due"] == (
        FRI_10 + timedelta(minutes=90)).astimezone(UTC).isoformat()


def test_the_watch_fills_in_missing_queue_marks(sessions, policy) -> None:
    wo = open_wo(sessions, policy, FRI_10)
    with sessions() as s:
        assert s.get(WorkOrder, wo).next_due is None  # type: ignore[union-attr]
    watch(sessions, policy, Clock(FRI_10)).run_once()
    with sessions() as s:
        row = s.get(WorkOrder, wo)
        assert row is not None
        assert row.next_due == (FRI_10 + timedelta(hours=1)).astimezone(UTC)
        assert row.at_risk_at == (FRI_10 + timedelta(minutes=45)).astimezone(UTC)
