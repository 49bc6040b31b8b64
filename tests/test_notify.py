"""Notifications to staff through the outbox, with the daemon's own sweep: the assignee's
mail at a real SMTP server (aiosmtpd), the webhook POST at a real local HTTP server, once;
a failing webhook retried and never duplicated; the unique key that stops a second row."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tests.deskenv import get, open_wo
from tests.factories import FRI_10, deliver, maildir_components
from triage.desk import users
from triage.notify import WEBHOOK_RECIPIENT, breached, webhook_text
from triage.outbox.enqueue import enqueue
from triage.slawatch import SlaWatch
from triage.storage.models import Event, Outbox, SlaAlert, WorkOrder


class Hook:
    """A webhook endpoint on 127.0.0.1 and a free port: answers each POST with the next of
    ``statuses`` (the last one repeats) and records every body it was sent."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.posts = list(statuses), []  # type: list[int], list[dict[str, Any]]
        self.headers: list[dict[str, str]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                hook.posts.append(json.loads(body))
                hook.headers.append(dict(self.headers))
                status = hook.statuses.pop(0) if len(hook.statuses) > 1 else hook.statuses[0]
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"no_service")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/x"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook([200])
    yield h
    h.stop()


@pytest.fixture
def failing_hook() -> Iterator[Hook]:
    h = Hook([500, 503, 200])
    yield h
    h.stop()


URGENT = (b"From: Dana <dana@harborview.com>\r\nTo: helpdesk@itx.net\r\n"
          b"Subject: <!channel> our website is down\r\nMessage-ID: <n1@harborview.com>\r\n\r\n"
          b"Our website harborview.com is down, customers get an error page. Please fix "
          b"it urgently, the shop is offline.\r\n")


def service(tmp_path: Path, db_url: str, smtp_url: str, webhook_url: str | None) -> Any:
    c, _, inbox = maildir_components(tmp_path, URGENT, smtp_url, database_url=db_url,
                                     notify_webhook_url=webhook_url, outbox_retry_base=0)
    with c.sessions.begin() as s:
        users.add_user(s, "alice", "long enough password", display_name="Alice M",
                       email="alice@itx.net")
        users.add_user(s, "bob", "long enough password", display_name="Bob B",
                       email="bob@itx.net")
    return c, inbox


def number_of(c: Any) -> str:
    with c.reads() as s:
        number = s.scalar(select(WorkOrder.number))
    assert number
    return number


def rows(c: Any, kind: str) -> list[Outbox]:
    with c.reads() as s:
        return list(s.scalars(select(Outbox).where(Outbox.kind == kind).order_by(Outbox.id)))


async def test_assignee_mail_and_urgent_webhook_arrive_once(tmp_path: Path, db_url: str,
                                                           smtp_sink, hook: Hook) -> None:
    c, inbox = service(tmp_path, db_url, smtp_sink.url, hook.url)
    runner = c.runner
    async with c.transport:
        await runner.mailbox.connect()
        assert await runner.process_waiting() == 1
        with c.reads() as s:
            wo = s.scalar(select(WorkOrder))
            assert wo is not None and wo.priority == "urgent", (wo and wo.request_type)
            number = wo.number
        c.desk.assign(number, "alice", "bob")  # told by mail
        c.desk.assign(number, "bob", "alice")  # told by mail
        c.desk.assign(number, "bob", "bob")  # to himself: nothing to tell
        ack = rows(c, "ack")[0]
        deliver(inbox, "2.b.host", (
            f"From: Dana <dana@harborview.com>\r\nTo: helpdesk@itx.net\r\n"
            f"Subject: Re: [{number}] website\r\nMessage-ID: <n2@harborview.com>\r\n"
            f"In-Reply-To: <{ack.message_id}>\r\n\r\nIt is back up now, thanks!\r\n").encode())
        assert await runner.process_waiting() == 1
        sent, failed = await runner.sender.drain()
        assert (sent, failed) == (4, 0)  # the ack, two assignments, bob's client reply
        assert (await runner.sender.drain()) == (0, 0)
        await runner.mailbox.close()
    mails = [email.message_from_bytes(r.data, policy=email.policy.default)
             for r in smtp_sink.received]
    staff = [(m["To"], m["Subject"]) for m in mails if m["To"].endswith("@itx.net")]
    assert staff == [("bob@itx.net", f"[{number}] assigned to you: <!channel> our website "
                                     "is down"),
                     ("alice@itx.net", f"[{number}] assigned to you: <!channel> our website "
                                       "is down"),
                     ("bob@itx.net", f"[{number}] client replied: <!channel> our website "
                                     "is down")]
    to_bob = [m for m in mails if m["To"] == "bob@itx.net"]
    assert "Alice M assigned work order" in to_bob[0].get_content()
    assert "It is back up now, thanks!" in to_bob[1].get_content()
    assert all(m["Auto-Submitted"] == "auto-generated" for m in to_bob)
    # The webhook: one POST, the channel mention escaped, the URL never stored.
    assert len(hook.posts) == 1
    text = hook.posts[0]["text"]
    assert text.startswith(f"New urgent work order {number} from harborview.com")
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text
    (row,) = rows(c, "webhook")
    assert (row.status, row.to_addr, row.attempts) == ("sent", WEBHOOK_RECIPIENT, 1)
    assert row.notify_key == f"webhook:urgent:{row.work_order_id}"
    assert hook.headers[0]["Idempotency-Key"] == row.message_id
    assert all(hook.url not in str(r.context) for r in rows(c, "webhook"))
    assert sorted(r.notify_key or "" for r in rows(c, "notify"))[0].startswith("assigned:")
    c.close()


