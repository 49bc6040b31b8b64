"""The sweep: claim due rows, render, send through the transport, record each answer.

One ``Sender`` per process, shared by every mailbox's runner: one sweep at a time, one
transport, and a transport pause that holds for all of them. Rows go out in id order. A
server that cannot be reached (connect/TLS/AUTH) pauses the whole outbox and keeps every row
due, so order survives an outage; a temporary refusal of one message (4xx) backs that row
off and holds only later mail to the same recipient. A permanent refusal (5xx) is held the
same way until it is known whether the recipient or the relay refused (triage.relay): the
recipient's is dead-lettered, the relay's pauses the outbox like an outage. A row whose
recipient the address policy refuses (triage.addresses) is never sent: its status is
``suppressed``, with an event giving the reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from triage.backoff import Backoff
from triage.metrics import Metrics
from triage.outbox.render import Rendered, Renderers
from triage.outbox.store import CLIENT_KINDS, Job, OutboxStore, answer_of
from triage.relay import RELAY_STAGES, Held, RefusalStreak, recipient_key
from triage.smtp import SendResult, Transport

if TYPE_CHECKING:
    from triage.notify_send import WebhookSender

log = logging.getLogger(__name__)
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
class SendCounters:
    sent: int = 0
    send_failures: int = 0


class Sender:
    """Drains the outbox through one transport; see the module's docstring."""

    def __init__(
        self,
        outbox: OutboxStore,
        transport: Transport,
        renderers: Renderers,
        *,
        transport_pause: float = 5.0,
        metrics: Metrics | None = None,
        address_policy: Callable[[Job], str | None] | None = None,
        refusals: RefusalStreak | None = None,
    ) -> None:
        self.outbox, self.transport, self.renderers = outbox, transport, renderers
        self.from_address = renderers.letterhead.from_address  # the envelope sender
        self.metrics = metrics or Metrics(process=False)
        self.counters = SendCounters()
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
        self._halted = False  # a failed ingest stops the sweep beside it (``halt``)
        # Set while sweeps send nothing and fail (/readyz); any sweep that sends clears it.
        self.send_trouble: str | None = None
        # What a sweep could not write when the database failed under it: answers to record
        # (a delivered mail must not be sent again) and claimed rows to give back (None),
        # instead of leaving them to their lease (10 min). The next sweep writes them first.
        self._unfinished: list[tuple[Job, SendResult | None]] = []
        # One thread for the outbox's database work, not the shared pool: every thread
        # that allocates gets its own glibc malloc arena (bench/results.md).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="triage-outbox")
        # Posts the outbox's webhook rows (triage.notify_send); None: no webhook configured.
        self.webhook: WebhookSender | None = None

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, functools.partial(fn, *args))

    @property
    def paused(self) -> bool:
        """The transport or the relay failed and the outbox waits before the next sweep."""
        return time.monotonic() < self._paused_until

    def halt(self, halted: bool = True) -> None:
        """``True``: the sweep in hand gives its unsent rows back and ends, and later sweeps
        beside ingestion (``send_while``) stop; ``False`` lifts that."""
        self._halted = halted

    async def send_while(self, wakeup: asyncio.Event, ingest_done: asyncio.Event,
                         should_stop: Callable[[], bool]) -> None:
        """Sweep whenever ``wakeup`` says a marked batch queued mail, until ingestion ends
        and the outbox is empty, or a send fails (the caller's own sweep decides what
        next)."""
        try:
            while not self._halted and not should_stop():
                wakeup.clear()  # before the sweep: a batch marked during it wakes us
                sent, failed = await self.drain()
                if failed or (not sent and self.paused):
                    return
                if sent:
                    continue
                if ingest_done.is_set():
                    return
                await wakeup.wait()
        except Exception as e:
            log_sweep_failure(e, "outbox sweep during ingestion")

    async def drain(self, limit: int = 50) -> tuple[int, int]:
        """One sweep: (sent, failed). One sweep at a time; it stops at the first transient
        failure (later mail never overtakes earlier), when asked to stop, or when the lease
        is too short to send one more message safely."""
        if self.sweep_lock.locked():
            return 0, 0
        async with self.sweep_lock:
            if self.webhook is not None:  # not mail: its own sweep, not held by SMTP trouble
                try:
                    await self.webhook.sweep(self._db, limit)
                except Exception as e:
                    log_sweep_failure(e, "webhook sweep")
            if self.paused:
                return 0, 0
            if self._unfinished:
                await self._db(self._finish_unfinished)
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

    def _render(self, job: Job) -> Rendered | None:
        return self.renderers.render(job)

    async def _sweep(self, limit: int) -> tuple[int, int]:
        """Send the claimed rows in order, each answer recorded before the next mail is
        handed over.

        Pipelined, without loosening that rule: row N's record (a database write, in the
        outbox thread) runs while row N+1's MAIL and RCPT go out, and N+1's DATA, the moment
        it is delivered, waits for it (``ready``); row N+1 is rendered while N's first
        command is on the wire. So a kill leaves at most one delivered mail unrecorded, and
        costs at most one resend (tests/test_faults.py), as when each row was sent and
        recorded in turn (bench/results.md)."""
        jobs = await self._db(self.outbox.claim, limit)
        claimed = len(jobs)
        jobs = await self._suppressed(jobs)
        sent = failed = 0
        last_failure: SendResult | None = None
        recording: asyncio.Future[None] | None = None  # the previous row's record
        rendered = self._render(jobs[0]) if jobs else None
        n = 0
        try:
            for n, job in enumerate(jobs):
                if (self.should_stop() or self._halted
                        or self.outbox.lease_left(job) < self.lease_margin):
                    await self._settled(recording)
                    await self._db(self.outbox.release, jobs[n:])
                    break
                msg, rendered = rendered, None
                if msg is None:
                    await self._settled(recording)
                    await self._db(self.outbox.dead_letter, job, "cannot render")
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
                            await self._db(self.outbox.release, jobs[n + 1:])
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
                    await self._db(self.outbox.release, jobs[n + 1:])
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
                # Drained, or stopped: deferred deliveries go into the table now rather
                # than at the next claim, which may be a while.
                await self._db(self.outbox.flush)
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
            await self._db(self.outbox.suppress, refused)
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
        known = self._accepted or await self._db(self.outbox.last_client_recipient)
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
        await self._db(functools.partial(self.outbox.settle_held, relay=relay), held)
        if not relay:
            self._relay_fine()
            for h in held:
                log.warning("outbox row %s dead-lettered: the relay accepts other mail, so "
                            "the recipient refused it: %s", h.outbox_id, h.answer)

    def _relay_fine(self) -> None:
        self.relay_trouble = None
        self.metrics.relay_refusing.set(0)

    async def _deliver(self, job: Job, msg: Rendered, ready: asyncio.Future[None] | None
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
            if result.ok:
                await self._db(self.outbox.record, job, result)
            else:
                await self._db(functools.partial(self.outbox.record,
                                                 hold=self._holds(job, result)), job, result)
        except Exception:
            self._unfinished.append((job, result))  # recorded by the next sweep
            raise
        if result.ok:
            log.info("sent outbox row %s", job.id,
                     extra={"event": "sent", "outbox": job.id, "kind": job.kind,
                            "work_order": job.number})

    @staticmethod
    async def _settled(recording: asyncio.Future[None] | None) -> None:
        """Wait for an in-flight record; a cancelled caller still lets it finish."""
        if recording is not None:
            await asyncio.shield(recording)


__all__ = ["SendCounters", "Sender", "log_sweep_failure"]
