"""The daemon loop's manners, with a scripted mailbox and transport (the real ones are
exercised end to end in test_daemon.py): back off when the mailbox fails, keep sending
while it is away, stop hammering an SMTP server that refuses us."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from email.message import EmailMessage
from pathlib import Path

import pytest

from classifiers.predict import Classifier
from tests.factories import ScriptedMailbox
from triage.config import Settings
from triage.mailbox import PermanentMailboxError, TransientMailboxError
from triage.outbox.recorders import InTable
from triage.service import FatalMailboxError, Service
from triage.smtp import SendResult as Result
from triage.wiring import build


class ScriptedTransport:
    """A triage.smtp.Transport whose every send gets ``result``."""

    def __init__(self, result: Result) -> None:
        self.result, self.sent = result, 0

    async def __aenter__(self) -> ScriptedTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, msg: EmailMessage, *, sender: str, recipients: Sequence[str],
                   ready: Awaitable[object] | None = None) -> Result:
        if ready is not None:
            await ready  # the outbox's contract: the previous record, before handing over
        self.sent += 1
        return self.result

    async def probe_recipient(self, *, sender: str, recipient: str) -> None:
        return None

    async def check(self) -> None:
        return None


REQUEST = (b"From: dana@harborview.com\r\nSubject: cannot send email\r\nMessage-ID: <s1@h.com>"
           b"\r\n\r\nOutlook cannot send any email since this morning.\r\n")


def make(tmp_path: Path, classifier: Classifier, mailbox: ScriptedMailbox, transport,
         **kw: object) -> Service:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 't.db'}",
                        attachments_dir=tmp_path / "att", poll_interval=0.05,
                        outbox_interval=0.05, **kw)  # type: ignore[arg-type]
    return Service(settings, build(settings, classifier=classifier, mailbox=mailbox,
                                   transport=transport))


async def run_for(svc: Service, seconds: float) -> None:
    task = asyncio.create_task(svc.run())
    await asyncio.sleep(seconds)
    svc.should_exit.set()
    async with asyncio.timeout(10):
        await task


async def test_failing_polls_back_off(tmp_path: Path, classifier: Classifier) -> None:
    mbox = ScriptedMailbox(fail=TransientMailboxError)
    svc = make(tmp_path, classifier, mbox, ScriptedTransport(Result(True, False, 250, "ok")))
    await run_for(svc, 2.0)
    # Without backoff this loop made tens of thousands of attempts in 2 s.
    assert 1 <= mbox.polls <= 8
    svc.c.engine.dispose()


async def test_permanent_refusal_after_start_stops_the_daemon(tmp_path: Path,
                                                              classifier: Classifier) -> None:
    mbox = ScriptedMailbox(fail=PermanentMailboxError)
    svc = make(tmp_path, classifier, mbox, ScriptedTransport(Result(True, False, 250, "ok")))
    with pytest.raises(FatalMailboxError):
        async with asyncio.timeout(10):
            await svc.run()
    assert mbox.polls == 1


async def test_outbox_sends_while_the_mailbox_is_away(tmp_path: Path,
                                                      classifier: Classifier) -> None:
    transport = ScriptedTransport(Result(True, False, 250, "ok"))
    svc = make(tmp_path, classifier, ScriptedMailbox([REQUEST]), transport,
               outbox_retry_base=0.0)
    svc.c.runner.outbox_wakeup.clear()
    await svc.c.runner.process_waiting()  # stored and queued, not sent
    assert transport.sent == 0
    svc.c.runner.mailbox = away = ScriptedMailbox(fail_connect=True)
    await run_for(svc, 1.0)
    assert transport.sent == 1 and away.connects >= 1


async def test_smtp_login_refused_pauses_the_outbox(tmp_path: Path,
                                                    classifier: Classifier) -> None:
    refused = ScriptedTransport(Result(False, True, 535, "bad credentials", stage="auth"))
    svc = make(tmp_path, classifier, ScriptedMailbox([REQUEST]), refused,
               outbox_retry_base=5.0)
    await run_for(svc, 2.0)
    assert refused.sent == 1  # one login attempt, then a pause instead of one per sweep
    from sqlalchemy import select

    from triage.storage.models import Outbox
    with svc.c.sessions() as s:
        row = s.scalar(select(Outbox))
    assert row.status == "pending" and row.attempts == 0  # kept, not dead-lettered


async def test_sla_watch_escalates_through_the_outbox(tmp_path: Path,
                                                      classifier: Classifier) -> None:
    """Wired end to end: a request nobody answers is escalated to the lead by mail."""
    import email
    import email.policy
    from datetime import UTC, datetime, timedelta

    from triage.smtp import DirectoryTransport

    now = [datetime(2026, 11, 30, 14, 0, tzinfo=UTC)]  # Monday 09:00 New York
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'w.db'}",
                        attachments_dir=tmp_path / "att", outbox_retry_base=0.0,
                        lead_address="lead@itx.net")
    svc = Service(settings, build(settings, classifier=classifier,
                                  mailbox=ScriptedMailbox([REQUEST]),
                                  transport=DirectoryTransport(tmp_path / "out"),
                                  clock=lambda: now[0]))
    async with svc.c.transport:
        await svc.c.runner.process_waiting()
        await svc.outbox_job()
        now[0] += timedelta(hours=2)  # the 1-business-hour callback is breached
        await svc._watch_job()
        await svc._watch_job()
    mails = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
             for p in sorted((tmp_path / "out").glob("*.eml"))]
    to = sorted(str(m["To"]) for m in mails)
    assert to.count("dana@harborview.com") == 1  # the acknowledgment
    escalations = [m for m in mails if m["To"] == "lead@itx.net"]
    assert escalations and all(m["Auto-Submitted"] == "auto-generated" for m in escalations)
    assert any("breached" in str(m["Subject"]).lower() for m in escalations)
    assert len(escalations) == len({str(m["Subject"]) for m in escalations})  # no repeats
    svc.c.engine.dispose()


def test_sla_gauges_count_open_work_orders_by_worst_state(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from triage.metrics import Metrics
    from triage.storage.engine import make_engine, make_sessionmaker
    from triage.storage.migrate import upgrade
    from triage.storage.models import Client, SlaAlert, WorkOrder

    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    t = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    with sessions.begin() as s:
        c = Client(domain="x.com", name="x.com", contract="standard", created_at=t)
        s.add(c)
        s.flush()
        for i, status in enumerate(["open", "open", "resolved"], 1):
            s.add(WorkOrder(id=i, number=f"ITX-{i:06d}", client_id=c.id, requester="a@x.com",
                            request_type="email_problem", confidence=0.9, priority="urgent",
                            status=status, received_at=t, clock_start=t, response_due=t))
        s.flush()
        s.add_all([SlaAlert(work_order_id=1, target="callback", state="at_risk", created_at=t),
                   SlaAlert(work_order_id=1, target="callback", state="breached", created_at=t),
                   SlaAlert(work_order_id=2, target="callback", state="at_risk", created_at=t),
                   SlaAlert(work_order_id=3, target="callback", state="breached", created_at=t)])
    m = Metrics(process=False)
    m.refresh_from_db(sessions)
    text = m.exposition()[0].decode()
    assert 'triage_sla_open_work_orders{state="breached",target="callback"} 1.0' in text
    assert 'triage_sla_open_work_orders{state="at_risk",target="callback"} 1.0' in text
    engine.dispose()


class TimingTransport(ScriptedTransport):
    """Notes when each mail is entered (envelope) and handed over (after ``ready``)."""

    def __init__(self) -> None:
        super().__init__(Result(True, False, 250, "ok"))
        self.entered: list[float] = []
        self.handed: list[float] = []

    async def send(self, msg: EmailMessage, *, sender: str, recipients: Sequence[str],
                   ready: Awaitable[object] | None = None) -> Result:
        self.entered.append(time.monotonic())
        await asyncio.sleep(0.005)  # MAIL and RCPT
        if ready is not None:
            await ready
        self.handed.append(time.monotonic())
        await asyncio.sleep(0.005)  # DATA
        self.sent += 1
        return self.result


async def test_each_mail_is_handed_over_only_after_the_previous_one_is_recorded(
        tmp_path: Path, classifier: Classifier) -> None:
    """The sweep overlaps row N's record with row N+1's envelope, but never delivers N+1
    before N's record is committed: a kill costs at most one resend."""
    requests = [REQUEST.replace(b"s1@h.com", f"s{i}@h.com".encode())
                .replace(b"dana@", f"dana{i}@".encode()) for i in range(6)]
    transport = TimingTransport()
    svc = make(tmp_path, classifier, ScriptedMailbox(requests), transport)
    runner = svc.c.runner
    outbox = runner.sender.outbox
    # Records written to the outbox table (as on PostgreSQL), not deferred.
    outbox.recorder = InTable()
    recorded: list[float] = []
    record = outbox.record

    def slow_record(job: object, result: object) -> None:
        time.sleep(0.03)  # a record that meets the ingest worker's write lock
        record(job, result)  # type: ignore[arg-type]
        recorded.append(time.monotonic())

    outbox.record = slow_record  # type: ignore[method-assign]
    await runner.mailbox.connect()
    assert await runner.process_waiting() == 6
    assert await runner.sender.drain() == (6, 0)
    assert len(recorded) == len(transport.handed) == 6
    for n in range(5):
        assert recorded[n] <= transport.handed[n + 1], n  # the rule
        assert transport.entered[n + 1] < recorded[n], n  # the overlap that makes it fast
    with svc.c.sessions() as s:
        from sqlalchemy import select

        from triage.storage.models import Outbox
        assert [o.status for o in s.scalars(select(Outbox))] == ["sent"] * 6
    svc.c.close()


