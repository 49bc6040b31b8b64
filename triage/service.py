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
import multiprocessing
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from classifiers.installed import best_model_path
from triage.ack import make_env
from triage.addresses import SendPolicy, normalise
from triage.backoff import Backoff
from triage.config import MailboxConfig, Settings
from triage.desk.actions import Desk, DeskConfig
from triage.desk.screened import Screening
from triage.errors import ConfigError, RunFailure
from triage.ingest import (
    ClassifierLike,
    Ingestor,
    IngestWorker,
    IngestWorkerError,
    LocalIngest,
    load_classifier,
    make_store,
)
from triage.lease import Lease, mailbox_lease_name, make_lease
from triage.mailbox import Mailbox, MailboxAuthError, MailboxError, PermanentMailboxError
from triage.metrics import Metrics
from triage.notify import NOTIFY
from triage.notify_send import WebhookSender
from triage.oauth import TokenSources
from triage.outbox.recorders import recorder_for
from triage.outbox.render import AckPolicy, Letterhead, Renderers
from triage.outbox.sender import Sender, log_sweep_failure
from triage.outbox.store import CLIENT_KINDS, Job, OutboxStore, RetryPolicy
from triage.pipeline import Runner
from triage.relay import RefusalStreak
from triage.resources import TEMPLATES_DIR
from triage.sla import SlaPolicy, SlaPolicyError, load_policy
from triage.slawatch import SlaWatch
from triage.smtp import Transport
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.web.ops import create_ops_app, serve
from triage.workorders import RetryBatch, WorkOrderStore

if TYPE_CHECKING:
    from classifiers.retrain import RetrainResult

log = logging.getLogger(__name__)
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_mailbox(settings: Settings, mailbox: MailboxConfig | None = None,
                 tokens: TokenSources | None = None) -> Mailbox:
    """The mailbox ``mailbox`` (the first configured one by default). An xoauth2 mailbox
    takes its token source from ``tokens``, shared with SMTP when the app is the same."""
    cfg = mailbox or settings.mailbox_configs()[0]
    url = cfg.parsed
    if url.scheme == "maildir":
        from triage.mailbox.maildir import MaildirMailbox

        assert url.path is not None
        return MaildirMailbox(url.path, max_size=settings.max_message_size)
    from triage.mailbox.imap import ImapMailbox

    password = cfg.password.get_secret_value() if cfg.password else ""
    credential = settings.mailbox_credential(cfg)
    source = None
    if credential is not None:
        source = (tokens or TokenSources()).get(credential)
    return ImapMailbox(
        url.host, url.port, url.user, password, folder=url.folder, security=url.security,
        mark=cfg.mark, max_size=settings.max_message_size, tokens=source,
    )


def token_sources(settings: Settings, engine: Engine | None,
                  observe: Callable[[str, str], None] | None = None) -> TokenSources:
    """The process's token sources; delegated logins keep their refresh tokens in
    ``engine``'s database, encrypted with TRIAGE_OAUTH_TOKEN_KEY (triage.oauth_store)."""
    tokens = TokenSources(observe)
    if engine is not None and settings.oauth_token_key is not None:
        from triage.oauth_store import TokenStore

        tokens.store = TokenStore(engine, settings.oauth_token_key.get_secret_value())
    return tokens


def make_transport(settings: Settings, tokens: TokenSources | None = None) -> Transport:
    from triage.smtp import transport_from_url

    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    credential = settings.smtp_credential()
    source = (tokens or TokenSources()).get(credential) if credential is not None else None
    return transport_from_url(settings.smtp_url, settings.smtp_user, password, tokens=source)


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
    # One runner per configured mailbox (``runner`` is the first; it also sends the outbox).
    runners: list[tuple[MailboxConfig, Runner]] = field(default_factory=list)
    ingest: Ingestor | None = None  # where batches are parsed, classified and stored
    store: WorkOrderStore | None = None  # this process's work-order store
    tokens: TokenSources | None = None  # OAuth2 access tokens for xoauth2 logins

    @property
    def model_path(self) -> Path | None:
        """The classifier's artifact (None: a test's own classifier)."""
        return self.ingest.model_path if self.ingest is not None else None

    @property
    def sends_while_ingesting(self) -> bool:
        """With the ingest worker, acknowledgments leave on this process's core while the
        worker stores the next batches; in one process both would share one core."""
        return isinstance(self.ingest, IngestWorker)

    def screening(self) -> Screening | None:
        """The Screened view's actions: open with this store's rules, reprocess through this
        process's ingestion (the worker, when there is one)."""
        if self.store is None:
            return None
        return Screening(self.sessions, self.policy, self.store, self.clock,
                         reprocess=self.ingest.store if self.ingest is not None else None)

    def close(self) -> None:
        """Stop the ingest worker (if any) and close the database pool."""
        if self.ingest is not None:
            self.ingest.close()
        self.engine.dispose()


