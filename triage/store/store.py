"""``WorkOrderStore``: a batch of fetched messages stored in one transaction.

Before the transaction, ``prepare`` does what needs no lock: attachment files go to disk
(once per message, whichever writer runs) and the due dates of most new work orders are
worked out. Inside it the bulk writer stores the batch under one savepoint; when that
fails, the savepoint is rolled back and the careful writer stores it message by message.
The mailbox checkpoint is written in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from classifiers.types import Decision
from triage.messages import ParsedEmail
from triage.outbox.enqueue import sender_domain
from triage.sla import SlaPolicy
from triage.storage.engine import in_chunks
from triage.storage.models import Client, Event, MailboxState
from triage.store.context import lookup_sender, stored_fetch_keys
from triage.store.decide import Decider, Rules
from triage.store.figures import SlaFigures
from triage.store.model import (
    ENVIRONMENT,
    Ingest,
    Outcome,
    RetryBatch,
    StoreConfig,
    client_key,
    format_number,
    save_attachment,
)
from triage.store.plan import Plan
from triage.store.rows import claim_client, write_rows
from triage.store.write_bulk import store_in_bulk
from triage.store.write_careful import store_carefully

log = logging.getLogger("triage.store")


@dataclass(frozen=True)
class Opened:
    work_order_id: int
    number: str
    acked: bool
    ack_refused: str | None = None  # the reason code when the acknowledgment was withheld


class WorkOrderStore:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: SlaPolicy,
        config: StoreConfig,
        clock: Callable[[], datetime],
        reads: sessionmaker[Session] | None = None,
    ) -> None:
        self._sessions = sessions
        self._reads = reads or sessions
        self._policy = policy
        self._cfg = config
        self._clock = clock
        self._domain = sender_domain(config.from_address)
        self.fast = True  # False: every batch takes the careful writer (tests compare the two)
        self.careful_batches = 0  # batches the bulk writer handed to the careful one

    def stored_uids(self, mailbox: str, uidvalidity: int, uids: Sequence[str]) -> set[str]:
        """UIDs of this batch already stored: after a crash before ``mark_done`` they come
        back, and need not be parsed again."""
        if not uids:
            return set()
        try:
            with self._reads() as s:
                keys = stored_fetch_keys(s.connection(), ((mailbox, uidvalidity, u) for u in uids))
        except ENVIRONMENT as e:  # the database away: the batch waits, as a failed write
            raise RetryBatch(f"{type(e).__name__} while reading a batch's fetch keys") from e
        return {uid for _, _, uid in keys}

    def store_batch(self, items: Sequence[Ingest]) -> list[Outcome]:
        try:
            rules = self.prepare(items)
        except ENVIRONMENT as e:
            raise RetryBatch(f"{type(e).__name__} while storing a batch") from e
        plans: list[Plan] | None = None
        with self._sessions.begin() as s:
            if self.fast and items:
                try:
                    with s.begin_nested():
                        plans = store_in_bulk(s, items, rules, self._domain)
                except ENVIRONMENT as e:
                    raise RetryBatch(f"{type(e).__name__} while storing a batch") from e
                except Exception as e:  # never lose the batch: the careful writer stores it
                    # The type only, as there: a database error's text can carry a body.
                    log.warning("bulk store failed (%s); storing message by message",
                                type(e).__name__)
                    self.careful_batches += 1
                    plans = None
            if plans is None:
                plans = store_carefully(s, items, rules, self._domain)
            if self._cfg.mailbox_state and items:
                self._checkpoint(s, items)
        for plan in plans:
            plan.emit_logs()
        return [plan.result() for plan in plans]

    def open_work_order(self, s: Session, p: ParsedEmail, d: Decision, received: datetime,
                        *, actor: str, detail: dict[str, Any] | None = None,
                        now: datetime | None = None) -> Opened:
        """A work order for a message stored earlier without one (staff open a screened
        message), by the rules fresh mail meets (``Decider.open_work_order``): its sender's
        client and contract, due dates from ``received``, the acknowledgment under the same
        rate limit. Written in the caller's transaction ``s``; linking the stored message
        to the work order is the caller's. Raises what the SLA policy raises."""
        rules = self.prepare(())
        if now is not None:  # the staff action's own time, for its events and rows
            at = now
            rules = replace(rules, clock=lambda: at)
        now = rules.clock()
        conn = s.connection()
        plan = Decider(lookup_sender(conn, p.from_addr, now), rules).open_work_order(
            p, d, received, actor=actor, detail=detail)
        if plan.client is not None:
            claim_client(s, plan.client, now)
        write_rows(conn, [plan], domain=self._domain, now=now)
        plan.emit_logs()
        assert plan.new_work_order is not None
        wo_id = plan.new_work_order.ref.get()
        return Opened(wo_id, format_number(wo_id), plan.outcome.acked,
                      plan.outcome.ack_refused)

    def prepare(self, items: Sequence[Ingest]) -> Rules:
        """What can be done before the write transaction: attachment files saved
        (content-addressed: a rolled-back batch leaves an orphan at most) and each request's
        due dates and queue marks under its client's contract as read now.

        On SQLite the write transaction holds the database's only write lock, which the
        outbox needs for every mail it records as sent. A contract changed since is simply
        worked out again inside (the figures are keyed by it)."""
        now = self._clock()
        figures = SlaFigures(self._policy, self._cfg.at_risk_fraction)
        rules = Rules(self._cfg, self._policy, figures, self._clock)
        wanted: dict[str, list[Ingest]] = {}
        for item in items:
            p, d = item.parsed, item.decision
            if p is None or d is None or item.error:
                continue
            for att in p.attachments:
                save_attachment(self._cfg.attachments_dir, att.sha256, att.payload)
            if d.is_request:
                wanted.setdefault(client_key(p.from_addr), []).append(item)
        if not wanted:
            return rules
        contracts: dict[str, str] = {}
        with self._reads() as rs:
            for chunk in in_chunks(wanted):
                contracts.update(rs.execute(select(Client.domain, Client.contract)
                                            .where(Client.domain.in_(chunk))).all())
        for ckey, batch in wanted.items():
            for item in batch:
                raw, d = item.raw, item.decision
                assert d is not None
                if raw.internal_date is None or raw.internal_date > now:
                    continue
                # Later, ``min(internal_date, now)`` is this same instant.
                try:
                    figures.get(d.label, d.priority or "normal",
                                contracts.get(ckey, "standard"), raw.internal_date)
                except Exception:
                    # A type, priority or contract the policy cannot serve: left out here,
                    # the same call while deciding fails for this message alone and
                    # quarantines it. Raised from here it would fail every poll's batch.
                    continue
        return rules

    def _checkpoint(self, s: Session, items: Sequence[Ingest]) -> None:
        raw = items[-1].raw
        state = s.get(MailboxState, raw.mailbox)
        now = self._clock()
        numeric = [int(i.raw.uid) for i in items if i.raw.uid.isdigit()]
        top = max(numeric) if numeric else 0
        if state is None:
            s.add(MailboxState(mailbox=raw.mailbox, uidvalidity=raw.uidvalidity, last_uid=top,
                               updated_at=now))
            return
        if state.uidvalidity != raw.uidvalidity:
            log.warning("UIDVALIDITY of %s changed %s -> %s; Message-ID dedupe keeps it safe",
                        raw.mailbox, state.uidvalidity, raw.uidvalidity)
            s.add(Event(actor="system", action="uidvalidity_changed",
                        detail={"mailbox": raw.mailbox, "old": state.uidvalidity,
                                "new": raw.uidvalidity}, at=now))
            state.uidvalidity, state.last_uid = raw.uidvalidity, 0
        state.last_uid = max(state.last_uid, top)
        state.updated_at = now
