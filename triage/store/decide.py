"""The storing rules, each written once: one parsed, classified message and what the store
knows (``BatchContext``) in, a ``Plan`` of rows and an ``Outcome`` out.

Deciding is separate from writing so that the two ways of writing (bulk inserts for a whole
batch, one savepoint per message when a bulk write fails) cannot drift apart: they carry out
the same plans. Nothing here touches the database or the disk; the context was looked up
before, and the attachment files were saved before (``WorkOrderStore.prepare``).

The rules, in the order they apply:

1. a fetch key stored already: nothing to do (a crash came between store and mark);
2. no parse or no decision (``Ingest.error``): quarantined, raw bytes and reason kept;
3. a dedupe key stored already (Message-ID, else a hash of the raw bytes): a duplicate
   fetch, recorded against the first message, when the fingerprint agrees (From, To, Cc,
   Subject, Date, body and attachments; not the trace headers a second delivery differs
   in). The same Message-ID with another fingerprint is another message: filed under a key
   of its own, decided by the rules below, and a ``message_id_reused`` event recorded;
4. our own mail come back (from the helpdesk's address in any spelling, or a Message-ID
   we generated): a non-request;
5. screened by its headers (the classifier's header screen decided: auto-reply, bounce,
   list or bulk mail): a non-request. A text model calling a message an auto-reply or a
   bounce is only an opinion: such a message is threaded by rule 6 first, then rule 7;
6. a reply to a work order (by In-Reply-To/References, else an ``[ITX-…]`` tag) from its
   requester or the same client: joins the thread, reopens a resolved work order when it
   asks for something, ends a waiting-on-client pause, and moves the work order's version
   (a staff page made before it is refused: ``triage.desk.actions``);
7. screened by the text model (spam, thanks): a non-request;
8. otherwise a new work order, flagged for review when uncertain or when it names another
   client's work order, and acknowledged unless: the sender has no address or no
   unambiguous one; the address policy refuses it (triage.addresses: role and automated
   senders, our own addresses and domains in any spelling, quoted separators, IP literals,
   dotless domains); or a rate limit is reached, counted on the normalised address, per
   domain (not for free mail) and in all, over the last hour. Each refusal is an
   ``ack_suppressed`` event with its reason code (``ACK_REASONS``) and the outcome's
   ``ack_refused``, which the daemon counts.

A message that may answer another message of its own batch (it quotes one's Message-ID, or
a tag names a work order whose number is not known yet) cannot be decided from a context
looked up before that message was written: ``decide`` then answers None, and the caller
writes the plans made so far, looks the context up again for this message and asks again
with ``fresh=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from classifiers.types import Decision
from triage import notify
from triage.addresses import ACK_REASONS, AddressError, rate_keys, rate_refusal
from triage.messages import DueDates, ParsedEmail
from triage.parse import build_reply_headers, clean_header
from triage.screening import screening_record
from triage.sla import SlaPolicy
from triage.slamarks import apply_marks, end_pause
from triage.store.context import BatchContext, WorkOrderView
from triage.store.figures import SlaFigures, due_columns
from triage.store.model import (
    ENVIRONMENT,
    TAG_RE,
    Ingest,
    Outcome,
    StoreConfig,
    attachment_path,
    client_key,
    dedupe_key,
    fetch_dedupe_key,
    format_number,
    next_version,
    reuse_key,
)
from triage.store.plan import (
    NewClient,
    NewEvent,
    NewFetch,
    NewMail,
    NewMessage,
    NewWorkOrder,
    Plan,
    Ref,
    RowId,
    WorkOrderChange,
)

# What a reply changes on its work order.
_CHANGED = ("status", "resolved_at", "pauses", "next_due", "at_risk_at", "updated_at",
            "version")


@dataclass(frozen=True)
class Rules:
    """What the rules are parameterised by."""

    cfg: StoreConfig
    policy: SlaPolicy
    figures: SlaFigures
    clock: Callable[[], datetime]


def message_values(item: Ingest, key: str | None, disposition: str, reason: str | None,
                   now: datetime) -> dict[str, Any]:
    """The ``messages`` row of an inbound message."""
    raw, p = item.raw, item.parsed
    screened_by, screening = screening_record(item.decision, disposition, reason)
    return dict(
        direction="in", dedupe_key=key,
        message_id=None if p is None else p.message_id,
        content_hash=p.content_hash if p else "", size=raw.size,
        from_addr="" if p is None else p.from_addr,
        from_name="" if p is None else p.from_name,
        subject="" if p is None else p.subject,
        in_reply_to=None if p is None else p.in_reply_to,
        references=[] if p is None else list(p.references),
        headers=[] if p is None else [list(h) for h in p.headers],
        body_text="" if p is None else p.text,
        body_html=None if p is None else p.html,
        defects=[] if p is None else list(p.defects),
        received_at=raw.internal_date or now, disposition=disposition, reason=reason,
        fingerprint=item.fingerprint, screened_by=screened_by, screening=screening,
        created_at=now,
    )


def work_order_values(p: ParsedEmail, d: Decision, priority: str, contract: str,
                      received: datetime, due: DueDates, review_reason: str | None,
                      review_threshold: float, now: datetime) -> dict[str, Any]:
    """The columns of a new work order, and why it needs review."""
    reasons = [r for r in (review_reason, d.review_note) if r]
    if d.confidence < review_threshold or (d.needs_review and not d.review_note):
        reasons.append(f"low confidence {d.confidence:.2f}")
    if not p.from_addr:
        reasons.append("no usable sender address")
    elif not p.from_trusted:
        reasons.append(f"untrusted sender: {p.from_problem}")
    return dict(
        requester=p.from_addr, requester_name=p.from_name,
        subject=clean_header(p.subject, 500), request_type=d.label,
        confidence=float(d.confidence), priority=priority, status="new",
        needs_review=bool(reasons), review_reason="; ".join(reasons) or None,
        classifier_version=d.model_version,
        evidence=[{"source": e.source, "text": e.text, "weight": e.weight}
                  for e in d.evidence],
        cues=list(d.cues), contract=contract, received_at=received, **due_columns(due),
        root_message_id=p.message_id, created_at=now, updated_at=now, pauses=[],
    )


class Decider:
    """Decides the messages of one batch in order, each as if the ones before were written."""

    def __init__(self, ctx: BatchContext, rules: Rules) -> None:
        self.ctx, self.rules, self.cfg = ctx, rules, rules.cfg

    def decide(self, item: Ingest, *, fresh: bool = False) -> Plan | None:
        """The plan for ``item``; None when it may answer a message planned in this batch
        and ``ctx`` was not looked up after that was written (see the module docstring)."""
        ctx, raw = self.ctx, item.raw
        if item.fetch_key in ctx.already:
            return Plan(Outcome(raw.uid, "already"))
        p, d = item.parsed, item.decision
        if p is None or d is None or item.error:
            return self.quarantine(item)
        key = dedupe_key(p, raw)
        earlier, reused = self._earlier(item, p, key)
        if earlier is not None:
            return self._accept(item, key, Plan(
                Outcome(raw.uid, "duplicate", reason="same Message-ID already stored"),
                fetch=self._fetch(item, earlier, duplicate=True)))
        if reused is None:
            return self._dispose(item, key, p, d, fresh)
        # Another message under a Message-ID we have: filed under its own key, decided as
        # its content says, and the reuse recorded.
        assert p.message_id and item.fingerprint
        plan = self._dispose(item, reuse_key(p.message_id, item.fingerprint), p, d, fresh)
        if plan is not None and plan.outcome.disposition != "quarantined":
            assert plan.message is not None
            wo = (plan.new_work_order.ref if plan.new_work_order is not None
                  else plan.message.work_order)
            plan.events.append(NewEvent(wo, "message_id_reused", {
                "message_id": p.message_id, "earlier_message": reused,
                "message": plan.message.ref}, self.rules.clock()))
        return plan

    def _dispose(self, item: Ingest, key: str, p: ParsedEmail, d: Decision,
                 fresh: bool) -> Plan | None:
        """Rules 4 to 8, for a message that is neither stored nor quarantined."""
        ctx, raw = self.ctx, item.raw
        if self.cfg.from_mailbox(p.from_addr) or (p.message_id and p.message_id in ctx.own):
            return self._non_request(item, key, "own")
        if not d.is_request and d.screened_by == "header":
            return self._non_request(item, key, d.non_request_kind or "auto_reply")
        if not fresh and self._may_answer_this_batch(p):
            return None
        wo, review_reason = self._thread(p)
        if wo is not None and review_reason is None:
            return self._reply(item, key, wo, d)
        if not d.is_request:
            return self._non_request(item, key, d.non_request_kind or "other")
        try:
            return self._open(item, key, p, d, review_reason)
        except ENVIRONMENT:
            raise
        except Exception as e:  # the SLA policy refuses its type, say: this message alone
            # The type only: an error's text can carry the message's content.
            plan = self.quarantine(Ingest(raw=raw, error=f"store failed: {type(e).__name__}"))
            plan.logs.insert(0, (logging.ERROR, "storing uid=%s failed (%s); quarantining",
                                 (raw.uid, type(e).__name__)))
            return plan

    def quarantine(self, item: Ingest) -> Plan:
        """The raw bytes and the reason, filed under the fetch (nothing else is trusted)."""
        raw = item.raw
        reason = item.error or "no decision"
        key = fetch_dedupe_key(raw)
        message = self._message(Ingest(raw=raw), key, "quarantined", reason)
        if item.parsed is not None:
            message.values["subject"] = item.parsed.subject
            message.values["from_addr"] = item.parsed.from_addr
        plan = Plan(Outcome(raw.uid, "quarantined", reason=reason), message=message,
                    fetch=self._fetch(item, message.ref))
        plan.logs.append((logging.WARNING, "quarantined uid=%s: %s", (raw.uid, reason)))
        return self._accept(item, key, plan)

    # ---- the rules ------------------------------------------------------------------------
    def _earlier(self, item: Ingest, p: ParsedEmail, key: str
                 ) -> tuple[RowId | None, RowId | None]:
        """(the message this one duplicates, or None; the message whose Message-ID it
        reuses, or None). The same Message-ID is the same message only when the fingerprint
        agrees too: a web form, a scanner or a broken mailer may send many messages under
        one ID, while a message delivered twice differs only in its trace headers."""
        fp = item.fingerprint
        if p.message_id and fp:
            again = self.ctx.messages.get(reuse_key(p.message_id, fp))
            if again is not None:
                return again[0], None
        first = self.ctx.messages.get(key)
        if first is None:
            return None, None
        message, stored_fp = first
        if p.message_id and fp and stored_fp is not None and stored_fp != fp:
            return None, message
        return message, None

    def _may_answer_this_batch(self, p: ParsedEmail) -> bool:
        ids = [i for i in (p.in_reply_to, *p.references) if i]
        m = TAG_RE.search(p.subject)
        return any(i in self.ctx.batch_message_ids for i in ids) or bool(
            m and m.group(1) not in self.ctx.numbers and self.ctx.opened)

    def _thread(self, p: ParsedEmail) -> tuple[WorkOrderView | None, str | None]:
        """The work order this answers, and a review reason when it may not join it."""
        ctx = self.ctx
        ids = [i for i in (p.in_reply_to, *p.references) if i]
        wo_id = next((ctx.outbox_thread[i] for i in ids if i in ctx.outbox_thread), None)
        if wo_id is None:
            wo_id = next((ctx.message_thread[i] for i in ids if i in ctx.message_thread), None)
        wo = ctx.work_orders.get(wo_id) if wo_id is not None else None
        if wo is None and (m := TAG_RE.search(p.subject)):
            number_of = ctx.numbers.get(m.group(1))
            wo = ctx.work_orders.get(number_of) if number_of is not None else None
        if wo is None:
            return None, None
        # Headers and tags can both be forged: only the requester or the same client may
        # add to (and reopen) a work order, and only when From names one sender
        # unambiguously (triage.sender); anyone else opens their own, flagged for review.
        if not p.from_trusted:
            return wo, f"refers to {wo.number} but its From is untrusted; opened separately"
        if p.from_addr == wo.requester or client_key(p.from_addr) == wo.client_key:
            return wo, None
        return wo, f"refers to {wo.number} of another client; opened separately"

    def _reply(self, item: Ingest, key: str, wo: WorkOrderView, d: Decision) -> Plan:
        now = self.rules.clock()
        after = wo.copy()
        # A client's reply is a change staff must see before they act: a page made before
        # it is refused (the collision guard), and its events name the version they made.
        after.version = v = next_version(wo.version)
        detail: dict[str, Any] = {"from": item.parsed.from_addr if item.parsed else ""}
        events: list[NewEvent] = []
        # "thanks, all fixed" joins the thread but does not reopen a resolved work order.
        if after.status == "resolved" and d.is_request:
            after.status, after.resolved_at = "open", None
            events.append(NewEvent(wo.id, "reopened", detail, now, wo_version=v))
        elif after.status == "waiting_client":
            # The client answered: the ball is ours again and the clocks run (the pause ends).
            end_pause(after, now)  # type: ignore[arg-type]
            after.status = "open"
            events.append(NewEvent(wo.id, "status",
                                   {**detail, "status": "open", "was": "waiting_client"}, now,
                                   wo_version=v))
        apply_marks(after, self.rules.policy, self.cfg.at_risk_fraction)  # type: ignore[arg-type]
        events.append(NewEvent(wo.id, "client_reply", detail, now, wo_version=v))
        after.updated_at = now
        message = self._message(item, key, "reply", None, wo.id)
        plan = Plan(Outcome(item.raw.uid, "reply", work_order=wo.number), message=message,
                    fetch=self._fetch(item, message.ref), events=events,
                    changes=[WorkOrderChange(wo.id, {c: getattr(after, c) for c in _CHANGED})])
        if wo.assignee_email and item.parsed is not None:
            # The assignee hears of it by mail, once per reply (the version it made).
            plan.mails.append(NewMail(
                notify.NOTIFY, wo.id, wo.assignee_email, notify.TEMPLATE,
                notify.client_reply_context(wo, wo.client_name or wo.client_key,
                                            item.parsed.text, now),
                notify_key=f"client_reply:{wo.id}:{v}"))
        self.ctx.work_orders[wo.id] = after
        return self._accept(item, key, plan)

    def _open(self, item: Ingest, key: str, p: ParsedEmail, d: Decision,
              review_reason: str | None) -> Plan:
        raw = item.raw
        now = self.rules.clock()
        # The mailbox's arrival time starts the clock (mail that waited while we were down
        # is not younger than it is); a server clock ahead of ours is not trusted.
        plan = self.open_work_order(p, d, min(raw.internal_date or now, now),
                                    review_reason=review_reason, uid=raw.uid)
        assert plan.new_work_order is not None
        plan.message = self._message(item, key, "work_order", None, plan.new_work_order.ref)
        plan.fetch = self._fetch(item, plan.message.ref)
        return self._accept(item, key, plan)

    def open_work_order(self, p: ParsedEmail, d: Decision, received: datetime, *,
                        review_reason: str | None = None, uid: str = "",
                        actor: str = "system", detail: dict[str, Any] | None = None) -> Plan:
        """Rule 8 without the message: a new work order for ``p`` under its sender's client
        and contract, due dates counted from ``received``, its ``created`` event (by
        ``actor``, with ``detail`` added) and the acknowledgment or why there is none.

        The message's own rows are the caller's: ``decide`` adds them for fresh mail, and
        staff opening a message stored earlier (``WorkOrderStore.open_work_order``) have
        them already. Raises what the SLA policy raises, before anything is planned."""
        now = self.rules.clock()
        ckey = client_key(p.from_addr)
        known = self.ctx.clients.get(ckey)
        client: RowId
        new_client: NewClient | None = None
        if known is not None:
            client, contract = known
        else:
            client, contract = Ref(), "standard"
            new_client = NewClient(client, ckey, contract)
        priority = d.priority or "normal"
        due, next_due, at_risk_at = self.rules.figures.get(d.label, priority, contract,
                                                           received)
        values = work_order_values(p, d, priority, contract, received, due, review_reason,
                                   self.cfg.review_threshold, now)
        # Inserted as Core rows: every column is given, the ORM's defaults are not applied.
        values.update(first_response_at=None, resolved_at=None, assignee_id=None,
                      promised_at=None, called_back_at=None, next_due=next_due,
                      at_risk_at=at_risk_at)
        refused = self._ack_refused(p)
        wo = NewWorkOrder(Ref(), client, values)
        plan = Plan(
            Outcome(uid, "work_order", acked=refused is None, request_type=d.label,
                    priority=priority, confidence=float(d.confidence),
                    needs_review=bool(values["needs_review"]),
                    ack_refused=None if refused is None else refused[0]),
            client=new_client, new_work_order=wo,
            events=[NewEvent(wo.ref, "created", {
                "type": d.label, "priority": priority,
                "confidence": round(float(d.confidence), 4), **(detail or {})}, now, actor)])
        if priority == "urgent" and self.cfg.notify_webhook:
            plan.mails.append(NewMail(
                notify.WEBHOOK, wo.ref, notify.WEBHOOK_RECIPIENT, notify.WEBHOOK,
                notify.urgent_context(None, p.subject, ckey, d.label, now),
                notify_key="webhook:urgent:{wo}"))
        if refused is None:
            in_reply_to, references = build_reply_headers(p)
            plan.mails.append(NewMail("ack", wo.ref, p.from_addr, f"ack/{d.label}", {
                "in_reply_to": in_reply_to, "references": list(references),
                "subject": clean_header(p.subject, 200)}))
        else:
            reason, why = refused
            if reason.startswith("rate_"):
                plan.logs.append((logging.INFO, "ack rate limit (%s) reached (work order %s)",
                                  (reason, lambda: format_number(wo.ref.get()))))
            plan.events.append(NewEvent(wo.ref, "ack_suppressed",
                                        {"reason": reason, "why": why}, now))
        return plan

    def _ack_refused(self, p: ParsedEmail) -> tuple[str, str] | None:
        """Why this sender gets no acknowledgment: (an ``ACK_REASONS`` code, the words an
        event shows), or None. The address policy is the one the outbox applies again at
        send time; the rate limits count what ``_accept`` adds within the batch."""
        to_addr = p.from_addr
        if not p.from_trusted:  # no From, or one that names no one sender (triage.sender)
            return "untrusted_sender", f"untrusted sender: {p.from_problem}"
        if not to_addr:
            return "no_sender", ACK_REASONS["no_sender"]
        reason = self.cfg.send_policy.refusal(to_addr)
        if reason is not None:
            return reason, ACK_REASONS[reason]
        key, domain = rate_keys(to_addr)  # parseable: the policy would have refused it
        ctx, limits = self.ctx, self.cfg.rate_limits
        per_domain = None if domain is None else ctx.ack_domain_counts.get(domain, 0)
        reason = rate_refusal(ctx.ack_counts.get(key, 0), per_domain, ctx.ack_total, limits)
        if reason is None:
            return None
        limit = {"rate_address": limits.per_address, "rate_domain": limits.per_domain,
                 "rate_global": limits.overall}[reason]
        return reason, f"{ACK_REASONS[reason]} ({limit} an hour)"

    def _non_request(self, item: Ingest, key: str, kind: str) -> Plan:
        message = self._message(item, key, "non_request", kind)
        return self._accept(item, key, Plan(
            Outcome(item.raw.uid, "non_request", reason=kind,
                    screened_by=message.values["screened_by"]), message=message,
            fetch=self._fetch(item, message.ref)))

    # ---- rows -----------------------------------------------------------------------------
    def _message(self, item: Ingest, key: str, disposition: str, reason: str | None,
                 wo: RowId | None = None) -> NewMessage:
        raw, p = item.raw, item.parsed
        values = message_values(item, key, disposition, reason, self.rules.clock())
        atts = [] if p is None else [dict(
            filename=a.filename, content_type=a.content_type, size=a.size, sha256=a.sha256,
            path=str(attachment_path(self.cfg.attachments_dir, a.sha256)))
            for a in p.attachments]
        data = raw.data if raw.data is not None else raw.head
        return NewMessage(Ref(), wo, values, data, raw.data is None, atts)

    def _fetch(self, item: Ingest, message: RowId, duplicate: bool = False) -> NewFetch:
        raw = item.raw
        return NewFetch(raw.mailbox, raw.uidvalidity, raw.uid, message, duplicate,
                        self.rules.clock())

    def _accept(self, item: Ingest, key: str, plan: Plan) -> Plan:
        """Remember what ``plan`` adds, for the messages after it in this batch."""
        ctx = self.ctx
        if plan.fetch is not None:
            ctx.already.add(item.fetch_key)
        if plan.message is not None:
            ctx.messages[key] = (plan.message.ref, plan.message.values["fingerprint"])
            mid = plan.message.values.get("message_id")
            if mid:
                ctx.batch_message_ids.add(mid)
        if plan.client is not None:
            ctx.clients[plan.client.key] = (plan.client.ref, plan.client.contract)
        if plan.new_work_order is not None:
            ctx.opened += 1
        for mail in plan.mails:
            if mail.kind != "ack":
                continue
            ctx.ack_total += 1
            try:
                key, domain = rate_keys(mail.to_addr)
            except AddressError:  # never planned: the policy refuses such an address
                continue
            ctx.ack_counts[key] = ctx.ack_counts.get(key, 0) + 1
            if domain is not None:
                ctx.ack_domain_counts[domain] = ctx.ack_domain_counts.get(domain, 0) + 1
        return plan


__all__ = ["Decider", "Rules", "message_values", "work_order_values"]
