"""End to end: a real Dovecot, a real aiosmtpd sink, the real classifier and SLA policy,
SQLite and PostgreSQL. Mail goes in by IMAP APPEND; we assert on the database and on what
the sink received."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy

import httpx
import pytest
from sqlalchemy import select

from tests.factories import count, free_port, msg, received, rows
from triage.storage.models import Event, Fetch, Message, Outbox, RawBlob, WorkOrder

pytestmark = pytest.mark.imap


REQUESTS = [
    msg(
        1,
        "Dana Whitfield <dana@harborviewdental.com>",
        "Locked out of my email",
        "Hi, I typed my password wrong too many times and now Outlook and webmail both say "
        "my account is locked. Can you reset my password please? Dana",
    ),
    msg(
        2,
        "raj@patelcpa.com",
        "WEBSITE DOWN",
        "Our website patelcpa.com is showing a 503 error since this morning, clients can't "
        "reach the upload portal. Please fix asap.",
    ),
    msg(
        3,
        "Maria Lopez <maria@sunriseproperty.com>",
        "new hire",
        "We have a new office assistant starting Monday, Kevin Brandt. Please set up an email "
        "account kbrandt@sunriseproperty.com for him. Thanks, Maria",
    ),
]
NON_REQUESTS = [
    msg(
        4,
        "dana@harborviewdental.com",
        "Automatic reply: Locked out of my email",
        "I am out of the office until Monday.",
        extra="Auto-Submitted: auto-replied\r\n",
    ),
    msg(
        5,
        "MAILER-DAEMON@mx.example.net",
        "Undelivered Mail Returned to Sender",
        "This is the mail system at host mx.example.net.\r\n\r\n--B\r\n",
        extra="Return-Path: <>\r\n",
        ctype='multipart/report; report-type=delivery-status; boundary="B"',
    ),
    msg(
        6,
        "news@hostingdeals.example",
        "Black Friday: 50% off VPS plans",
        "Big savings on hosting this week only. Unsubscribe here.",
        extra="List-Id: <deals.hostingdeals.example>\r\n"
        "List-Unsubscribe: <mailto:unsub@hostingdeals.example>\r\nPrecedence: bulk\r\n",
    ),
]


async def test_mixed_batch_then_reply(make_service, dovecot, smtp_sink) -> None:
    for raw in REQUESTS + NON_REQUESTS:
        dovecot.append(raw)
    svc = make_service()
    assert await svc.run_once() == 6

    wos = rows(svc, WorkOrder)
    assert [(w.requester, w.request_type, w.priority) for w in wos] == [
        ("dana@harborviewdental.com", "password_reset", "urgent"),
        ("raj@patelcpa.com", "website_down", "urgent"),
        ("maria@sunriseproperty.com", "new_account", "normal"),
    ]
    nonreq = rows(svc, Message, Message.disposition == "non_request")
    assert sorted(m.reason for m in nonreq) == ["auto_reply", "bounce", "bulk"]

    acks = received(smtp_sink)
    assert [a["To"] for a in acks] == [w.requester for w in wos]
    for ack, wo, raw in zip(acks, wos, REQUESTS, strict=True):
        original = email.message_from_bytes(raw, policy=email.policy.default)
        assert ack["Auto-Submitted"] == "auto-replied"
        assert ack["In-Reply-To"] == original["Message-ID"]
        assert original["Message-ID"] in ack["References"]
        assert f"[{wo.number}]" in ack["Subject"] and ack["Subject"].startswith("Re: ")
        text = ack.get_body(("plain",)).get_content()
        assert wo.number in text and "800-600-7785" in text if wo.priority == "urgent" else True
    assert all(o.status == "sent" for o in rows(svc, Outbox))

    # Everything is marked on the server: a second run finds nothing.
    assert await make_service().run_once() == 0

    # The client answers the acknowledgment: threaded, no new work order, no new ack.
    first_ack = acks[0]
    reply = msg(
        7,
        "dana@harborviewdental.com",
        f"Re: {first_ack['Subject']}",
        "Still locked out, please call me.",
        extra=f"In-Reply-To: {first_ack['Message-ID']}\r\n"
        f"References: {first_ack['Message-ID']}\r\n",
    )
    dovecot.append(reply)
    svc2 = make_service()
    assert await svc2.run_once() == 1
    assert count(svc2, WorkOrder) == 3 and len(smtp_sink.received) == 3
    (r,) = rows(svc2, Message, Message.disposition == "reply")
    assert r.work_order_id == wos[0].id


async def test_reused_message_id_through_dovecot(make_service, dovecot, smtp_sink) -> None:
    """A web form sends every request under one Message-ID, and a relay delivers one of
    them twice: two work orders and two acknowledgments, the second delivery a duplicate."""
    form = "<contact-form@patelcpa.com>"
    first = msg(2, "raj@patelcpa.com", "WEBSITE DOWN", "Our website patelcpa.com shows a "
                "503 error since this morning. Please fix asap.", mid=form)
    other = msg(3, "maria@sunriseproperty.com", "new hire", "Please set up an email account "
                "kbrandt@sunriseproperty.com for Kevin Brandt, starting Monday.", mid=form)
    twice = b"Received: from relay2.patelcpa.com by mx.itx.net\r\n" + first
    for raw in (first, other, twice):
        dovecot.append(raw)
    svc = make_service()
    assert await svc.run_once() == 3
    wos = rows(svc, WorkOrder)
    assert [w.requester for w in wos] == ["raj@patelcpa.com", "maria@sunriseproperty.com"]
    messages = rows(svc, Message)
    assert [m.work_order_id for m in messages] == [w.id for w in wos]
    with svc.c.sessions() as s:
        assert s.get(RawBlob, messages[1].id).data == other  # its own raw bytes
        fetches = s.scalars(select(Fetch).order_by(Fetch.uid)).all()
    assert [(f.message_pk, f.duplicate) for f in fetches] == [
        (messages[0].id, False), (messages[1].id, False), (messages[0].id, True)]
    assert count(svc, Event, Event.action == "message_id_reused") == 1
    assert sorted(a["To"] for a in received(smtp_sink)) == [
        "maria@sunriseproperty.com", "raj@patelcpa.com"]


async def test_crash_between_store_and_mark_gives_no_duplicates(
    make_service, dovecot, smtp_sink
) -> None:
    for raw in REQUESTS:
        dovecot.append(raw)
    svc = make_service()

    async def crash(_batch: object) -> None:
        raise RuntimeError("killed between store and mark")

    svc.c.runner.mailbox.mark_done = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await svc.run_once()
    assert count(svc, WorkOrder) == 3 and len(smtp_sink.received) == 0  # stored, not sent

    again = make_service()
    assert await again.run_once() == 3  # fetched again because never marked...
    assert count(again, WorkOrder) == 3  # ...but stored once
    assert len(smtp_sink.received) == 3  # and acknowledged once
    assert await make_service().run_once() == 0  # now marked


async def test_uidvalidity_change_does_not_duplicate(make_service, dovecot, smtp_sink) -> None:
    for raw in REQUESTS:
        dovecot.append(raw)
    assert await make_service().run_once() == 3
    dovecot.change_uidvalidity()
    svc = make_service()
    await svc.run_once()
    assert count(svc, WorkOrder) == 3 and len(smtp_sink.received) == 3


async def test_smtp_down_then_up_delivers_once_in_order(make_service, dovecot, smtp_sink) -> None:
    smtp_sink.stop()
    for raw in REQUESTS:
        dovecot.append(raw)
    svc = make_service()
    await svc.run_once()
    assert count(svc, WorkOrder) == 3
    pending = rows(svc, Outbox)
    assert all(o.status == "pending" for o in pending)
    # Only the first was tried: a failure ends the sweep, so order is kept; a server that
    # cannot be reached is not the message's fault, so no attempt is counted against it.
    assert pending[0].last_error and not pending[1].last_error
    assert [o.attempts for o in pending] == [0, 0, 0]
    smtp_sink.start()
    await make_service().run_once()
    acks = received(smtp_sink)
    assert [a["To"] for a in acks] == [w.requester for w in rows(svc, WorkOrder)]
    assert len({a["Message-ID"] for a in acks}) == 3
    await make_service().run_once()
    assert len(smtp_sink.received) == 3


async def test_bad_input_is_recorded_and_daemon_goes_on(make_service, dovecot, smtp_sink) -> None:
    bad = [
        b"From: a@broken.test\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="never-closed"\r\n\r\n'
        b"--never-closed\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\n%%%not base64%%%\r\n",
        b"From: b@charset.test\r\nSubject: =?x-unknown?q?caf=E9?=\r\nMessage-ID: <cs@x>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nLe serveur est en panne \xe9\xe8\r\n",
        b"From: c@nomsgid.test\r\nSubject: printer\r\n\r\nplease set up our new printer\r\n",
    ]
    big = (
        b"From: d@big.test\r\nSubject: huge scan\r\nMessage-ID: <big@x>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="Z"\r\n\r\n--Z\r\n'
        b"Content-Type: text/plain\r\n\r\nsee scan\r\n--Z\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + (
            b"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB\r\n"
            * 400_000
        )
        + b"--Z--\r\n"
    )
    assert len(big) > 30_000_000
    for raw in bad:
        dovecot.append(raw)
    dovecot.append(big)
    dovecot.append(REQUESTS[1])
    svc = make_service()
    assert await svc.run_once() == 5
    dispositions = [m.disposition for m in rows(svc, Message)]
    assert len(dispositions) == 5
    quarantined = rows(svc, Message, Message.disposition == "quarantined")
    assert any((m.reason or "").startswith("oversize") for m in quarantined)
    assert rows(svc, WorkOrder, WorkOrder.requester == "raj@patelcpa.com")
    assert await make_service().run_once() == 0  # all five marked, none lost


async def test_daemon_idle_survives_imap_restart_and_reports_it(make_service, dovecot,
                                                               smtp_sink) -> None:
    port = free_port()
    svc = make_service(poll_interval=1.0, ops_port=port, metrics_token="scrape-Token-1")
    task = asyncio.create_task(svc.run())
    base = f"http://127.0.0.1:{port}"

    async def wait_for(n: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while len(smtp_sink.received) < n:
                await asyncio.sleep(0.1)

    async def ready(client: httpx.AsyncClient, want: int, timeout: float = 20.0) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    r = await client.get(f"{base}/readyz")
                    if r.status_code == want:
                        return r.json()
                await asyncio.sleep(0.2)

    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.to_thread(dovecot.append, REQUESTS[0])
            await wait_for(1)
            assert (await client.get(f"{base}/healthz")).json() == {"status": "ok"}
            body = await ready(client, 200)
            assert body["checks"] == {"database": "ok", "mailbox": "ok", "smtp": "ok"}
            assert (await client.get(f"{base}/metrics")).status_code == 401
            scrape = (await client.get(f"{base}/metrics",
                                       headers={"Authorization": "Bearer scrape-Token-1"})).text
            assert ('triage_work_orders_opened_total{priority="urgent",'
                    'request_type="password_reset"} 1.0') in scrape
            assert "harborview" not in scrape and "@" not in scrape

            await asyncio.to_thread(dovecot.stop)
            body = await ready(client, 503)  # /readyz says which part is wrong
            assert body["checks"]["mailbox"] != "ok" and body["checks"]["database"] == "ok"
            await asyncio.to_thread(dovecot.start)
            await asyncio.to_thread(dovecot.append, REQUESTS[1])
            await wait_for(2)
            await ready(client, 200)
    finally:
        svc.should_exit.set()
        async with asyncio.timeout(15):
            await task
    assert count(svc, WorkOrder) == 2 and len(smtp_sink.received) == 2