async def test_a_failing_webhook_is_retried_and_not_duplicated(
        tmp_path: Path, smtp_sink, failing_hook: Hook) -> None:
    c, _ = service(tmp_path, f"sqlite:///{tmp_path / 'n.db'}", smtp_sink.url,
                   failing_hook.url)
    runner = c.runner
    async with c.transport:
        await runner.mailbox.connect()
        assert await runner.process_waiting() == 1
        # The webhook fails twice (500, 503); the mail goes out regardless.
        assert (await runner.sender.drain()) == (1, 0)
        (row,) = rows(c, "webhook")
        assert (row.status, row.attempts) == ("pending", 1) and "500" in (row.last_error or "")
        await runner.sender.drain()
        (row,) = rows(c, "webhook")
        assert (row.status, row.attempts) == ("pending", 2) and "503" in (row.last_error or "")
        # The SMTP server goes away and the outbox pauses: the webhook is not held by it.
        smtp_sink.stop()
        c.desk.reply(number_of(c), "bob", "On it.")
        assert (await runner.sender.drain()) == (0, 1)
        (row,) = rows(c, "webhook")
        assert row.status == "sent" and rows(c, "reply")[0].status == "pending"
        await runner.sender.drain()  # paused for mail; nothing left to post
        smtp_sink.start()
        await runner.mailbox.close()
    (row,) = rows(c, "webhook")
    assert (row.status, row.attempts) == ("sent", 3)
    assert len(failing_hook.posts) == 3  # two refused, one taken; then nothing more
    assert len({json.dumps(p) for p in failing_hook.posts}) == 1  # the same notification
    assert len(smtp_sink.received) == 1  # the acknowledgment; the reply waits for the relay
    with c.reads() as s:
        sent_events = list(s.scalars(select(Event).where(Event.action == "webhook_sent")))
    assert len(sent_events) == 1
    c.close()


async def test_a_webhook_that_refuses_for_good_is_dead_lettered(tmp_path: Path,
                                                                smtp_sink) -> None:
    gone = Hook([404])
    try:
        c, _ = service(tmp_path, f"sqlite:///{tmp_path / 'n.db'}", smtp_sink.url, gone.url)
        async with c.transport:
            await c.runner.mailbox.connect()
            assert await c.runner.process_waiting() == 1
            await c.runner.sender.drain()
            await c.runner.sender.drain()
            await c.runner.mailbox.close()
        (row,) = rows(c, "webhook")
        assert row.status == "dead" and len(gone.posts) == 1
        with c.reads() as s:
            assert s.scalar(select(Event.action).where(Event.action == "webhook_failed"))
        c.close()
    finally:
        gone.stop()


def test_no_webhook_rows_without_a_webhook(env) -> None:
    store, desk, sessions, _, _ = env
    n = open_wo(store, 1, "website_down", "urgent")
    desk.assign(n, "alice", "bob")
    with sessions() as s:
        kinds = sorted(s.scalars(select(Outbox.kind)))
    assert kinds == ["ack", "notify"]


def test_one_notification_one_row(env) -> None:
    store, _, sessions, policy, clock = env
    n = open_wo(store, 1, "website_down", "urgent")
    wo = get(sessions, n)
    # The SLA watch posts a breach once per target, however often it runs.
    clock.t = FRI_10 + timedelta(days=5)
    watch = SlaWatch(sessions, policy, clock, lead_address="lead@itx.net",
                     oncall_address=None, from_domain="itx.net", webhook=True)
    watch.run_once()
    watch.run_once()
    with sessions() as s:
        keys = sorted(k for k in s.scalars(select(Outbox.notify_key).where(
            Outbox.kind == "webhook")))
        targets = sorted(s.scalars(select(SlaAlert.target).where(SlaAlert.state == "breached")))
    assert targets and keys == [f"webhook:breached:{wo.id}:{t}" for t in targets]
    # The database itself refuses the same notification a second time.
    mail = breached(wo, "harborview.com", targets[0], clock.t, clock.t)
    with pytest.raises(IntegrityError), sessions.begin() as s:
        enqueue(s.connection(), [mail], domain="itx.net", now=clock.t)
    assert webhook_text(mail.context).startswith(f"SLA breached on work order {n} ")
