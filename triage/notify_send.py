"""Sending staff notifications (``triage.notify`` says what they are): the ``notify`` mail
rendered for the SMTP sweep, and the webhook rows POSTed by their own sweep."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

import httpx
from jinja2 import Environment

from triage.notify import TEMPLATE, WEBHOOK, webhook_text
from triage.outbox.store import Job, OutboxStore
from triage.parse import clean_header
from triage.smtp import SendResult

log = logging.getLogger(__name__)

# Answers after which the same POST may succeed later; any other 4xx is permanent.
RETRY_STATUSES = frozenset({408, 425, 429})


def render_notify(env: Environment, ctx: Mapping[str, Any], message_id: str, to_addr: str,
                  from_address: str) -> EmailMessage:
    """A ``notify`` row's mail (plain text; the client's words only as quoted text)."""
    text = env.get_template(TEMPLATE).render(**ctx)
    what = "assigned to you" if ctx.get("event") == "assigned" else "client replied"
    msg = EmailMessage()
    msg["From"] = formataddr(("ITX Triage", from_address))
    msg["To"] = to_addr
    msg["Subject"] = clean_header(f"[{ctx['number']}] {what}: {ctx.get('subject') or ''}", 250)
    msg["Date"] = format_datetime(datetime.fromisoformat(ctx["at"]))
    msg["Message-ID"] = f"<{message_id}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no autoreply should answer it
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-ITX-Work-Order"] = str(ctx["number"])
    msg.set_content(text)
    return msg


async def post(client: httpx.AsyncClient, url: str, job: Job) -> SendResult:
    """One webhook POST, its answer as the outbox records a send. Slack and Teams incoming
    webhooks both take ``{"text": ...}``; the row's Message-ID goes along as an
    ``Idempotency-Key`` for endpoints that honour one."""
    try:
        r = await client.post(url, json={"text": webhook_text(job.context)},
                              headers={"Idempotency-Key": job.message_id})
    except httpx.HTTPError as e:
        # The exception's text may hold the URL, which is a secret: its type only.
        return SendResult(False, False, None, f"webhook unreachable: {type(e).__name__}")
    answer = r.text.strip().replace("\n", " ")[:200]
    if 200 <= r.status_code < 300:
        return SendResult(True, False, r.status_code, answer or "ok")
    permanent = 400 <= r.status_code < 500 and r.status_code not in RETRY_STATUSES
    return SendResult(False, permanent, r.status_code, answer or "refused")


class WebhookSender:
    """Sends the outbox's webhook rows; run by the outbox sweep (``Sender.drain``).

    ``run_db`` runs the outbox's database work where the sweep runs it (its own thread)."""

    def __init__(self, outbox: OutboxStore, url: str, *, timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.outbox, self.url = outbox, url
        self._timeout, self._transport = timeout, transport

    async def sweep(self, run_db: Callable[..., Awaitable[Any]], limit: int = 50
                    ) -> tuple[int, int]:
        """(sent, failed). Stops at the first failure: later rows wait, in order."""
        jobs: list[Job] = await run_db(lambda: self.outbox.claim(limit, kinds=(WEBHOOK,)))
        if not jobs:
            return 0, 0
        sent = failed = 0
        async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport,
                                     follow_redirects=False) as client:
            for n, job in enumerate(jobs):
                result = await post(client, self.url, job)
                await run_db(self.outbox.record, job, result)
                if result.ok:
                    sent += 1
                    continue
                failed += 1
                log.warning("webhook row %s not delivered (%s): %s", job.id,
                            "permanent" if result.permanent else "transient", result.answer)
                if not result.permanent:
                    await run_db(self.outbox.release, jobs[n + 1:])
                    break
        if sent:
            await run_db(self.outbox.flush)
        return sent, failed


__all__ = ["RETRY_STATUSES", "WebhookSender", "post", "render_notify"]
