"""The daemon: open the database, load the model and policy, then fetch, store, mark and
send until told to stop.

Shutdown (uvicorn's order): a signal only sets ``should_exit``; the poll loop finishes the
batch in hand (store and mark), the scheduler stops taking jobs and waits for the running
one, the transport and mailbox close, the engine is disposed. A second signal forces exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from triage.ack import make_env
from triage.config import Settings
from triage.desk.actions import Desk, DeskConfig
from triage.lease import mailbox_lease_name, make_lease
from triage.mailbox import Mailbox, MailboxError, PermanentMailboxError
from triage.mailbox.backoff import Backoff
from triage.metrics import Metrics
from triage.outbox import OutboxStore, RetryPolicy, Transport
from triage.pipeline import ClassifierLike, Runner
from triage.sla import SlaPolicy, load_policy
from triage.slawatch import SlaWatch
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.web.ops import create_ops_app, serve
from triage.workorders import RetryBatch, StoreConfig, WorkOrderStore

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_mailbox(settings: Settings) -> Mailbox:
    url = settings.mailbox
    if url.scheme == "maildir":
        from triage.mailbox.maildir import MaildirMailbox

        assert url.path is not None
        return MaildirMailbox(url.path, max_size=settings.max_message_size)
    from triage.mailbox.imap import ImapMailbox

    password = settings.mailbox_password.get_secret_value() if settings.mailbox_password else ""
    return ImapMailbox(
        url.host, url.port, url.user, password, folder=url.folder, security=url.security,
        mark=settings.mailbox_mark, max_size=settings.max_message_size,
    )


def make_transport(settings: Settings) -> Transport:
    from triage.smtp import transport_from_url

    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return transport_from_url(settings.smtp_url, settings.smtp_user, password)


@dataclass
class Components:
    engine: Engine
    policy: SlaPolicy
    runner: Runner
    transport: Transport
    reads: sessionmaker[Session]
    metrics: Metrics
    watch: SlaWatch
    desk: Desk
    sessions: sessionmaker[Session]
    clock: Callable[[], datetime] = utcnow


def build(
    settings: Settings,
    *,
    classifier: ClassifierLike | None = None,
    mailbox: Mailbox | None = None,
    transport: Transport | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Components:
    """Wire the stages. Tests pass their own mailbox/transport; nothing else is swapped."""
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    reads = make_read_sessionmaker(engine)
    policy = load_policy(settings.sla_policy_path)
    if classifier is None:
        from classifiers.predict import Classifier

        classifier = Classifier.load(settings.model_path)
    store = WorkOrderStore(
        sessions, policy,
        StoreConfig(from_address=settings.from_address,
                    ack_rate_per_hour=settings.ack_rate_per_hour,
                    attachments_dir=settings.attachments_dir,
                    review_threshold=settings.review_threshold,
                    at_risk_fraction=settings.at_risk_fraction),
        clock,
        reads,
    )
    outbox = OutboxStore(
        sessions,
        RetryPolicy(settings.outbox_max_attempts, settings.outbox_retry_base,
                    settings.outbox_retry_cap),
        clock,
        timezone_for=lambda contract: policy.calendar(contract).tz.key,
        priority_meaning=policy.priority_meaning,
    )
    transport = transport or make_transport(settings)
    metrics = Metrics()
    runner = Runner(
        mailbox or make_mailbox(settings), store, classifier, outbox, transport, make_env(),
        from_address=settings.from_address, from_name=settings.from_name,
        phone=settings.helpdesk_phone, batch_size=settings.batch_size,
        transport_pause=settings.outbox_retry_base, metrics=metrics,
    )
    watch = SlaWatch(
        sessions, policy, clock, at_risk_fraction=settings.at_risk_fraction,
        lead_address=settings.lead_address, oncall_address=settings.oncall_address,
        from_domain=settings.from_address.rsplit("@", 1)[-1], reads=reads,
    )
    desk = Desk(sessions, policy, DeskConfig(settings.from_address, settings.at_risk_fraction),
                clock, on_first_response=metrics.observe_first_response)
    return Components(engine, policy, runner, transport, reads, metrics, watch, desk, sessions,
                      clock)


class FatalMailboxError(Exception):
    """The mailbox refuses us for good (credentials, folder): stop with a non-zero code."""


class Service:
    def __init__(self, settings: Settings, components: Components) -> None:
        self.settings = settings
        self.c = components
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self.fatal: BaseException | None = None
        self._mailbox_lock = asyncio.Lock()
        self._connected = False
        self._last_poll_ok = time.monotonic()
        self._poll_backoff = Backoff(
            base=1.0, cap=min(300.0, max(30.0, settings.poll_interval * 5)))
        components.runner.should_stop = self.should_exit.is_set
        # Several processes may share one PostgreSQL: only the lease holder polls (lease.py).
        url = settings.mailbox
        self.lease = make_lease(components.engine, mailbox_lease_name(
            url.scheme, url.host, url.port, url.user, url.folder, url.path))

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run_once(self) -> int:
        """Process everything waiting, try every due outbox row once, return."""
        runner = self.c.runner
        n = 0
        async with self.c.transport:
            # A cron job beside a running daemon must not poll the same mailbox in parallel.
            if await self.lease.acquire():
                try:
                    await runner.mailbox.connect()
                    try:
                        n = await runner.process_waiting()
                    finally:
                        await runner.mailbox.close()
                finally:
                    await self.lease.release()
            else:
                log.info("run --once: another process polls this mailbox; sending only")
            while True:
                sent, failed = await runner.drain_outbox()
                if failed or not sent:
                    break
        log.info("run --once: %d messages, counters %s", n, runner.counters)
        return n

    async def run(self) -> None:
        self._install_signals()
        scheduler = AsyncIOScheduler(timezone=UTC)
        ops = self._start_ops()
        async with self.c.transport:
            # The outbox runs from the start: acknowledgments already queued go out even
            # while the mailbox is unreachable.
            scheduler.add_job(self._outbox_job, "interval", seconds=self.settings.outbox_interval,
                              id="outbox", max_instances=1, coalesce=True,
                              next_run_time=utcnow())
            scheduler.add_job(self._watch_job, "interval",
                              seconds=self.settings.sla_watch_interval, id="sla_watch",
                              max_instances=1, coalesce=True, next_run_time=utcnow())
            scheduler.start()
            try:
                if await self.lease.acquire():
                    await self._connect_with_backoff()
                idle = (getattr(self.c.runner.mailbox, "supports_idle", True)
                        and self.settings.use_idle)
                if idle:
                    await self._idle_loop()
                else:
                    scheduler.add_job(self._poll_job, "interval",
                                      seconds=self.settings.poll_interval, id="poll",
                                      max_instances=1, coalesce=True, next_run_time=utcnow())
                    await self.should_exit.wait()
            finally:
                await self._stop(scheduler)
                if ops is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(10):
                            await ops
        self.c.engine.dispose()
        log.info("stopped; counters %s", self.c.runner.counters)
        if self.fatal is not None:
            raise FatalMailboxError(str(self.fatal)) from self.fatal

    def _start_ops(self) -> asyncio.Task[None] | None:
        """/metrics, /healthz, /readyz and the staff web app, in the daemon's event loop."""
        if not self.settings.ops_port:
            return None
        token = (self.settings.metrics_token.get_secret_value()
                 if self.settings.metrics_token else None)
        app = create_ops_app(
            self.c.metrics,
            {"database": self._check_database, "mailbox": self._check_mailbox,
             "smtp": self._check_smtp},
            metrics_token=token, timeout=self.settings.ready_timeout,
            on_scrape=lambda: self.c.metrics.refresh_from_db(self.c.reads),
        )
        if self.settings.web_enabled:
            from triage.web.app import WebDeps, create_web_app

            app = create_web_app(WebDeps(
                sessions=self.c.sessions, reads=self.c.reads, policy=self.c.policy,
                desk=self.c.desk, attachments_dir=self.settings.attachments_dir,
                clock=self.c.clock, cookie_secure=self.settings.web_cookie_secure,
                session_ttl=timedelta(hours=self.settings.web_session_hours),
            ), extra_routes=list(app.routes))
        log.info("%s on http://%s:%d",
                 "staff web app and ops endpoints" if self.settings.web_enabled
                 else "operations endpoints", self.settings.ops_host, self.settings.ops_port)
        return asyncio.create_task(
            serve(app, self.settings.ops_host, self.settings.ops_port, self.should_exit))

    async def _check_database(self) -> None:
        def ping() -> None:
            with self.c.reads() as s:
                s.execute(text("SELECT 1"))
        await asyncio.to_thread(ping)

    async def _check_mailbox(self) -> None:
        if not self.lease.held:
            return  # a standby does not touch the mailbox (lease.py); it is ready to take over
        if not self._connected:
            raise ConnectionError("mailbox not connected")
        stale = max(3 * self.settings.poll_interval, 120.0)
        if time.monotonic() - self._last_poll_ok > stale:
            raise TimeoutError(f"no successful poll for more than {stale:.0f}s")

    async def _check_smtp(self) -> None:
        smtp = getattr(self.c.transport, "settings", None)
        if smtp is None:  # the demo's folder transport
            path = getattr(self.c.transport, "path", None)
            if path is not None and not os.access(path, os.W_OK):
                raise PermissionError("outbox folder not writable")
            return
        _, writer = await asyncio.open_connection(smtp.host, smtp.port)
        writer.close()
        await writer.wait_closed()

    async def _stop(self, scheduler: AsyncIOScheduler) -> None:
        """Stop taking work, let the job in hand finish (up to the timeout), then close."""
        self.should_exit.set()
        scheduler.pause()
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout):
                async with self.c.runner.sweep_lock, self._mailbox_lock:
                    pass  # both free: no sweep and no batch in flight
        except TimeoutError:
            log.warning("shutdown: work still running after %.0fs; cancelling it",
                        self.settings.shutdown_timeout)
        scheduler.shutdown(wait=False)
        with contextlib.suppress(Exception):
            await self.c.runner.mailbox.close()
        with contextlib.suppress(Exception):
            await self.lease.release()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set():
            self.force_exit = True
            log.warning("second %s: exiting now", sig.name)
            raise SystemExit(1)
        log.info("%s: finishing the message in hand, then stopping", sig.name)
        self.should_exit.set()

    async def _pause(self, delay: float) -> None:
        """Sleep that a stop request interrupts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.should_exit.wait(), delay)

    # ---- work ----------------------------------------------------------------------------------
    async def _connect_with_backoff(self) -> None:
        backoff = Backoff(base=1.0, cap=60.0)
        while not self.should_exit.is_set():
            try:
                await self.c.runner.mailbox.connect()
                self._connected = True
                return
            except PermanentMailboxError:
                raise
            except MailboxError as e:
                delay = backoff.next_delay()
                log.warning("mailbox connect failed (%s); retrying in %.1fs", e, delay)
                await self._pause(delay)

    async def _poll_once(self) -> bool:
        """One pass over the mailbox; False when it failed (the caller backs off)."""
        async with self._mailbox_lock:
            if self.should_exit.is_set():
                return True
            if not await self._hold_lease():
                return True  # a standby: the holder polls; _poll_job waits lease_retry
            try:
                if not self._connected:
                    await self._connect_with_backoff()
                await self.c.runner.process_waiting()
                ok = True
            except PermanentMailboxError as e:
                # After start-up this means the password was changed or the folder removed:
                # hammering the server would lock the account. Stop and say so.
                log.error("mailbox refuses us permanently (%s); stopping", e)
                self.fatal = e
                self.should_exit.set()
                return False
            except (MailboxError, RetryBatch) as e:
                log.warning("poll failed (%s); reconnecting after a pause", e)
                ok = False
            except Exception:
                log.exception("poll failed")
                ok = False
            if not ok:
                self._connected = False
                with contextlib.suppress(Exception):
                    await self.c.runner.mailbox.close()
        if self.c.runner.outbox_wakeup.is_set():
            self.c.runner.outbox_wakeup.clear()
            await self._outbox_job()
        return ok

    async def _hold_lease(self) -> bool:
        """True when this process may touch the mailbox now: the lease is held and its
        connection alive, or it was just acquired. A lost lease drops the mailbox connection."""
        if self.lease.held:
            if await self.lease.check():
                return True
            self._connected = False
            with contextlib.suppress(Exception):
                await self.c.runner.mailbox.close()
        return await self.lease.acquire()

    async def _poll_job(self) -> None:
        started = time.monotonic()
        ok = await self._poll_once()
        if not self.lease.held:  # standby: try again later; outbox and SLA watch go on
            await self._pause(self.settings.lease_retry)
            return
        self.c.metrics.observe_poll(self.settings.mailbox_id, time.monotonic() - started, ok)
        if ok:
            self._last_poll_ok = time.monotonic()
            self._poll_backoff.reset()
            return
        await self._pause(self._poll_backoff.next_delay())

    async def _idle_loop(self) -> None:
        while not self.should_exit.is_set():
            await self._poll_job()
            if self.should_exit.is_set():
                break
            waiter = asyncio.create_task(self._wait_mail())
            stopper = asyncio.create_task(self.should_exit.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (waiter, stopper):
                if not t.done():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t

    async def _wait_mail(self) -> None:
        async with self._mailbox_lock:
            if not self._connected:
                return
            try:
                await self.c.runner.mailbox.wait_for_new(self.settings.poll_interval)
            except MailboxError as e:
                log.warning("IDLE failed (%s); reconnecting", e)
                self._connected = False
                with contextlib.suppress(Exception):
                    await self.c.runner.mailbox.close()

    async def _watch_job(self) -> None:
        """Several processes may run it at once: sla_alerts' unique key keeps one notice."""
        try:
            result = await asyncio.to_thread(self.c.watch.run_once)
            if result.queued:
                log.info("SLA watch queued %d notices (%s)", result.queued, result)
                self.c.runner.outbox_wakeup.set()
                await self._outbox_job()
        except Exception:
            log.exception("SLA watch failed")

    async def _outbox_job(self) -> None:
        try:
            while not self.should_exit.is_set():
                sent, failed = await self.c.runner.drain_outbox()
                if failed or not sent:
                    return
        except Exception:
            log.exception("outbox sweep failed")


def cmd_run(ns: argparse.Namespace) -> int:
    from triage.config import load_settings
    from triage.logs import configure_logging

    settings = load_settings(ns.config)
    configure_logging(settings.log_format, settings.log_level)
    return run_service(settings, once=ns.once)


def run_service(settings: Settings, *, once: bool) -> int:
    components = build(settings)
    service = Service(settings, components)
    if once:
        try:
            asyncio.run(service.run_once())
        except (MailboxError, RetryBatch) as e:
            # Nothing half-written: the batch in hand was rolled back and left unmarked.
            log.error("run --once stopped: %s", e)
            return 1
        finally:
            components.engine.dispose()
        return 0
    try:
        asyncio.run(service.run())
    except (FatalMailboxError, PermanentMailboxError) as e:
        log.error("stopped: the mailbox refuses us: %s", e)
        return 1
    return 0
