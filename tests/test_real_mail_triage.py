"""Issue 13 end to end: what the text model is unsure of still reaches staff and the client,
and a closing note opens nothing. Real Dovecot, real aiosmtpd, the packaged model, SQLite
and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from classifiers.predict import Classifier
from tests.factories import count, msg, received, rows
from triage.storage.models import Event, Message, Outbox, WorkOrder

pytestmark = pytest.mark.imap

UNSURE = msg(21, "Ben Ortiz <ben@ortizlaw.com>", "hi",
             "pls call me back when you can, about the thing we discussed")
FOREIGN_THANKS = msg(22, "Ann Lee <ann@leedental.com>", "Re: [ITX #48213] website down",
                     "Its back up now, thanks so much!")
TICKET_THANKS = msg(23, "raj@patelcpa.com", "RE: Ticket#5521 printer",
                    "thanks, that did it")
SPAMMY = msg(24, "Promo <deals@webpromo.example>", "Limited offer",
             "Get 50% off web design this week only. Reply to claim.")


async def test_unsure_request_is_acknowledged_and_flagged(make_service, dovecot,
                                                          smtp_sink) -> None:
    dovecot.append(UNSURE)
    svc = make_service()
    assert await svc.run_once() == 1
    (wo,) = rows(svc, WorkOrder)
    assert wo.requester == "ben@ortizlaw.com" and wo.needs_review
    assert "low confidence" in (wo.review_reason or "")
    assert [a["To"] for a in received(smtp_sink)] == ["ben@ortizlaw.com"]


async def test_closing_notes_with_foreign_ticket_numbers_open_nothing(make_service, dovecot,
                                                                      smtp_sink) -> None:
    dovecot.append(FOREIGN_THANKS)
    dovecot.append(TICKET_THANKS)
    svc = make_service()
    assert await svc.run_once() == 2
    assert count(svc, WorkOrder) == 0 and count(svc, Outbox) == 0
    notes = rows(svc, Message, Message.disposition == "non_request")
    assert sorted(m.reason for m in notes) == ["thanks", "thanks"]
    assert smtp_sink.received == []


async def test_a_closing_note_on_our_work_order_joins_its_thread(make_service, dovecot,
                                                                 smtp_sink) -> None:
    dovecot.append(msg(25, "Ann Lee <ann@leedental.com>", "Website down",
                       "Our website shows a 503 error since this morning, please fix."))
    svc = make_service()
    assert await svc.run_once() == 1
    (wo,) = rows(svc, WorkOrder)
    (ack,) = received(smtp_sink)
    dovecot.append(msg(26, "Ann Lee <ann@leedental.com>", f"Re: {ack['Subject']}",
                       "It is back up, thanks!",
                       extra=f"In-Reply-To: {ack['Message-ID']}\r\n"))
    svc2 = make_service()
    assert await svc2.run_once() == 1
    assert count(svc2, WorkOrder) == 1 and len(smtp_sink.received) == 1
    (reply,) = rows(svc2, Message, Message.disposition == "reply")
    assert reply.work_order_id == wo.id
    with svc2.c.sessions() as s:
        actions = list(s.scalars(select(Event.action).where(Event.work_order_id == wo.id)))
    assert "client_reply" in actions


async def test_a_non_request_below_the_screen_threshold_is_opened_for_review(
        make_service, dovecot, smtp_sink) -> None:
    packaged = Classifier.load()
    strict = Classifier(None, {**packaged.meta, "screen_threshold": 1.01},
                        scorer=packaged.scorer, path=packaged._path)
    dovecot.append(SPAMMY)
    svc = make_service(classifier=strict)
    assert await svc.run_once() == 1
    (wo,) = rows(svc, WorkOrder)
    assert wo.needs_review and "may not be a request" in (wo.review_reason or "")
    assert [a["To"] for a in received(smtp_sink)] == ["deals@webpromo.example"]
