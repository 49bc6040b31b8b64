"""One mailbox's loop: its lease, connection, IDLE or poll wait, and backoff.

A process runs one ``Poller`` per configured mailbox; each takes its own lease, so with
several processes on one PostgreSQL every mailbox has exactly one poller, not necessarily
in the same process. The poller knows its runner, its lease, the stop event and its
timing; what it finds (a refusing database, a mailbox that refuses us for good) it keeps
on itself for the service to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from triage.backoff import Backoff
from triage.lease import Lease
from triage.mailbox import Mailbox, MailboxAuthError, MailboxError, PermanentMailboxError
from triage.metrics import Metrics
from triage.pipeline import Runner
from triage.workorders import RetryBatch

log = logging.getLogger(__name__)


class MailboxStopped(Exception):
    """/readyz: a mailbox stopped for good (its OAuth2 credential is refused); the rest of
    the daemon goes on serving."""


async def pause(stop: asyncio.Event, delay: float) -> None:
    """Sleep that ``stop`` interrupts."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


class Poller:
    """Poll one mailbox until ``should_exit`` is set; with ``burst``, one pass over what is
    waiting, any failure raised to the caller instead of retried."""

    def __init__(self, mailbox_id: str, runner: Runner, lease: Lease,
                 should_exit: asyncio.Event, *, poll_interval: float, lease_retry: float,
                 use_idle: bool, metrics: Metrics, send_while_ingesting: bool,
                 sweep: Callable[[], Awaitable[None]]) -> None:
        self.id = mailbox_id
        self.runner = runner
        self.lease = lease
        self.should_exit = should_exit
        self.poll_interval, self.lease_retry, self.use_idle = poll_interval, lease_retry, use_idle
        self.metrics = metrics
        self.send_while_ingesting = send_while_ingesting
        self.sweep = sweep  # the outbox job, when a pass queued mail
        self.lock = asyncio.Lock()
        self.connected = False
        self.burst = False
        self.handled = 0  # messages handled since this poller was made
        # Why this mailbox stopped (a refused OAuth2 credential), or None while it runs.
        self.stopped: str | None = None
        # Set while the database refuses this mailbox's batches (/readyz).
        self.db_trouble: str | None = None
        # The mailbox refuses us for good: the daemon stops with a non-zero code.
        self.fatal: PermanentMailboxError | None = None
        self.last_ok = time.monotonic()
        self.backoff = Backoff(base=1.0, cap=min(300.0, max(30.0, poll_interval * 5)))
        runner.should_stop = runner.sender.should_stop = should_exit.is_set

    @property
    def mailbox(self) -> Mailbox:
        return self.runner.mailbox

    async def run(self, *, burst: bool = False) -> None:
        self.burst = burst
        if await self.lease.acquire():
            try:
                await self.connect_with_backoff()
            except MailboxAuthError as e:
                if burst:
                    raise
                await self.stop_for(e)
        elif burst:
            # A cron job beside a running daemon must not poll the same mailbox in parallel.
            log.info("run --once: another process polls mailbox %s; skipped", self.id)
            return
        idle = self.use_idle  # IDLE, or Maildir's own wait (Mailbox.wait_for_new)
        while not self.should_exit.is_set() and self.stopped is None:
            await self.poll_job()
            if burst or self.should_exit.is_set():
                break
            if idle and self.lease.held:
                await self._idle_wait()
            else:
                await pause(self.should_exit, self.poll_interval)
        if self.stopped is not None:
            await self.should_exit.wait()  # the others go on; /readyz names this one

    async def stop_for(self, e: MailboxAuthError) -> None:
        """Stop this mailbox for good: its credential is refused, and asking again and again
        would only lock the app out. The daemon keeps serving (web app, outbox, the other
        mailboxes); /readyz fails and names the reason until an operator fixes it."""
        self.stopped = str(e)
        log.error("mailbox %s stopped: %s; the rest of the daemon goes on (fix the OAuth app "
                  "or its secret, then restart)", self.id, e)
        await self.disconnect()
        with contextlib.suppress(Exception):
            await self.lease.release()  # another node, perhaps better configured, may poll

    async def connect_with_backoff(self) -> None:
        """Connect, retrying with backoff until stopped; a burst tries once."""
        backoff = Backoff(base=1.0, cap=60.0)
        while not self.should_exit.is_set():
            try:
                await self.mailbox.connect()
                self.connected = True
                return
            except PermanentMailboxError:
                raise
            except MailboxError as e:
                if self.burst:
                    raise
                delay = backoff.next_delay()
                log.warning("mailbox %s: connect failed (%s); retrying in %.1fs", self.id, e,
                            delay)
                await pause(self.should_exit, delay)

    async def poll_once(self) -> bool:
        """One pass over the mailbox; False when it failed (the caller backs off)."""
        async with self.lock:
            if self.should_exit.is_set() or self.stopped is not None:
                return True
            if not await self.hold_lease():
                return True  # a standby: the holder polls; poll_job waits lease_retry
            try:
                if not self.connected:
                    await self.connect_with_backoff()
                self.handled += await self.runner.process_waiting(
                    send=self.send_while_ingesting)
                self.db_trouble = None
                ok = True
            except Exception as e:
                if self.burst:
                    raise  # run --once: nothing half-written; the caller says what failed
                ok = await self._failed(e)
            if not ok:
                await self.disconnect()
        # A burst leaves the sweep to its end, after every mailbox: one sweep, in which a
        # refused mail ends the attempt instead of a second sweep trying the rest again.
        if self.runner.outbox_wakeup.is_set() and not self.burst:
            self.runner.outbox_wakeup.clear()
            await self.sweep()
        return ok

    async def _failed(self, e: Exception) -> bool:
        """Log a failed pass and decide what follows; always False (the pass failed)."""
        if isinstance(e, MailboxAuthError):
            await self.stop_for(e)
        elif isinstance(e, PermanentMailboxError):
            # After start-up this means the password was changed or the folder removed:
            # hammering the server would lock the account. Stop and say so.
            log.error("mailbox %s refuses us permanently (%s); stopping", self.id, e)
            self.fatal = e
            self.should_exit.set()
        elif isinstance(e, RetryBatch):
            # The database refused the batch (locked, unreachable): nothing was stored or
            # marked; the same messages come back on the next poll.
            log.warning("mailbox %s: %s; retrying after a pause", self.id, e)
            self.db_trouble = f"{e} ({e.__cause__ or 'no detail'})"
        elif isinstance(e, MailboxError):
            log.warning("mailbox %s: poll failed (%s); reconnecting after a pause", self.id, e)
        else:
            log.exception("mailbox %s: poll failed", self.id, exc_info=e)
        return False

    async def disconnect(self) -> None:
        self.connected = False
        with contextlib.suppress(Exception):
            await self.mailbox.close()

    async def hold_lease(self) -> bool:
        """True when this process may touch the mailbox now: the lease is held and its
        connection alive, or it was just acquired. A lost lease drops the mailbox connection."""
        if self.lease.held:
            if await self.lease.check():
                return True
            await self.disconnect()
        return await self.lease.acquire()

    async def poll_job(self) -> None:
        started = time.monotonic()
        ok = await self.poll_once()
        if not self.lease.held:  # standby: try again later; outbox and SLA watch go on
            await pause(self.should_exit, self.lease_retry)
            return
        self.metrics.observe_poll(self.id, time.monotonic() - started, ok)
        if ok:
            self.last_ok = time.monotonic()
            self.backoff.reset()
            return
        await pause(self.should_exit, self.backoff.next_delay())

    async def _idle_wait(self) -> None:
        waiter = asyncio.create_task(self._wait_mail())
        stopper = asyncio.create_task(self.should_exit.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (waiter, stopper):
            if not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _wait_mail(self) -> None:
        async with self.lock:
            if not self.connected:
                return
            try:
                await self.mailbox.wait_for_new(self.poll_interval)
            except MailboxError as e:
                log.warning("mailbox %s: IDLE failed (%s); reconnecting", self.id, e)
                await self.disconnect()

    async def check(self) -> None:
        """Readiness: connected and polled lately (a standby is ready to take over)."""
        if self.stopped is not None:
            raise MailboxStopped(f"mailbox {self.id} stopped: {self.stopped}")
        if not self.lease.held:
            return
        if not self.connected:
            raise ConnectionError(f"mailbox {self.id} not connected")
        stale = max(3 * self.poll_interval, 120.0)
        if time.monotonic() - self.last_ok > stale:
            raise TimeoutError(f"mailbox {self.id}: no successful poll for more than "
                               f"{stale:.0f}s")
