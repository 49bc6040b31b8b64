"""One batch end to end: fetched -> parsed, classified, stored (triage.ingest) -> marked,
and the outbox drained to SMTP.

Mailman's runner shape: each message either completes or becomes a quarantine record with
its raw bytes and the reason; nothing here lets one message stop the daemon. Ingestion runs
in the ingest worker process (or a thread, ``LocalIngest``), the outbox's database work in
a thread of its own, both off the event loop.

Stage events: one log record per message per stage, with ids only (mailbox, UID,
work-order number, outbox row), never a subject, a body or an address. ``fetched``,
``parsed``, ``classified``, ``queued`` and ``marked`` are DEBUG; ``stored`` (the outcome)
and ``sent`` are INFO. The fields ride on the record (``extra=``) and the JSON formatter
(triage.logs) writes them as keys. Cost, measured (bench/results.md): a JSON line written
is ~21 us, a DEBUG call below the level ~0.4 us; seven INFO lines per message would be
~7 % of the 2 ms a message may take at 430 msgs/s, so only two are INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from sqlalchemy.exc import InterfaceError, OperationalError

from triage.ack import render_ack, render_ack_wire
from triage.desk.mail import render_reply
from triage.ingest import Ingestor, stage
from triage.mailbox import Mailbox
from triage.mailbox.backoff import Backoff
from triage.messages import RawMessage
from triage.metrics import Metrics
from triage.notify import NOTIFY
from triage.notify_send import WebhookSender, render_notify
from triage.outbox import CLIENT_KINDS, Job, OutboxStore, answer_of
from triage.relay import RELAY_STAGES, Held, RefusalStreak, recipient_key
from triage.slawatch import render_escalation
from triage.smtp import SendResult, Transport, WireMessage
from triage.workorders import Outcome

log = logging.getLogger(__name__)
DEBUG = logging.DEBUG
T = TypeVar("T")


def log_sweep_failure(e: Exception, what: str) -> None:
    """A database that is away is one line per sweep (they come every few seconds); anything
    else gets its traceback."""
    if isinstance(e, OperationalError | InterfaceError):
        log.warning("%s: database unavailable (%s); the next sweep tries again", what,
                    type(e).__name__)
    else:
        log.exception("%s failed", what)


@dataclass
class Counters:
    fetched: int = 0
    by_disposition: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    send_failures: int = 0

    def add(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            self.by_disposition[o.disposition] = self.by_disposition.get(o.disposition, 0) + 1


class Runner:
    """Fetch -> store -> mark, and drain the outbox. Owns no connection's lifecycle."""

    def __init__(
        self,
        mailbox: Mailbox,
        ingest: Ingestor,
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
        address_policy: Callable[[Job], str | None] | None = None,
        refusals: RefusalStreak | None = None,
    ) -> None:
        self.mailbox, self.ingest = mailbox, ingest
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
        # Send time: the reason (triage.addresses) a row must not be sent, or None.
        self.address_policy = address_policy
        # Permanent refusals held until the relay or the recipients are known to blame.
        self.refusals = refusals if refusals is not None else RefusalStreak()
        self.relay_trouble: str | None = None  # set while the relay refuses everyone
        self._accepted: str | None = None  # a client address the relay last accepted
        self._halt_sweep = False  # a failed ingest stops its concurrent sender (send=True)
        # Whose sweeps the sender beside ingestion runs. One outbox and one transport per
        # process: with several mailboxes every runner sends through the first one's, so
        # sweeps stay one at a time and a transport pause holds for all of them.
        self.sender: Runner = self
        # Set while sweeps send nothing and fail (/readyz); any sweep that sends clears it,
        # whoever ran it (the outbox job, or the sender beside ingestion).
        self.send_trouble: str | None = None
        # What a sweep could not write when the database failed under it: answers to record
        # (a delivered mail must not be sent again) and claimed rows to give back (None),
        # instead of leaving them to their lease (10 min). The next sweep writes them first.
        self._unfinished: list[tuple[Job, SendResult | None]] = []
        # Posts the outbox's webhook rows (triage.notify_send); None: no webhook configured.
        self.webhook: WebhookSender | None = None
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
            self.sender._halt_sweep = True  # the sweep in hand gives its rows back and ends
            raise
        finally:
            ingest_done.set()
            self.outbox_wakeup.set()
            try:
                await sender
            finally:
                self.sender._halt_sweep = False
                if self.sender is not self:
                    # Its last sweeps may have found another mailbox's sweep in hand and
                    # returned; the poll's own outbox sweep afterwards sends what is left.
                    self.outbox_wakeup.set()

    async def _ingest(self) -> int:
        """Keep the ingestor busy: batch N+1 is handed over the moment batch N is stored,
        and only then is N marked and N+2 fetched, while N+1 is being stored. The mailbox
        connection stays one command at a time (mark, then fetch), and a batch is still
        marked only after its commit; a batch fetched ahead and never stored is simply
        fetched again (and found stored, "already", if its commit landed after all)."""
        handled = 0
        batches = self.mailbox.batches(self.batch_size)
        storing: asyncio.Future[list[Outcome]] | None = None

        async def fetch() -> list[RawMessage] | None:
            if self.should_stop():
                return None
            got = await anext(batches, None)
            if got is None:
                return None
            self._fetched(got)
            return list(got)

        try:
            batch = await fetch()
            if batch is not None:
                storing = asyncio.ensure_future(self._store(batch))
            upcoming = await fetch() if batch is not None else None
            while batch is not None:
                assert storing is not None
                outcomes = await storing
                storing = None
                if upcoming is not None and not self.should_stop():
                    storing = asyncio.ensure_future(self._store(upcoming))
                handled += await self._finish(batch, outcomes)
                if storing is None:
                    break  # nothing more, or asked to stop: the rest waits
                batch, upcoming = upcoming, await fetch()
        finally:
            if storing is not None:
                # Failing or stopping with a batch in the ingestor: let it end. Unmarked,
                # it is fetched again and found stored, so nothing is lost or doubled.
                with contextlib.suppress(BaseException):
                    await storing
            await batches.aclose()
        return handled

    async def _send_while(self, ingest_done: asyncio.Event) -> None:
        """Sweep whenever a marked batch queued acknowledgments, until ingestion ends and
        the outbox is empty, or a send fails (the caller's own sweep decides what next)."""
        s = self.sender
        try:
            while not s._halt_sweep and not self.should_stop():
                self.outbox_wakeup.clear()  # before the sweep: a batch marked during it wakes us
                sent, failed = await s.drain_outbox()
                if failed or (not sent and time.monotonic() < s._paused_until):
                    return
                if sent:
                    continue
                if ingest_done.is_set():
                    return
                await self.outbox_wakeup.wait()
        except Exception as e:
            log_sweep_failure(e, "outbox sweep during ingestion")

    def _fetched(self, batch: Sequence[RawMessage]) -> None:
        self.counters.fetched += len(batch)
        if log.isEnabledFor(DEBUG):
            for raw in batch:
                stage("fetched", raw, size=raw.size, oversize=raw.oversize)

    async def _store(self, batch: list[RawMessage]) -> list[Outcome]:
        return await self._off_loop(self._ingest_thread, self.ingest.store, batch)

    async def _finish(self, batch: Sequence[RawMessage], outcomes: Sequence[Outcome]) -> int:
        """Log, count and mark a committed batch; wake the sender."""
        debug = log.isEnabledFor(DEBUG)
        by_uid = {r.uid: r for r in batch}
        for o in outcomes:
            # The outcome, once per message: INFO (the message text is what operators grep).
            raw = by_uid[o.uid]
            log.info("uid=%s disposition=%s work_order=%s acked=%s reason=%s",
                     o.uid, o.disposition, o.work_order, o.acked, o.reason,
                     extra={"event": "stored", "mailbox": raw.mailbox, "uid": o.uid,
                            "disposition": o.disposition, "work_order": o.work_order,
                            "acked": o.acked, "ack_refused": o.ack_refused})
            if debug and o.acked:
                stage("queued", raw, work_order=o.work_order, kind="ack")
        self.counters.add(outcomes)
        self.metrics.observe_outcomes(outcomes)
        for o in outcomes:
            if o.disposition == "work_order" and o.request_type:
                self.metrics.observe_work_order(o.request_type, o.priority,
                                                o.confidence or 0.0, o.needs_review)
            if o.ack_refused is not None:
                self.metrics.observe_ack_suppressed(o.ack_refused)
        # Marked only now: the batch is committed. A crash before this line re-fetches it,
        # and the fetch keys make the second pass a no-op.
        await self.mailbox.mark_done(batch)
        if debug:
            for raw in batch:
                stage("marked", raw)
        if any(o.acked for o in outcomes):
            self.outbox_wakeup.set()
        return len(batch)

    async def drain_outbox(self, limit: int = 50) -> tuple[int, int]:
        """One sweep: (sent, failed). One sweep at a time per process; it stops at the first
        transient failure (later mail never overtakes earlier), when asked to stop, or when
        the lease is too short to send one more message safely."""
        if self.sweep_lock.locked():
            return 0, 0
        async with self.sweep_lock:
            if self.webhook is not None:  # not mail: its own sweep, not held by SMTP trouble
                try:
                    await self.webhook.sweep(self._outbox_db, limit)
                except Exception as e:
                    log_sweep_failure(e, "webhook sweep")
            if time.monotonic() < self._paused_until:
                return 0, 0
            if self._unfinished:
                await self._outbox_db(self._finish_unfinished)
            return await self._sweep(limit)

    def _finish_unfinished(self) -> None:
        """Raises (and keeps the rest) while the database still fails."""
        while self._unfinished:
            job, result = self._unfinished[0]
            if result is None:
                self.outbox.release([job])
            else:
                self.outbox.record(job, result)
            self._unfinished.pop(0)
        log.info("outbox: the answers and claims a database failure left are written")

    async def _sweep(self, limit: int) -> tuple[int, int]:
        """Send the claimed rows in order, each answer recorded before the next mail is
        handed over.

        Pipelined, without loosening that rule: row N's record (a database write, in the
        outbox thread) runs while row N+1's MAIL and RCPT go out, and N+1's DATA, the moment
        it is delivered, waits for it (``ready``); row N+1 is rendered while N's first
        command is on the wire. So a kill leaves at most one delivered mail unrecorded, and
        costs at most one resend (tests/test_faults.py), as when each row was sent and
        recorded in turn; the pipelining took ~1.5 ms off each mail (bench/results.md)."""
        jobs = await self._outbox_db(self.outbox.claim, limit)
        claimed = len(jobs)
        jobs = await self._suppressed(jobs)
        sent = failed = 0
        last_failure: SendResult | None = None
        recording: asyncio.Future[None] | None = None  # the previous row's record
        rendered = self._render(jobs[0]) if jobs else None
        n = 0
        try:
            for n, job in enumerate(jobs):
                if (self.should_stop() or self._halt_sweep
                        or self.outbox.lease_left(job) < self.lease_margin):
                    await self._settled(recording)
                    await self._outbox_db(self.outbox.release, jobs[n:])
                    break
                msg, rendered = rendered, None
                if msg is None:
                    await self._settled(recording)
                    await self._outbox_db(self.outbox.dead_letter, job, "cannot render")
                    failed += 1
                    if n + 1 < len(jobs):
                        rendered = self._render(jobs[n + 1])
                    continue
                # Shielded: a shutdown must not cancel between the server's 250 and the
                # start of our record of it, or the row would be sent again after restart.
                delivering = asyncio.ensure_future(self._deliver(job, msg, recording))
                if n + 1 < len(jobs):
                    await asyncio.sleep(0)  # MAIL on its way first
                    rendered = self._render(jobs[n + 1])
                result, recording = await asyncio.shield(delivering)
                self.metrics.observe_send(result.ok)
                if result.ok:
                    sent += 1
                    if self._transport_backoff:
                        self._transport_backoff.reset()
                    if job.kind in CLIENT_KINDS:
                        self._accepted = job.to_addr
                    if self.relay_trouble:
                        self._relay_fine()
                    if self.refusals.held:  # the relay works: the recipients refused
                        await self._settled(recording)
                        await self._settle(relay=False)
                    continue
                failed += 1
                last_failure = result
                log.warning("outbox row %s not delivered (%s): %s", job.id,
                            "permanent" if result.permanent else "transient",
                            answer_of(result))
                if self._holds(job, result):
                    key, domain = recipient_key(job.to_addr)
                    if self.refusals.add(Held(job.id, job.attempts, key, domain, result.stage,
                                              answer_of(result), self.refusals.now())):
                        await self._settled(recording)
                        if await self._judge(threshold=True):  # the relay: paused
                            await self._outbox_db(self.outbox.release, jobs[n + 1:])
                            break
                    continue
                if result.transport_failed and self._transport_backoff:
                    # Wrong password, bad certificate, server away: stop hammering it.
                    pause = self._transport_backoff.next_delay()
                    self._paused_until = time.monotonic() + pause
                    log.error("SMTP unavailable (%s); outbox paused for %.0fs",
                              result.stage or "connect", pause)
                if not result.permanent or result.transport_failed:
                    await self._settled(recording)
                    await self._outbox_db(self.outbox.release, jobs[n + 1:])
                    break
            else:
                if jobs and self.refusals.held and self.refusals.probe_can_decide():
                    # Every row was tried and refusals are still held: ask the relay now
                    # rather than leave a lone bad recipient waiting for the next mail.
                    await self._settled(recording)
                    await self._judge(threshold=False)
        except Exception:
            # The database failed (a record, a release): row n and those after it were not
            # handed over (DATA waits for the previous record); give them back next time.
            self._unfinished += [(j, None) for j in jobs[n:]]
            raise
        finally:
            await self._settled(recording)
            if claimed < limit or sent + failed < len(jobs):
                # Drained, or stopped: what the sent log holds goes into the table now
                # rather than at the next claim, which may be a while.
                await self._outbox_db(self.outbox.flush)
        self.counters.sent += sent
        self.counters.send_failures += failed
        if sent:
            self.send_trouble = None
        elif self.relay_trouble:
            self.send_trouble = self.relay_trouble
        elif failed:
            answer = answer_of(last_failure) if last_failure else ""
            self.send_trouble = (f"the last outbox sweep sent nothing ({failed} failed): "
                                 f"{answer or 'no answer'}")
        return sent, failed

    async def _suppressed(self, jobs: list[Job]) -> list[Job]:
        """Set aside the rows the address policy refuses (recorded, counted, never sent);
        returns the others."""
        if self.address_policy is None or not jobs:
            return jobs
        keep: list[Job] = []
        refused: list[tuple[Job, str]] = []
        for job in jobs:
            reason = self.address_policy(job)
            if reason is None:
                keep.append(job)
            else:
                refused.append((job, reason))
        if refused:
            await self._outbox_db(self.outbox.suppress, refused)
            for job, reason in refused:
                self.metrics.observe_suppressed(reason)
                log.info("outbox row %s suppressed: %s", job.id, reason,
                         extra={"event": "suppressed", "outbox": job.id, "kind": job.kind,
                                "reason": reason})
        return keep

    def _holds(self, job: Job, result: SendResult) -> bool:
        """A permanent refusal that may be the relay's, on a row with tries left: held
        (pending) until the relay or the recipient is found to blame (triage.relay)."""
        return (not result.ok and result.permanent and not result.transport_failed
                and result.stage in RELAY_STAGES and job.attempts < self.outbox.max_attempts)

    async def _judge(self, *, threshold: bool) -> bool:
        """Settle the held refusals: True when the relay refuses everyone (the outbox is
        paused). The relay accepting a probe clears it; the threshold reached, or the relay
        refusing an address it accepted before, convicts it; else the rows stay held."""
        probe = await self._probe() if self.refusals.probe_can_decide() else None
        if probe is not None and probe.ok:
            await self._settle(relay=False)
            return False
        if not (threshold or (probe is not None and probe.permanent)):
            return False  # no answer either way: keep holding
        answer = (answer_of(probe) if probe is not None and not probe.transport_failed
                  else self.refusals.held[-1].answer)
        held = len(self.refusals.held)
        await self._settle(relay=True)
        pause = self._transport_backoff.next_delay() if self._transport_backoff else 0.0
        self._paused_until = time.monotonic() + pause
        self.relay_trouble = f"SMTP relay refuses every recipient: {answer}"
        self.send_trouble = self.relay_trouble  # /readyz says so from now, not at sweep end
        self.metrics.relay_refusing.set(1)
        log.error("%s (%d recipients in a row); outbox paused for %.0fs, the rows kept",
                  self.relay_trouble, held, pause)
        return True

    async def _probe(self) -> SendResult | None:
        """MAIL and RCPT to a client address the relay accepted before, then RSET; None when
        there is no such address or the transport cannot probe."""
        known = self._accepted or await self._outbox_db(self.outbox.last_client_recipient)
        if not known or recipient_key(known)[0] in {h.recipient for h in self.refusals.held}:
            return None
        self._accepted = known
        result = await self.transport.probe_recipient(sender=self.from_address, recipient=known)
        if result is None:
            return None
        log.info("relay probe with a recipient it accepted before: %s",
                 "accepted" if result.ok else answer_of(result))
        return result

    async def _settle(self, *, relay: bool) -> None:
        held = self.refusals.take()
        await self._outbox_db(functools.partial(self.outbox.settle_held, relay=relay), held)
        if not relay:
            self._relay_fine()
            for h in held:
                log.warning("outbox row %s dead-lettered: the relay accepts other mail, so "
                            "the recipient refused it: %s", h.outbox_id, h.answer)

    def _relay_fine(self) -> None:
        self.relay_trouble = None
        self.metrics.relay_refusing.set(0)

    async def _deliver(self, job: Job, msg: EmailMessage | WireMessage,
                       ready: asyncio.Future[None] | None
                       ) -> tuple[SendResult, asyncio.Future[None]]:
        """Send ``job`` once ``ready`` (the previous record) is done, and start its own
        record; returns the answer and that record, which the next send waits for."""
        result = await self.transport.send(msg, sender=self.from_address,
                                           recipients=[job.to_addr], ready=ready)
        if ready is not None:
            await ready  # a failed send may return before waiting for it
        return result, asyncio.ensure_future(self._record(job, result))

    async def _record(self, job: Job, result: SendResult) -> None:
        try:
            if self.outbox.records_in_log(result):
                self.outbox.record(job, result)  # a line appended to a file (triage.sentlog)
            elif result.ok:
                await self._outbox_db(self.outbox.record, job, result)
            else:
                await self._outbox_db(functools.partial(
                    self.outbox.record, hold=self._holds(job, result)), job, result)
        except Exception:
            self._unfinished.append((job, result))  # recorded by the next sweep
            raise
        if result.ok:
            log.info("sent outbox row %s", job.id,
                     extra={"event": "sent", "outbox": job.id, "kind": job.kind,
                            "work_order": job.view.number if job.view else None})

    @staticmethod
    async def _settled(recording: asyncio.Future[None] | None) -> None:
        """Wait for an in-flight record; a cancelled caller still lets it finish."""
        if recording is not None:
            await asyncio.shield(recording)

    def _render(self, job: Job) -> EmailMessage | WireMessage | None:
        try:
            if job.kind == "reply":  # staff replies (triage.desk.actions)
                return render_reply(self.env, job.context, job.message_id, job.to_addr,
                                    from_address=self.from_address, from_name=self.from_name,
                                    phone=self.phone)
            if job.kind == NOTIFY:  # staff notifications (triage.notify)
                return render_notify(self.env, job.context, job.message_id, job.to_addr,
                                     self.from_address)
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
