"""One batch end to end: fetched -> parsed, classified, stored (triage.ingest) -> marked.

Mailman's runner shape: each message either completes or becomes a quarantine record with
its raw bytes and the reason; nothing here lets one message stop the daemon. Ingestion runs
in the ingest worker process (or a thread, ``LocalIngest``), off the event loop. Sending is
the outbox's (``triage.outbox.sender``); a runner only wakes it, or runs it beside ingestion.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from triage.ingest import Ingestor, stage
from triage.mailbox import Mailbox
from triage.messages import RawMessage
from triage.metrics import Metrics
from triage.outbox.sender import Sender
from triage.workorders import Outcome

log = logging.getLogger(__name__)
DEBUG = logging.DEBUG


@dataclass
class Counters:
    fetched: int = 0
    by_disposition: dict[str, int] = field(default_factory=dict)

    def add(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            self.by_disposition[o.disposition] = self.by_disposition.get(o.disposition, 0) + 1


class Runner:
    """Fetch -> store -> mark. Owns no connection's lifecycle."""

    def __init__(
        self,
        mailbox: Mailbox,
        ingest: Ingestor,
        sender: Sender,
        *,
        batch_size: int = 50,
        metrics: Metrics | None = None,
    ) -> None:
        self.mailbox, self.ingest = mailbox, ingest
        # The process's one outbox sender, shared by every mailbox's runner.
        self.sender = sender
        self.batch_size = batch_size
        self.metrics = metrics or Metrics(process=False)
        self.counters = Counters()
        # Set when a marked batch queued mail: the poll's outbox sweep follows.
        self.outbox_wakeup = asyncio.Event()
        self.should_stop: Callable[[], bool] = lambda: False
        # One thread for ingestion, not the shared pool: every thread that allocates gets
        # its own glibc malloc arena, and batches of mail spread over the pool's threads
        # cost ~30 MB of peak RSS (bench/results.md).
        self._ingest_thread = ThreadPoolExecutor(1, thread_name_prefix="triage-ingest")

    async def process_waiting(self, *, send: bool = False) -> int:
        """Everything waiting in the mailbox, batch by batch; returns messages handled.

        ``send=True`` (``run --once``) drains the outbox at the same time: each batch's
        acknowledgments leave while the next batches are parsed and stored, instead of all
        after the last one. A batch's rows are sent only after it is marked, as without it.
        """
        if not send:
            return await self._ingest()
        ingest_done = asyncio.Event()
        sending = asyncio.create_task(
            self.sender.send_while(self.outbox_wakeup, ingest_done, self.should_stop))
        try:
            return await self._ingest()
        except BaseException:
            self.sender.halt()  # the sweep in hand gives its rows back and ends
            raise
        finally:
            ingest_done.set()
            self.outbox_wakeup.set()
            try:
                await sending
            finally:
                self.sender.halt(False)
                # Its last sweeps may have found another sweep in hand (another mailbox's,
                # or the scheduled one) and returned; the poll's own outbox sweep
                # afterwards sends what is left.
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

    def _fetched(self, batch: Sequence[RawMessage]) -> None:
        self.counters.fetched += len(batch)
        if log.isEnabledFor(DEBUG):
            for raw in batch:
                stage("fetched", raw, size=raw.size, oversize=raw.oversize)

    async def _store(self, batch: list[RawMessage]) -> list[Outcome]:
        return await asyncio.get_running_loop().run_in_executor(
            self._ingest_thread, functools.partial(self.ingest.store, batch))

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
