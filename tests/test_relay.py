"""A relay that refuses everyone pauses the outbox; a recipient that refuses is dead-lettered
(triage.relay), and the address policy stops mail at send time (triage.addresses).

The streak itself is unit-tested; everything else goes through a real aiosmtpd sink
(tests/smtpsink.py) that answers 550 to everyone or to chosen recipients, on SQLite and
PostgreSQL, with the real classifier and store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from classifiers.predict import Classifier
from tests.factories import ScriptedMailbox
from tests.smtpsink import REJECT, SmtpSink
from triage.config import Settings
from triage.outbox.store import Job
from triage.relay import Held, RefusalStreak
from triage.service import SendFailing, Service
from triage.smtp import SmtpSettings, SmtpTransport
from triage.storage.models import Event, Outbox, WorkOrder
from triage.wiring import build, send_policy

ANSWER = REJECT  # what the sink says to a refused recipient


# ---- the streak, alone ----------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def held(i: int, addr: str, stage: str = "rcpt", at: float = 1000.0) -> Held:
    domain = addr.split("@")[1]
    return Held(i, 1, addr, domain, stage, "550 no", at)


def test_three_recipients_in_two_domains_make_a_verdict() -> None:
    s = RefusalStreak(3, 2, 900, Clock())
    assert not s.add(held(1, "a@x.test"))
    assert not s.add(held(2, "b@x.test"))
    assert s.add(held(3, "c@y.test"))
    assert [h.outbox_id for h in s.take()] == [1, 2, 3] and s.held == ()


def test_one_domain_or_one_recipient_is_not_the_relay() -> None:
    s = RefusalStreak(3, 2, 900, Clock())
    for i, addr in enumerate(["a@x.test", "b@x.test", "c@x.test", "d@x.test"]):
        assert not s.add(held(i, addr))  # one domain refusing: that domain's trouble
    s = RefusalStreak(3, 2, 900, Clock())
    for i in range(6):
        assert not s.add(held(i, "a@x.test" if i % 2 else "a@y.test"))  # two recipients


def test_refusals_older_than_the_window_are_forgotten() -> None:
    s = RefusalStreak(3, 2, 900, Clock())
    s.add(held(1, "a@x.test", at=1000.0))
    s.add(held(2, "b@y.test", at=1500.0))
    assert not s.add(held(3, "c@z.test", at=2000.0))  # row 1 is more than 900 s older
    assert [h.outbox_id for h in s.held] == [2, 3]


def test_a_row_refused_again_counts_once_and_the_probe_needs_rcpt_refusals() -> None:
    s = RefusalStreak(3, 2, 900, Clock())
    s.add(held(1, "a@x.test"))
    s.add(held(1, "a@x.test"))
    assert len(s.held) == 1 and s.probe_can_decide()
    s.add(held(2, "b@y.test", stage="data"))  # a content filter accepts any RCPT
    assert not s.probe_can_decide()
    with pytest.raises(ValueError):
        RefusalStreak(1, 1, 900)


# ---- through a real relay -------------------------------------------------------------------
def request(n: int, sender: str) -> bytes:
    return (f"From: {sender}\r\nTo: helpdesk@itx.net\r\nSubject: cannot send email {n}\r\n"
            f"Message-ID: <r{n}@relay.test>\r\nDate: Wed, 25 Nov 2026 14:00:00 -0500\r\n\r\n"
            "Outlook cannot send any email since this morning, please help.\r\n").encode()


@pytest.fixture
def make_service(db_url: str, tmp_path: Path, smtp_sink: SmtpSink,
                 classifier: Classifier) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(senders: list[str], **overrides: Any) -> Service:
        values: dict[str, Any] = dict(smtp_url=smtp_sink.url, database_url=db_url,
                                      attachments_dir=tmp_path / "att",
                                      outbox_retry_base=0.0, outbox_interval=0.05,
                                      poll_interval=0.05)
        settings = Settings(**{**values, **overrides})
        mbox = ScriptedMailbox([request(i, s) for i, s in enumerate(senders, 1)])
        svc = Service(settings, build(settings, classifier=classifier, mailbox=mbox))
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.c.engine.dispose()


def outbox(svc: Service) -> list[Outbox]:
    with svc.c.sessions() as s:
        return list(s.scalars(select(Outbox).order_by(Outbox.id)))


def events(svc: Service, action: str) -> list[Event]:
    with svc.c.sessions() as s:
        return list(s.scalars(select(Event).where(Event.action == action).order_by(Event.id)))


def gauge(svc: Service, name: str, **labels: str) -> float | None:
    return svc.c.metrics.registry.get_sample_value(name, labels)


CLIENTS = ["dana@harborview.com", "raj@patelcpa.com", "maria@sunriseproperty.com",
           "kim@harborview.com"]


async def test_a_relay_refusing_everyone_pauses_and_then_delivers_everything(
        make_service, smtp_sink: SmtpSink) -> None:
    smtp_sink.behave("reject")
    svc = make_service(CLIENTS)
    await svc.run_once()
    rows = outbox(svc)
    assert [r.to_addr for r in rows] == CLIENTS
    # Held, not dead-lettered, and the tries the relay refused are given back.
    assert [(r.status, r.attempts) for r in rows] == [("pending", 0)] * 4
    assert all(r.last_error == ANSWER for r in rows[:3])
    assert events(svc, "ack_failed") == [] and smtp_sink.received == []
    assert svc.c.runner.sender.send_trouble == f"SMTP relay refuses every recipient: {ANSWER}"
    with pytest.raises(SendFailing, match=r"^SMTP relay refuses every recipient: 550 5\.1\.1"):
        await svc._check_smtp()  # what /readyz shows
    assert gauge(svc, "triage_smtp_relay_refusing") == 1.0

    smtp_sink.behave("accept")  # the relay is fixed
    fixed = make_service([])
    await fixed.run_once()
    rows = outbox(fixed)
    assert [r.status for r in rows] == ["sent"] * 4
    assert [r.rcpt_tos[0] for r in smtp_sink.received] == CLIENTS  # in order, once each
    assert events(fixed, "ack_failed") == []
    assert fixed.c.runner.sender.send_trouble is None


async def test_the_daemon_pauses_names_the_relay_and_resumes_when_it_is_fixed(
        make_service, smtp_sink: SmtpSink) -> None:
    smtp_sink.behave("reject")
    svc = make_service(CLIENTS, outbox_retry_base=0.2)  # pauses of 0.2 s, 0.4 s, ...
    task = asyncio.create_task(svc.run())
    try:
        async with asyncio.timeout(30):
            while svc.c.runner.sender.relay_trouble is None:
                await asyncio.sleep(0.05)
        assert gauge(svc, "triage_smtp_relay_refusing") == 1.0
        with pytest.raises(SendFailing, match="relay refuses every recipient: 550"):
            await svc._check_smtp()
        assert all(r.status in ("pending", "sending") for r in outbox(svc))
        smtp_sink.behave("accept")
        async with asyncio.timeout(30):
            while len(smtp_sink.received) < 4:
                await asyncio.sleep(0.05)
    finally:
        svc.should_exit.set()
        async with asyncio.timeout(15):
            await task
    assert [r.status for r in outbox(svc)] == ["sent"] * 4
    assert [r.rcpt_tos[0] for r in smtp_sink.received] == CLIENTS
    assert events(svc, "ack_failed") == []
    assert gauge(svc, "triage_smtp_relay_refusing") == 0.0
    assert svc.c.runner.sender.send_trouble is None
    await svc._check_smtp()


async def test_a_single_bad_recipient_among_good_ones_is_dead_lettered(
        make_service, smtp_sink: SmtpSink) -> None:
    smtp_sink.behave(refuse=frozenset({"raj@patelcpa.com"}))
    svc = make_service(CLIENTS)
    await svc.run_once()
    by_addr = {r.to_addr: r for r in outbox(svc)}
    assert by_addr["raj@patelcpa.com"].status == "dead"
    assert by_addr["raj@patelcpa.com"].last_error == ANSWER
    assert {a: r.status for a, r in by_addr.items() if a != "raj@patelcpa.com"} == dict.fromkeys(
        ["dana@harborview.com", "maria@sunriseproperty.com", "kim@harborview.com"], "sent")
    (failed,) = events(svc, "ack_failed")
    assert failed.detail["answer"] == ANSWER
    assert svc.c.runner.sender.send_trouble is None and svc.c.runner.sender.relay_trouble is None
    assert gauge(svc, "triage_smtp_relay_refusing") == 0.0


async def test_a_bad_recipient_last_in_line_is_settled_by_a_probe(
        make_service, smtp_sink: SmtpSink) -> None:
    """Nothing is sent after it, so the relay is asked whether it still takes an address it
    took before: it does, so the recipient refused, and the row is dead-lettered now."""
    smtp_sink.behave(refuse=frozenset({"kim@harborview.com"}))
    svc = make_service(CLIENTS)
    await svc.run_once()
    assert [r.status for r in outbox(svc)] == ["sent", "sent", "sent", "dead"]
    assert len(smtp_sink.received) == 3  # the probe handed nothing over
    assert len(events(svc, "ack_failed")) == 1


async def test_a_burst_of_bad_recipients_in_many_domains_is_not_taken_for_the_relay(
        make_service, smtp_sink: SmtpSink) -> None:
    """Forged senders at several domains look like a refusing relay; the probe with an
    address the relay accepted before shows they are not (else they would hold the outbox
    on the same rows for ever)."""
    bad = ["x1@forged-a.test", "x2@forged-b.test", "x3@forged-c.test"]
    smtp_sink.behave(refuse=frozenset(bad))
    svc = make_service(["dana@harborview.com", *bad, "raj@patelcpa.com"])
    await svc.run_once()
    assert [r.status for r in outbox(svc)] == ["sent", "dead", "dead", "dead", "sent"]
    assert svc.c.runner.sender.relay_trouble is None
    assert len(events(svc, "ack_failed")) == 3


async def test_probe_is_mail_and_rcpt_only(smtp_sink: SmtpSink) -> None:
    smtp_sink.behave(refuse=frozenset({"no@x.test"}))
    settings = SmtpSettings.from_url(smtp_sink.url)
    async with SmtpTransport(settings) as t:
        ok = await t.probe_recipient(sender="helpdesk@itx.net", recipient="yes@x.test")
        no = await t.probe_recipient(sender="helpdesk@itx.net", recipient="no@x.test")
    assert ok.ok and ok.code == 250
    assert not no.ok and no.permanent and no.stage == "rcpt" and no.answer == ANSWER
    assert smtp_sink.received == []


async def test_connection_failures_read_cleanly(smtp_sink: SmtpSink) -> None:
    smtp_sink.stop()
    async with SmtpTransport(SmtpSettings.from_url(smtp_sink.url, timeout=5)) as t:
        from email.message import EmailMessage
        msg = EmailMessage()
        msg["Message-ID"] = "<c@x>"
        msg.set_content("x")
        result = await t.send(msg, sender="helpdesk@itx.net", recipients=["a@x.test"])
    assert result.code is None and result.answer.startswith("connection failed: ")
    from triage.outbox.store import answer_of
    assert answer_of(result) == result.answer and "None" not in answer_of(result)


# ---- the address policy at send time --------------------------------------------------------
REFUSED = {
    "noreply@bank.example": "role_address",
    "helpdesk+x@itx.net": "own_address",
    "helpdesk@itx.net.": "own_address",
    '"helpdesk"@itx.net': "own_address",
    "helpdesk-lead@itx.net": "own_address",
    '"v1@a.test,v2@b.test"@x.test': "multiple_addresses",
    "user@[192.0.2.1]": "ip_literal",
    "user@localhost": "dotless_domain",
}


async def test_the_sender_suppresses_what_the_policy_refuses(make_service,
                                                            smtp_sink: SmtpSink) -> None:
    svc = make_service(["dana@harborview.com"])
    async with svc.c.transport:
        await svc.c.runner.process_waiting()
        with svc.c.sessions.begin() as s:  # acknowledgments queued as the store once did
            wo = s.scalars(select(WorkOrder)).one()
            for i, addr in enumerate(REFUSED):
                s.add(Outbox(work_order_id=wo.id, kind="ack", to_addr=addr,
                             message_id=f"<bad{i}@itx.net>", template="ack/email_problem",
                             context={"subject": "x"},
                             next_attempt_at=datetime(2026, 1, 1, tzinfo=UTC)))
        sent, failed = await svc.c.runner.sender.drain()
    assert (sent, failed) == (1, 0)
    assert [r.rcpt_tos for r in smtp_sink.received] == [("dana@harborview.com",)]
    rows = {r.to_addr: r for r in outbox(svc)}
    assert {a: (rows[a].status, rows[a].attempts) for a in REFUSED} == dict.fromkeys(
        REFUSED, ("suppressed", 0))
    got = {e.detail["outbox"]: e.detail["reason"] for e in events(svc, "ack_suppressed")}
    assert {rows[a].id: why for a, why in REFUSED.items()}.items() <= got.items()
    for reason in set(REFUSED.values()):
        want = sum(1 for r in REFUSED.values() if r == reason)
        assert gauge(svc, "triage_outbox_suppressed_total", reason=reason) == want
    assert await svc.c.runner.sender.drain() == (0, 0)  # never claimed again


def test_staff_mail_may_reach_our_staff_addresses_and_client_mail_may_not() -> None:
    check = send_policy(Settings(lead_address="helpdesk-lead@itx.net",
                                 oncall_address="pager@oncall.example",
                                 own_domains=["itx-partner.com"]))

    def job(kind: str, to: str) -> Job:
        return Job(1, kind, to, 1, datetime(2026, 1, 1, tzinfo=UTC))

    assert check(job("escalation", "helpdesk-lead@itx.net")) is None
    assert check(job("page", "pager@oncall.example")) is None
    assert check(job("escalation", "helpdesk@itx.net")) == "own_address"
    assert check(job("ack", "helpdesk-lead@itx.net")) == "own_address"
    assert check(job("reply", "pager@oncall.example")) == "own_address"
    assert check(job("ack", "ops@itx-partner.com")) == "own_address"
    assert check(job("reply", "dana@harborview.com")) is None
