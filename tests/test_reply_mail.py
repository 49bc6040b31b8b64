"""A staff reply end to end: queued by the desk, sent by the daemon's outbox sweep over real
SMTP (aiosmtpd), threaded on the client's message, and the client's answer to it threads
back onto the same work order."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from sqlalchemy import select

from tests.factories import OUTLOOK_REQUEST, deliver, maildir_components
from triage.storage.models import Message, Outbox, WorkOrder


async def test_reply_is_sent_threaded_and_the_answer_threads_back(tmp_path: Path,
                                                                  smtp_sink) -> None:
    c, _, inbox = maildir_components(tmp_path, OUTLOOK_REQUEST, smtp_sink.url)
    runner = c.runner
    async with c.transport:
        await runner.mailbox.connect()
        assert await runner.process_waiting() == 1
        with c.reads() as s:
            number = s.scalar(select(WorkOrder.number))
        assert number
        c.desk.reply(number, "bob", "Hello Dana,\n\nplease restart Outlook.", agent_name="Bob B")
        sent, failed = await runner.sender.drain()
        assert (sent, failed) == (2, 0)  # the acknowledgment, then the reply
        mails = [email.message_from_bytes(r.data, policy=email.policy.default)
                 for r in smtp_sink.received]
        reply = next(m for m in mails if "Auto-Submitted" not in m)
        assert reply["To"] == "dana@harborview.com"
        assert f"[{number}]" in reply["Subject"] and reply["Subject"].startswith("Re:")
        assert reply["In-Reply-To"] == "<s1@harborview.com>"
        assert "<s1@harborview.com>" in reply["References"]
        assert reply["X-ITX-Work-Order"] == number
        body = reply.get_content()
        assert "please restart Outlook." in body and "Bob B, ITX Helpdesk" in body
        with c.reads() as s:
            row = s.scalar(select(Outbox).where(Outbox.kind == "reply"))
            assert row is not None and row.status == "sent"
            assert reply["Message-ID"] == f"<{row.message_id}>"

        # Dana answers our reply (no tag in the subject): it joins the work order.
        answer = (f"From: dana@harborview.com\r\nTo: helpdesk@itx.net\r\n"
                  f"Subject: Re: restart\r\nMessage-ID: <s2@harborview.com>\r\n"
                  f"In-Reply-To: {reply['Message-ID']}\r\n\r\nDone, still broken.\r\n").encode()
        deliver(inbox, "2.b.host", answer)
        assert await runner.process_waiting() == 1
        await runner.mailbox.close()
    with c.reads() as s:
        m = s.scalar(select(Message).where(Message.message_id == "s2@harborview.com"))
        wo = s.scalar(select(WorkOrder))
        assert m is not None and wo is not None
        assert (m.disposition, m.work_order_id) == ("reply", wo.id)
        assert s.scalar(select(WorkOrder.id).where(WorkOrder.id != wo.id)) is None
    c.close()