def build(
    settings: Settings,
    *,
    classifier: ClassifierLike | None = None,
    mailbox: Mailbox | None = None,
    transport: Transport | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Components:
    """Wire the stages. Tests pass their own mailbox/transport; nothing else is swapped.

    With ``settings.ingest_process`` (and neither a test's classifier nor its clock, which
    a child process could not share) ingestion runs in a child process, started first so
    that it imports and loads the model while this process migrates the database.
    """
    # A retrained model (nightly job) wins over the packaged one only when its held-out
    # macro-F1 is not worse, so a restart keeps what the last retrain installed.
    model_path = (best_model_path(settings.model_path, settings.retrained_model_dir)
                  if classifier is None else None)
    worker: IngestWorker | None = None
    if model_path is not None and settings.ingest_process and clock is utcnow:
        worker = IngestWorker(settings, model_path)
        worker.start()  # it touches the database only with the first batch, after upgrade()
    try:
        return _wire(settings, worker, classifier, model_path, mailbox, transport, clock)
    except BaseException:
        if worker is not None:
            worker.close()
        raise


def send_policy(settings: Settings) -> Callable[[Job], str | None]:
    """The address policy at send time (triage.addresses), for every outgoing row: client
    mail must not reach our own addresses; escalations and pages may reach the lead and
    on-call addresses they are meant for."""
    policy = SendPolicy.of(settings.own_addresses(), settings.own_domain_names(),
                           staff=[a for a in (settings.lead_address, settings.oncall_address)
                                  if a])

    def check(job: Job) -> str | None:
        reason = policy.refusal(job.to_addr, to_staff=job.kind not in CLIENT_KINDS)
        if (reason == "own_address" and job.kind == NOTIFY
                and normalise(job.to_addr) not in policy.own_keys):
            # A staff user's own address (written from the users table when queued): mail
            # inside our domain is what it is for; the helpdesk's own addresses stay refused.
            return None
        return reason

    return check


def _wire(settings: Settings, worker: IngestWorker | None, classifier: ClassifierLike | None,
          model_path: Path | None, mailbox: Mailbox | None, transport: Transport | None,
          clock: Callable[[], datetime]) -> Components:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    reads = make_read_sessionmaker(engine)
    policy = load_policy(settings.sla_policy_path)
    store = make_store(settings, sessions, policy, clock, reads)
    ingest: Ingestor
    if worker is not None:
        ingest = worker
    else:
        if classifier is None:
            assert model_path is not None
            classifier = load_classifier(model_path)
        ingest = LocalIngest(store, classifier, model_path)
    outbox = OutboxStore(
        sessions,
        RetryPolicy(settings.outbox_max_attempts, settings.outbox_retry_base,
                    settings.outbox_retry_cap),
        clock,
        recorder=recorder_for(engine),
    )
    metrics = Metrics()
    tokens = token_sources(settings, engine, metrics.observe_token_request)
    tokens.observe_refresh = metrics.observe_refresh_token
    transport = transport or make_transport(settings, tokens)
    renderers = Renderers(
        make_env(settings.templates_dir),
        Letterhead(settings.from_address, settings.from_name, settings.helpdesk_phone),
        AckPolicy(lambda contract: policy.calendar(contract).tz.key,
                  policy.priority_meaning, policy.fulfil_in_words),
        attachments_dir=settings.attachments_dir)
    # One sender per process, whatever the number of mailboxes.
    sender = Sender(outbox, transport, renderers, transport_pause=settings.outbox_retry_base,
                    metrics=metrics, address_policy=send_policy(settings),
                    refusals=RefusalStreak(settings.relay_refusal_recipients,
                                           settings.relay_refusal_domains,
                                           settings.relay_refusal_window))
    if settings.notify_webhook_url is not None:
        sender.webhook = WebhookSender(outbox, settings.notify_webhook_url.get_secret_value())
    configs = settings.mailbox_configs()
    if mailbox is not None:  # a test's own mailbox stands for the first configured one
        configs = configs[:1]
    runners = [
        (cfg, Runner(
            mailbox if mailbox is not None else make_mailbox(settings, cfg, tokens), ingest,
            sender, batch_size=settings.batch_size, metrics=metrics))
        for cfg in configs
    ]
    runner = runners[0][1]
    watch = SlaWatch(
        sessions, policy, clock, at_risk_fraction=settings.at_risk_fraction,
        lead_address=settings.lead_address, oncall_address=settings.oncall_address,
        from_domain=settings.from_address.rsplit("@", 1)[-1], reads=reads,
        webhook=settings.notify_webhook_url is not None,
    )
    desk = Desk(sessions, policy, DeskConfig(settings.from_address, settings.at_risk_fraction),
                clock, on_first_response=metrics.observe_first_response)
    for source in tokens:
        metrics.observe_credential(source.credential)
        load_age = getattr(source, "load_refresh_token_age", None)
        if load_age is not None:
            load_age()
    return Components(engine, policy, runner, transport, reads, metrics, watch, desk, sessions,
                      clock, runners, ingest, store, tokens)


class SendFailing(Exception):
    """/readyz: the SMTP server answers, but the last outbox sweep could send nothing."""


class DatabaseRefusing(Exception):
    """/readyz: the database answers reads, but the last batch could not be stored."""


class FatalMailboxError(Exception):
    """The mailbox refuses us for good (credentials, folder): stop with a non-zero code."""


class MailboxStopped(Exception):
    """/readyz: a mailbox stopped for good (its OAuth2 credential is refused); the rest of
    the daemon goes on serving."""


class Poller:
    """One mailbox: its lease, connection, IDLE or poll loop and backoff. A process runs one
    per configured mailbox; each takes its own lease, so with several processes on one
    PostgreSQL every mailbox has exactly one poller, not necessarily in the same process."""

    def __init__(self, service: Service, cfg: MailboxConfig, runner: Runner) -> None:
        self.service = service
        self.id = cfg.id
        self.runner = runner
        self.lock = asyncio.Lock()
        self.connected = False
        # Why this mailbox stopped (a refused OAuth2 credential), or None while it runs.
        self.stopped: str | None = None
        self.last_ok = time.monotonic()
        settings = service.settings
        self.backoff = Backoff(base=1.0, cap=min(300.0, max(30.0, settings.poll_interval * 5)))
        runner.should_stop = runner.sender.should_stop = service.should_exit.is_set
        url = cfg.parsed
        self.lease = make_lease(service.c.engine, mailbox_lease_name(
            url.scheme, url.host, url.port, url.user, url.folder, url.path))

    @property
    def mailbox(self) -> Mailbox:
        return self.runner.mailbox

    async def run(self) -> None:
        svc = self.service
        if await self.lease.acquire():
            try:
                await self.connect_with_backoff()
            except MailboxAuthError as e:
                await self.stop_for(e)
        idle = getattr(self.mailbox, "supports_idle", True) and svc.settings.use_idle
        while not svc.should_exit.is_set() and self.stopped is None:
            await self.poll_job()
            if svc.should_exit.is_set():
                break
            if idle and self.lease.held:
                await self._idle_wait()
            else:
                await svc.pause(svc.settings.poll_interval)
        if self.stopped is not None:
            await svc.should_exit.wait()  # the others go on; /readyz names this one

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
        backoff = Backoff(base=1.0, cap=60.0)
        while not self.service.should_exit.is_set():
            try:
                await self.mailbox.connect()
                self.connected = True
                return
            except PermanentMailboxError:
                raise
            except MailboxError as e:
                delay = backoff.next_delay()
                log.warning("mailbox %s: connect failed (%s); retrying in %.1fs", self.id, e,
                            delay)
                await self.service.pause(delay)

    async def poll_once(self) -> bool:
        """One pass over the mailbox; False when it failed (the caller backs off)."""
        svc = self.service
        async with self.lock:
            if svc.should_exit.is_set() or self.stopped is not None:
                return True
            if not await self.hold_lease():
                return True  # a standby: the holder polls; poll_job waits lease_retry
            try:
                if not self.connected:
                    await self.connect_with_backoff()
                await self.runner.process_waiting(send=svc.c.sends_while_ingesting)
                svc.db_trouble = None
                ok = True
            except MailboxAuthError as e:
                await self.stop_for(e)
                return False
            except PermanentMailboxError as e:
                # After start-up this means the password was changed or the folder removed:
                # hammering the server would lock the account. Stop and say so.
                log.error("mailbox %s refuses us permanently (%s); stopping", self.id, e)
                svc.fatal = e
                svc.should_exit.set()
                return False
            except RetryBatch as e:
                # The database refused the batch (locked, unreachable): nothing was stored or
                # marked; the same messages come back on the next poll.
                log.warning("mailbox %s: %s; retrying after a pause", self.id, e)
                svc.db_trouble = f"{e} ({e.__cause__ or 'no detail'})"
                ok = False
            except MailboxError as e:
                log.warning("mailbox %s: poll failed (%s); reconnecting after a pause",
                            self.id, e)
                ok = False
            except Exception:
                log.exception("mailbox %s: poll failed", self.id)
                ok = False
            if not ok:
                await self.disconnect()
        if self.runner.outbox_wakeup.is_set():
            self.runner.outbox_wakeup.clear()
            await svc.outbox_job()
        return ok

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
        svc = self.service
        started = time.monotonic()
        ok = await self.poll_once()
        if not self.lease.held:  # standby: try again later; outbox and SLA watch go on
            await svc.pause(svc.settings.lease_retry)
            return
        svc.c.metrics.observe_poll(self.id, time.monotonic() - started, ok)
        if ok:
            self.last_ok = time.monotonic()
            self.backoff.reset()
            return
        await svc.pause(self.backoff.next_delay())

    async def _idle_wait(self) -> None:
        svc = self.service
        waiter = asyncio.create_task(self._wait_mail())
        stopper = asyncio.create_task(svc.should_exit.wait())
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
                await self.mailbox.wait_for_new(self.service.settings.poll_interval)
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
        stale = max(3 * self.service.settings.poll_interval, 120.0)
        if time.monotonic() - self.last_ok > stale:
            raise TimeoutError(f"mailbox {self.id}: no successful poll for more than "
                               f"{stale:.0f}s")


class Service:
    def __init__(self, settings: Settings, components: Components) -> None:
        self.settings = settings
        self.c = components
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self.fatal: BaseException | None = None
        self.db_trouble: str | None = None  # set while the database refuses batches
        runners = components.runners or [(settings.mailbox_configs()[0], components.runner)]
        self.pollers = [Poller(self, cfg, runner) for cfg, runner in runners]

    @property
    def lease(self) -> Lease:
        """The first mailbox's lease (the retrain job runs where it is held)."""
        return self.pollers[0].lease

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run_once(self) -> int:
        """Process everything waiting in every mailbox, try every due outbox row once, return."""
        n = 0
        async with self.c.transport:
            for p in self.pollers:
                # A cron job beside a running daemon must not poll the same mailbox in parallel.
                if not await p.lease.acquire():
                    log.info("run --once: another process polls mailbox %s; skipped", p.id)
                    continue
                try:
                    await p.mailbox.connect()
                    try:
                        n += await p.runner.process_waiting(
                            send=self.c.sends_while_ingesting)
                    finally:
                        await p.mailbox.close()
                finally:
                    await p.lease.release()
            while True:
                sent, failed = await self.c.runner.sender.drain()
                if failed or not sent:
                    break
        log.info("run --once: %d messages, counters %s %s", n,
                 [p.runner.counters for p in self.pollers], self.c.runner.sender.counters)
        return n

    async def run(self) -> None:
        self._install_signals()
        scheduler = AsyncIOScheduler(timezone=UTC)
        ops = self._start_ops()
        async with self.c.transport:
            # The outbox runs from the start: acknowledgments already queued go out even
            # while the mailbox is unreachable.
            scheduler.add_job(self.outbox_job, "interval", seconds=self.settings.outbox_interval,
                              id="outbox", max_instances=1, coalesce=True,
                              next_run_time=utcnow())
            scheduler.add_job(self._watch_job, "interval",
                              seconds=self.settings.sla_watch_interval, id="sla_watch",
                              max_instances=1, coalesce=True, next_run_time=utcnow())
            if self.settings.retrain_hour >= 0 and self.c.model_path is not None:
                scheduler.add_job(self._retrain_job, "cron", hour=self.settings.retrain_hour,
                                  minute=17, id="retrain", max_instances=1, coalesce=True)
                scheduler.add_job(self._model_refresh_job, "interval", minutes=15,
                                  id="model_refresh", max_instances=1, coalesce=True)
            scheduler.start()
            try:
                await asyncio.gather(*(p.run() for p in self.pollers))
            finally:
                await self._stop(scheduler)
                if ops is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(10):
                            await ops
        await asyncio.to_thread(self.c.close)  # the ingest worker, then the pool
        log.info("stopped; counters %s %s", [p.runner.counters for p in self.pollers],
                 self.c.runner.sender.counters)
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
        if self.db_trouble:  # readable, but the last batch could not be written
            raise DatabaseRefusing(self.db_trouble)

    async def _check_mailbox(self) -> None:
        # Every mailbox at once; the first failure names its mailbox.
        await asyncio.gather(*(p.check() for p in self.pollers))

    async def _check_smtp(self) -> None:
        await self.c.transport.check()
        trouble = self.c.runner.sender.send_trouble
        if trouble:  # reachable, but refusing (4xx) or failing our mail
            raise SendFailing(trouble)

    async def _stop(self, scheduler: AsyncIOScheduler) -> None:
        """Stop taking work, let the job in hand finish (up to the timeout), then close."""
        self.should_exit.set()
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
        scheduler.shutdown(wait=False)
        try:  # deliveries not yet in the outbox table go into it
            await asyncio.to_thread(self.c.runner.sender.outbox.flush)
        except Exception:
            log.exception("shutdown: deliveries could not be applied; the next start will")
        for p in self.pollers:
            with contextlib.suppress(Exception):
                await p.mailbox.close()
            with contextlib.suppress(Exception):
                await p.lease.release()

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

    async def pause(self, delay: float) -> None:
        """Sleep that a stop request interrupts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.should_exit.wait(), delay)

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
        try:
            while not self.should_exit.is_set():
                sent, failed = await self.c.runner.sender.drain()
                if failed or not sent:
                    return
        except Exception as e:
            log_sweep_failure(e, "outbox sweep")

    async def _retrain_job(self) -> None:
        """Nightly: corrections to training data, train, swap only if not worse on the
        held-out set. Runs where the first mailbox's lease is held, so one process trains.

        Training runs in a process of its own: it imports scikit-learn and peaks at ~300 MB,
        and the daemon's main process, which never loads either, must not keep that after."""
        if not self.lease.held:
            return
        s = self.settings
        try:
            result = await asyncio.to_thread(
                _in_subprocess, retrain_from_database, s.database_url, s.corrections_dir,
                s.retrained_model_dir, self.c.model_path, s.model_path, s.training_dir,
                s.heldout_dir, s.keywords_path)
        except Exception:
            log.exception("nightly retrain failed; the current model stays")
            return
        log.info("nightly retrain: %s (macro-F1 %s -> %s, %d corrections)", result.reason,
                 result.old_macro_f1, result.new_macro_f1, result.corrections)
        if result.swapped:
            await self._load_model(result.model_path)

    async def _model_refresh_job(self) -> None:
        """Other processes pick up a model another one retrained (a shared model folder)."""
        try:
            path = await asyncio.to_thread(best_model_path, self.settings.model_path,
                                           self.settings.retrained_model_dir)
            if path != self.c.model_path:
                await self._load_model(path)
        except Exception:
            log.exception("model refresh failed; the current model stays")

    async def _load_model(self, path: Path) -> None:
        assert self.c.ingest is not None
        version = await asyncio.to_thread(self.c.ingest.load_model, path)
        log.info("classifier %s loaded from %s", version, path)


def retrain_from_database(database_url: str, corrections_dir: Path, retrained_dir: Path,
                          current: Path | None, packaged: Path | None,
                          training: Path | None = None, heldout: Path | None = None,
                          keywords: Path | None = None) -> RetrainResult:
    """``classifiers.retrain.nightly`` with a connection of its own (runs in a subprocess);
    ``training``, ``heldout`` and ``keywords`` default to the shipped data/."""
    from classifiers.retrain import nightly

    engine = make_engine(database_url)
    try:
        return nightly(make_read_sessionmaker(engine), corrections_dir, retrained_dir, current,
                       packaged_model_path=packaged, keywords_path=keywords,
                       **({"heldout_dir": heldout} if heldout else {}),
                       **({"training": [training]} if training else {}))
    finally:
        engine.dispose()


def _in_subprocess(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a fresh (spawned) process; its memory is returned when it ends."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


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
    if once:
        try:
            asyncio.run(service.run_once())
        except MailboxError as e:
            # Nothing half-written: the batch in hand was rolled back and left unmarked.
            log.error("run --once stopped: %s", e)
            raise RunFailure(f"{_mailbox_setting(settings, e)}: {e}") from e
        except RetryBatch as e:
            log.error("run --once stopped: %s", e)
            raise RunFailure(f"TRIAGE_DATABASE_URL: {e} ({e.__cause__ or 'no detail'})") from e
        return 0
    try:
        asyncio.run(service.run())
    except (FatalMailboxError, PermanentMailboxError) as e:
        log.error("stopped: the mailbox refuses us: %s", e)
        raise RunFailure(f"{_mailbox_setting(settings, e)}: the mailbox refuses us: {e}") from e
    return 0
