"""One batch end to end: fetched bytes -> parsed -> classified -> stored -> marked.

Mailman's runner shape: each message either completes or becomes a quarantine record with
its raw bytes and the reason; nothing here lets one message stop the daemon. CPU and
database work run in one worker thread per batch, off the event loop.

Stage events (issue 6): one log record per message per stage, with ids only (mailbox, UID,
work-order number, outbox row), never a subject, a body or an address. ``fetched``,
``parsed``, ``classified``, ``queued`` and ``marked`` are DEBUG; ``stored`` (the outcome)
and ``sent`` are INFO. The fields ride on the record (``extra=``) and the JSON formatter
(triage.logs) writes them as keys. Cost, measured (bench/results.md): a JSON line written
is ~21 us, a DEBUG call below the level ~0.4 us; seven INFO lines per message would be
~7 % of the 2 ms a message may take at 430 msgs/s, so only two are INFO.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from typing import Any, TypeVar

from jinja2 import Environment

from classifiers.types import Decision, EmailInput
from triage.ack import render_ack, render_ack_wire
from triage.desk.mail import render_reply
from triage.mailbox import Mailbox
from triage.mailbox.backoff import Backoff
from triage.messages import ParsedEmail, RawMessage
from triage.metrics import Metrics
from triage.outbox import Job, OutboxStore, SendResultLike, Transport
from triage.parse import ParseError, parse
from triage.slawatch import render_escalation
from triage.smtp import WireMessage
from triage.workorders import Ingest, Outcome, WorkOrderStore

log = logging.getLogger(__name__)
DEBUG = logging.DEBUG
T = TypeVar("T")


def stage(event: str, raw: RawMessage, level: int = DEBUG, **fields: object) -> None:
    """One stage event for one message: ids only (see the module docstring)."""
    log.log(level, "%s uid=%s", event, raw.uid,
            extra={"event": event, "mailbox": raw.mailbox, "uid": raw.uid, **fields})


class ClassifierLike:
    """What the pipeline needs of ``classifiers.predict.Classifier``."""

    def classify_many(self, emails: Sequence[EmailInput]) -> list[Decision]:
        raise NotImplementedError


@dataclass
class Counters:
    fetched: int = 0
    by_disposition: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    send_failures: int = 0

    def add(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            self.by_disposition[o.disposition] = self.by_disposition.get(o.disposition, 0) + 1


def to_input(p: ParsedEmail) -> EmailInput:
    return EmailInput(subject=p.subject, body=p.text, sender=p.from_addr,
                      headers=p.header_map(), html=p.html)


def prepare_batch(raws: Sequence[RawMessage], classifier: ClassifierLike) -> list[Ingest]:
    """Parse and classify; every failure becomes an ``Ingest`` with ``error`` set."""
    items: list[Ingest | None] = []
    parsed_at: list[tuple[int, ParsedEmail]] = []
    debug = log.isEnabledFor(DEBUG)
    for raw in raws:
        if raw.data is None:
            items.append(Ingest(raw=raw, error=f"oversize: {raw.size} bytes; left on the server"))
            continue
        try:
            p = parse(raw.data)
        except ParseError as e:
            items.append(Ingest(raw=raw, error=f"unparseable: {e}"))
            continue
        except Exception as e:  # the stdlib parser has surprises; never lose the message
            log.exception("parser crashed on uid=%s", raw.uid)
            items.append(Ingest(raw=raw, error=f"parser error: {type(e).__name__}"))
            continue
        if debug:
            stage("parsed", raw, size=raw.size, attachments=len(p.attachments),
                  defects=len(p.defects))
        parsed_at.append((len(items), p))
        items.append(None)
    decisions: list[Decision | None]
    try:
        decisions = list(classifier.classify_many([to_input(p) for _, p in parsed_at]))
    except Exception:
        log.exception("batch classification failed; classifying one by one")
        decisions = []
        for _, p in parsed_at:
            try:
                decisions.append(classifier.classify_many([to_input(p)])[0])
            except Exception:
                log.exception("classifier failed on one message")
                decisions.append(None)
    for (i, p), d in zip(parsed_at, decisions, strict=True):
        raw = raws[i]
        if debug and d is not None:
            stage("classified", raw, label=d.label, confidence=round(float(d.confidence), 3),
                  priority=d.priority, screened_by=d.screened_by)
        items[i] = Ingest(raw=raw, parsed=p, decision=d,
                          error=None if d is not None else "classifier error")
    return [i for i in items if i is not None]


class Runner:
    """Fetch -> store -> mark, and drain the outbox. Owns no connection's lifecycle."""

    def __init__(
        self,
        mailbox: Mailbox,
        store: WorkOrderStore,
        classifier: ClassifierLike,
        outbox: OutboxStore,
        transport: Transport,
        env: Environment,
        *,
        from_address: str,
        from_name: str,
        phone: str,
        batch_size: int = 50,
        transport_pause: float = 5.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.mailbox, self.store, self.classifier = mailbox, store, classifier
        self.outbox, self.transport, self.env = outbox, transport, env
        self.from_address, self.from_name, self.phone = from_address, from_name, phone
        self.batch_size = batch_size
        self.metrics = metrics or Metrics(process=False)
        self.counters = Counters()
        self.outbox_wakeup = asyncio.Event()
        self.should_stop: Callable[[], bool] = lambda: False
        # A send must finish well inside the lease (SMTP timeout 30 s, plus margin).
        self.lease_margin = timedelta(seconds=90)
        self.sweep_lock = asyncio.Lock()
        # No jitter: this pauses one process's sweeps, so full jitter would only make some
        # pauses near zero, which is the hammering the pause exists to prevent.
        self._transport_backoff = (
            Backoff(base=transport_pause, cap=max(300.0, transport_pause), jitter=False)
            if transport_pause > 0 else None)
        self._paused_until = 0.0
        self._halt_sweep = False  # a failed ingest stops its concurrent sender (send=True)
        # One thread for ingestion and one for the outbox's database work, not the shared
        # pool: every thread that allocates gets its own glibc malloc arena, and batches of
        # mail spread over the pool's threads cost ~30 MB of peak RSS (bench/results.md).
        self._ingest_thread = ThreadPoolExecutor(1, thread_name_prefix="triage-ingest")
        self._outbox_thread = ThreadPoolExecutor(1, thread_name_prefix="triage-outbox")

    async def _off_loop(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    async def _outbox_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._off_loop(self._outbox_thread, fn, *args)

    async def process_waiting(self, *, send: bool = False) -> int:
        """Everything waiting in the mailbox, batch by batch; returns messages handled.

        ``send=True`` (``run --once``) drains the outbox at the same time: each batch's
        acknowledgments leave while the next batches are parsed and stored, instead of all
        after the last one. A batch's rows are sent only after it is marked, as without it.
        """
        if not send:
            return await self._ingest()
        ingest_done = asyncio.Event()
        sender = asyncio.create_task(self._send_while(ingest_done))
        try:
            return await self._ingest()
        except BaseException:
            self._halt_sweep = True  # the sweep in hand gives its rows back and ends
            raise
        finally:
            ingest_done.set()
            self.outbox_wakeup.set()
            try:
                await sender
            finally:
                self._halt_sweep = False

    async def _ingest(self) -> int:
        handled = 0
        async for batch in self.mailbox.batches(self.batch_size):
            handled += await self.process_batch(batch)
            if self.should_stop():
                break  # the batch in hand is stored and marked; the rest waits
        return handled

    async def _send_while(self, ingest_done: asyncio.Event) -> None:
        """Sweep whenever a marked batch queued acknowledgments, until ingestion ends and
        the outbox is empty, or a send fails (the caller's own sweep decides what next)."""
        try:
            while not self._halt_sweep and not self.should_stop():
                self.outbox_wakeup.clear()  # before the sweep: a batch marked during it wakes us
                sent, failed = await self.drain_outbox()
                if failed or (not sent and time.monotonic() < self._paused_until):
                    return
                if sent:
                    continue
                if ingest_done.is_set():
                    return
                await self.outbox_wakeup.wait()
        except Exception:
            log.exception("outbox sweep during ingestion failed")

    async def process_batch(self, batch: Sequence[RawMessage]) -> int:
        if not batch:
            return 0
        self.counters.fetched += len(batch)
        debug = log.isEnabledFor(DEBUG)
        if debug:
            for raw in batch:
                stage("fetched", raw, size=raw.size, oversize=raw.oversize)
        outcomes = await self._off_loop(self._ingest_thread, self._store_sync, list(batch))
        by_uid = {r.uid: r for r in batch}
        for o in outcomes:
            # The outcome, once per message: INFO (the message text is what operators grep).
            raw = by_uid[o.uid]
            log.info("uid=%s disposition=%s work_order=%s acked=%s reason=%s",
                     o.uid, o.disposition, o.work_order, o.acked, o.reason,
                     extra={"event": "stored", "mailbox": raw.mailbox, "uid": o.uid,
                            "disposition": o.disposition, "work_order": o.work_order,
                            "acked": o.acked})
            if debug and o.acked:
                stage("queued", raw, work_order=o.work_order, kind="ack")
        self.counters.add(outcomes)
        self.metrics.observe_outcomes(outcomes)
        for o in outcomes:
            if o.disposition == "work_order" and o.request_type:
                self.metrics.observe_work_order(o.request_type, o.priority,
                                                o.confidence or 0.0, o.needs_review)
        # Marked only now: the batch is committed. A crash before this line re-fetches it,
        # and the fetch keys make the second pass a no-op.
        await self.mailbox.mark_done(batch)
        if debug:
            for raw in batch:
                stage("marked", raw)
        if any(o.acked for o in outcomes):
            self.outbox_wakeup.set()
        return len(batch)

    def _store_sync(self, batch: list[RawMessage]) -> list[Outcome]:
        first = batch[0]
        stored = self.store.stored_uids(first.mailbox, first.uidvalidity, [r.uid for r in batch])
        fresh = [r for r in batch if r.uid not in stored]
        outcomes = [Outcome(r.uid, "already") for r in batch if r.uid in stored]
        if fresh:
            outcomes += self.store.store_batch(prepare_batch(fresh, self.classifier))
        return outcomes

    async def drain_outbox(self, limit: int = 50) -> tuple[int, int]:
        """One sweep: (sent, failed). One sweep at a time per process; it stops at the first
        transient failure (later mail never overtakes earlier), when asked to stop, or when
        the lease is too short to send one more message safely."""
        if self.sweep_lock.locked() or time.monotonic() < self._paused_until:
            return 0, 0
        async with self.sweep_lock:
            return await self._sweep(limit)

    async def _sweep(self, limit: int) -> tuple[int, int]:
        jobs = await self._outbox_db(self.outbox.claim, limit)
        sent = failed = 0
        for n, job in enumerate(jobs):
            if (self.should_stop() or self._halt_sweep
                    or self.outbox.lease_left(job) < self.lease_margin):
                await self._outbox_db(self.outbox.release, jobs[n:])
                break
            msg = self._render(job)
            if msg is None:
                await self._outbox_db(self.outbox.dead_letter, job, "cannot render")
                failed += 1
                continue
            # Shielded: a shutdown must not cancel between the server's 250 and our
            # record of it, or the row would be sent again after restart.
            result = await asyncio.shield(self._send_and_record(job, msg))
            self.metrics.observe_send(result.ok)
            if result.ok:
                sent += 1
                if self._transport_backoff:
                    self._transport_backoff.reset()
                continue
            failed += 1
            log.warning("outbox row %s not delivered (%s): %s %s", job.id,
                        "permanent" if result.permanent else "transient", result.code,
                        result.text)
            if result.transport_failed and self._transport_backoff:
                # Wrong password, bad certificate, server away: stop hammering it.
                pause = self._transport_backoff.next_delay()
                self._paused_until = time.monotonic() + pause
                log.error("SMTP unavailable (%s); outbox paused for %.0fs",
                          result.stage or "connect", pause)
            if not result.permanent or result.transport_failed:
                await self._outbox_db(self.outbox.release, jobs[n + 1:])
                break
        self.counters.sent += sent
        self.counters.send_failures += failed
        return sent, failed

    async def _send_and_record(self, job: Job, msg: EmailMessage | WireMessage
                               ) -> SendResultLike:
        """Record each answer before the next mail goes out: a kill between the server's 250
        and the record sends that one mail twice, never more (tests/test_faults.py)."""
        result = await self.transport.send(msg, sender=self.from_address,
                                           recipients=[job.to_addr])
        await self._outbox_db(self.outbox.record, job, result)
        if result.ok:
            log.info("sent outbox row %s", job.id,
                     extra={"event": "sent", "outbox": job.id, "kind": job.kind,
                            "work_order": job.view.number if job.view else None})
        return result

    def _render(self, job: Job) -> EmailMessage | WireMessage | None:
        try:
            if job.kind == "reply":  # staff replies (triage.desk.actions)
                return render_reply(self.env, job.context, job.message_id, job.to_addr,
                                    from_address=self.from_address, from_name=self.from_name,
                                    phone=self.phone)
            if job.kind != "ack":  # escalations and pages: SLA watch rows
                return render_escalation(self.env, job.context, job.message_id, job.to_addr,
                                         self.from_address)
            if job.view is None:
                return None
            wire = render_ack_wire(self.env, job.view, from_address=self.from_address,
                                   from_name=self.from_name, phone=self.phone)
            if wire is not None:
                return WireMessage(wire, f"<{job.view.message_id}>")
            return render_ack(self.env, job.view, from_address=self.from_address,
                              from_name=self.from_name, phone=self.phone)
        except Exception:
            log.exception("rendering outbox row %s failed", job.id)
            return None