async def test_run_once_is_a_burst_of_the_same_loop_and_leaves_nothing_behind(
        tmp_path: Path, classifier: Classifier) -> None:
    """One pass, the outbox swept, then the daemon's own shutdown: the mailbox closed, the
    signal handlers as they were; a second burst starts afresh."""
    import signal

    transport = ScriptedTransport(Result(True, False, 250, "ok"))
    mbox = ScriptedMailbox([REQUEST])
    svc = make(tmp_path, classifier, mbox, transport, outbox_retry_base=0.0)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert await svc.run_once() == 1
    assert transport.sent == 1 and mbox.marked == ["1"] and mbox.polls == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert not svc.pollers[0].connected  # closed by the shutdown
    mbox.messages.append(b"From: raj@patelcpa.com\r\nSubject: website down\r\nMessage-ID: "
                         b"<s2@p.com>\r\n\r\nOur website shows a 503 error since 9am.\r\n")
    assert await svc.run_once() == 1  # the stop of the first burst does not stop the second
    assert mbox.polls == 2 and mbox.marked == ["1", "2"] and transport.sent == 2
    svc.c.engine.dispose()


async def test_a_failing_burst_raises_instead_of_backing_off(tmp_path: Path,
                                                            classifier: Classifier) -> None:
    mbox = ScriptedMailbox(fail=TransientMailboxError)
    svc = make(tmp_path, classifier, mbox, ScriptedTransport(Result(True, False, 250, "ok")))
    with pytest.raises(TransientMailboxError):
        async with asyncio.timeout(10):
            await svc.run_once()
    assert mbox.polls == 1 and not svc.pollers[0].connected
    svc.c.engine.dispose()


def test_the_ingest_worker_setting_is_explicit(tmp_path: Path, monkeypatch) -> None:
    from datetime import UTC, datetime

    from triage.config import load_settings
    from triage.errors import ConfigError

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'c.db'}")
    assert settings.ingest_worker == "process"
    with pytest.raises(ValueError, match="ingest_worker='thread'"):
        build(settings, clock=lambda: datetime(2026, 12, 1, tzinfo=UTC))
    with pytest.raises(ValueError):
        Settings(ingest_worker="fork")  # type: ignore[arg-type]
    monkeypatch.setenv("TRIAGE_INGEST_PROCESS", "false")
    with pytest.raises(ConfigError, match="TRIAGE_INGEST_WORKER"):
        load_settings()
