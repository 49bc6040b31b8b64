"""The daemon: start, run, stop (uvicorn's ``serve()`` = startup, main loop, shutdown).

``Service.serve()`` runs one lifecycle for both ways of running. As a daemon: signals,
the ops/web server and the scheduled jobs (outbox sweep, SLA watch, retrain) start, one
``Poller`` per mailbox polls until a signal. As a burst (``run --once``): the same loop
makes one pass over every mailbox, then sweeps the outbox until nothing more leaves, then
stops; it takes no work from outside (no web server, no schedule).

Shutdown (uvicorn's order): a signal only sets ``should_exit``; the pollers finish the
batch in hand (store and mark), the scheduler stops taking jobs and waits (up to
``shutdown_timeout``) for the running one, the mailboxes close and their leases are
released, the transport closes, the signal handlers are restored. A second signal forces
exit. The components (ingest worker, database pool) belong to whoever built them
(``run_service``), which closes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import text

from triage.ack import make_env
from triage.config import Settings
from triage.errors import ConfigError, RunFailure
from triage.ingest import IngestWorker, IngestWorkerError
from triage.lease import Lease
from triage.mailbox import MailboxAuthError, MailboxError, PermanentMailboxError
from triage.outbox.sender import log_sweep_failure
from triage.poller import MailboxStopped, Poller
from triage.resources import TEMPLATES_DIR
from triage.retrain_job import ModelJobs
from triage.sla import SlaPolicyError, load_policy
from triage.web.ops import create_ops_app, serve
from triage.wiring import Components, build
from triage.workorders import RetryBatch

__all__ = ["DatabaseRefusing", "FatalMailboxError", "MailboxStopped", "SendFailing",
           "Service", "cmd_run", "run_service"]

log = logging.getLogger(__name__)


class SendFailing(Exception):
    """/readyz: the SMTP server answers, but the last outbox sweep could send nothing."""


class DatabaseRefusing(Exception):
    """/readyz: the database answers reads, but the last batch could not be stored."""


class FatalMailboxError(Exception):
    """The mailbox refuses us for good (credentials, folder): stop with a non-zero code."""


def _now() -> datetime:
    return datetime.now(UTC)


class Service:
    """Runs ``components`` (triage.wiring) as a daemon or a burst; ``serve`` is the one
    lifecycle. The components stay open afterwards: their builder closes them."""

    def __init__(self, settings: Settings, components: Components) -> None:
        self.settings = settings
        self.c = components
        self.should_exit = asyncio.Event()
        self.force_exit = False
        s = settings
        self.pollers = [
            Poller(cfg.id, runner, components.lease_for(cfg), self.should_exit,
                   poll_interval=s.poll_interval, lease_retry=s.lease_retry,
                   use_idle=s.use_idle, metrics=components.metrics,
                   send_while_ingesting=components.sends_while_ingesting,
                   sweep=self.outbox_job)
            for cfg, runner in components.runners
        ]
        self.models = (ModelJobs(settings, components.ingest, lambda: self.lease.held)
                       if components.ingest is not None else None)
        self._stack: contextlib.AsyncExitStack | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._ops: asyncio.Task[None] | None = None
        self._signals: dict[signal.Signals, Any] = {}

    @property
    def lease(self) -> Lease:
        """The first mailbox's lease (the retrain job runs where it is held)."""
        return self.pollers[0].lease

    @property
    def fatal(self) -> BaseException | None:
        """Why a mailbox refuses us for good, if one does."""
        return next((p.fatal for p in self.pollers if p.fatal is not None), None)

    @property
    def db_trouble(self) -> str | None:
        """Set while the database refuses a mailbox's batches."""
        return next((p.db_trouble for p in self.pollers if p.db_trouble), None)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def serve(self, *, burst: bool = False) -> int:
        """Start, run until stopped (or, with ``burst``, until every mailbox has been read
        and the outbox swept), stop. Returns the messages handled."""
        before = sum(p.handled for p in self.pollers)
        try:
            await self.startup(burst=burst)
            await self.main_loop(burst=burst)
        finally:
            await self.shutdown()
        handled = sum(p.handled for p in self.pollers) - before
        outcomes: dict[str, int] = {}
        for p in self.pollers:
            for disposition, n in p.runner.counters.by_disposition.items():
                outcomes[disposition] = outcomes.get(disposition, 0) + n
        sent = self.c.runner.sender.counters
        log.info("%s; counters: %d messages handled, %d fetched, outcomes %s; %d sent, "
                 "%d send failures", "run --once" if burst else "stopped", handled,
                 sum(p.runner.counters.fetched for p in self.pollers), outcomes, sent.sent,
                 sent.send_failures)
        if self.fatal is not None:
            raise FatalMailboxError(str(self.fatal)) from self.fatal
        return handled

    async def run(self) -> None:
        """The daemon."""
        await self.serve()

    async def run_once(self) -> int:
        """``run --once``: process what is waiting in every mailbox, send, return."""
        return await self.serve(burst=True)

    async def startup(self, *, burst: bool = False) -> None:
        self.should_exit.clear()
        self.force_exit = False
        for p in self.pollers:
            p.fatal = None
        self._install_signals()  # first: shutdown restores them whatever fails after
        self._stack = contextlib.AsyncExitStack()
        await self._stack.enter_async_context(self.c.transport)
        if burst:
            return
        self._ops = self._start_ops()
        self._scheduler = self._schedule()
        self._scheduler.start()

    async def main_loop(self, *, burst: bool = False) -> None:
        await asyncio.gather(*(p.run(burst=burst) for p in self.pollers))
        if burst:
            await self.outbox_job()

    async def shutdown(self) -> None:
        """Stop taking work, let the work in hand finish (up to the timeout), then close."""
        self.should_exit.set()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.pause()
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout):
                async with self.c.runner.sender.sweep_lock:
                    for p in self.pollers:
                        async with p.lock:
                            pass  # free: no batch in flight on this mailbox
        except TimeoutError:
            log.warning("shutdown: work still running after %.0fs; cancelling it",
                        self.settings.shutdown_timeout)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        try:  # deliveries not yet in the outbox table go into it
            await asyncio.to_thread(self.c.runner.sender.outbox.flush)
        except Exception:
            log.exception("shutdown: deliveries could not be applied; the next start will")
        for p in self.pollers:
            with contextlib.suppress(Exception):
                await p.mailbox.close()
            p.connected = False
            with contextlib.suppress(Exception):
                await p.lease.release()
        ops, self._ops = self._ops, None
        if ops is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await ops
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()  # the transport
        finally:
            self._restore_signals()

    def _schedule(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone=UTC)
        # The outbox runs from the start: acknowledgments already queued go out even while
        # the mailbox is unreachable.
        scheduler.add_job(self.outbox_job, "interval", seconds=self.settings.outbox_interval,
                          id="outbox", max_instances=1, coalesce=True, next_run_time=_now())
        scheduler.add_job(self._watch_job, "interval", seconds=self.settings.sla_watch_interval,
                          id="sla_watch", max_instances=1, coalesce=True, next_run_time=_now())
        if (self.settings.retrain_hour >= 0 and self.models is not None
                and self.c.model_path is not None):
            scheduler.add_job(self.models.retrain, "cron", hour=self.settings.retrain_hour,
                              minute=17, id="retrain", max_instances=1, coalesce=True)
            scheduler.add_job(self.models.refresh, "interval", minutes=15,
                              id="model_refresh", max_instances=1, coalesce=True)
        return scheduler

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
            from triage.desk.sent import SentAcks
            from triage.desk.uploads import UploadLimits
            from triage.web.app import WebDeps, create_web_app
            from triage.web.throttle import LoginBuckets, LoginLimits

            app = create_web_app(WebDeps(
                sessions=self.c.sessions, reads=self.c.reads, policy=self.c.policy,
                desk=self.c.desk, attachments_dir=self.settings.attachments_dir,
                clock=self.c.clock, cookie_secure=self.settings.web_cookie_secure,
                session_ttl=timedelta(hours=self.settings.web_session_hours),
                screening=self.c.screening(), metrics=self.c.metrics,
                upload_limits=UploadLimits(self.settings.reply_max_files,
                                           self.settings.reply_max_file_bytes,
                                           self.settings.reply_max_total_bytes),
                login_buckets=LoginBuckets(LoginLimits.from_settings(self.settings)),
                templates_dir=self.settings.templates_dir or TEMPLATES_DIR,
                acks=SentAcks(self.c.policy, from_address=self.settings.from_address,
                              phone=self.settings.helpdesk_phone,
                              env=make_env(self.settings.templates_dir)),
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
        trouble = self.db_trouble
        if trouble:  # readable, but the last batch could not be written
            raise DatabaseRefusing(trouble)

    async def _check_mailbox(self) -> None:
        # Every mailbox at once; the first failure names its mailbox.
        await asyncio.gather(*(p.check() for p in self.pollers))

    async def _check_smtp(self) -> None:
        await self.c.transport.check()
        trouble = self.c.runner.sender.send_trouble
        if trouble:  # reachable, but refusing (4xx) or failing our mail
            raise SendFailing(trouble)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)
                self._signals[sig] = previous

    def _restore_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, previous in self._signals.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
                if previous is not None:  # None: a handler not set from Python
                    signal.signal(sig, previous)
        self._signals.clear()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set():
            self.force_exit = True
            log.warning("second %s: exiting now", sig.name)
            raise SystemExit(1)
        log.info("%s: finishing the message in hand, then stopping", sig.name)
        self.should_exit.set()

    # ---- jobs --------------------------------------------------------------------------------
    async def _watch_job(self) -> None:
        """Several processes may run it at once: sla_alerts' unique key keeps one notice."""
        try:
            result = await asyncio.to_thread(self.c.watch.run_once)
            if result.queued:
                log.info("SLA watch queued %d notices (%s)", result.queued, result)
                self.c.runner.outbox_wakeup.set()
                await self.outbox_job()
        except Exception:
            log.exception("SLA watch failed")

    async def outbox_job(self) -> None:
        """Sweep the outbox until a sweep sends nothing or fails (the only call site of the
        sender in the service)."""
        try:
            while not self.should_exit.is_set():
                sent, failed = await self.c.runner.sender.drain()
                if failed or not sent:
                    return
        except Exception as e:
            log_sweep_failure(e, "outbox sweep")


def cmd_run(ns: argparse.Namespace) -> int:
    from triage.config import load_settings
    from triage.logs import configure_logging

    settings = load_settings(ns.config)
    configure_logging(settings.log_format, settings.log_level)
    return run_service(settings, once=ns.once)


def run_service(settings: Settings, *, once: bool) -> int:
    """Run the daemon (or one pass); a failure that stops it is logged and raised as a
    ``RunFailure`` naming the setting, which the CLI prints as one line and exit 1."""
    try:  # the policy is a setting: a broken one stops us before the database is touched
        load_policy(settings.sla_policy_path)
    except SlaPolicyError as e:
        raise ConfigError(f"TRIAGE_SLA_POLICY_PATH: {e}: fix the policy file") from e
    components = build(settings)
    try:
        if isinstance(components.ingest, IngestWorker):
            try:  # fail at start, as a missing model did before the worker existed
                components.ingest.wait_ready()
            except IngestWorkerError as e:
                log.error("stopped: %s", e)
                raise RunFailure(f"the ingest worker could not start: {e}") from e
        return _run(settings, components, once=once)
    finally:
        components.close()


def _mailbox_setting(settings: Settings, e: Exception) -> str:
    if isinstance(e, MailboxAuthError) or "token rejected" in str(e):
        return "TRIAGE_MAILBOXES" if settings.mailboxes else \
            "TRIAGE_OAUTH_CLIENT_ID, TRIAGE_OAUTH_CLIENT_SECRET"
    if settings.mailboxes:
        return "TRIAGE_MAILBOXES"
    return "TRIAGE_MAILBOX_PASSWORD" if "login refused" in str(e) else "TRIAGE_MAILBOX_URL"


def _run(settings: Settings, components: Components, *, once: bool) -> int:
    service = Service(settings, components)
    try:
        asyncio.run(service.serve(burst=once))
    except (FatalMailboxError, PermanentMailboxError) as e:
        if once:
            raise _once_failed(settings, e) from e
        log.error("stopped: the mailbox refuses us: %s", e)
        raise RunFailure(f"{_mailbox_setting(settings, e)}: the mailbox refuses us: {e}") from e
    except (MailboxError, RetryBatch) as e:  # only a burst raises these
        raise _once_failed(settings, e) from e
    return 0


def _once_failed(settings: Settings, e: Exception) -> RunFailure:
    # Nothing half-written: the batch in hand was rolled back and left unmarked.
    log.error("run --once stopped: %s", e)
    if isinstance(e, RetryBatch):
        return RunFailure(f"TRIAGE_DATABASE_URL: {e} ({e.__cause__ or 'no detail'})")
    return RunFailure(f"{_mailbox_setting(settings, e)}: {e}")
