"""Wiring: the one module that knows the concrete classes of the daemon's parts.

``build(settings)`` opens the database (and migrates it), loads the SLA policy, starts the
ingest worker (or loads the classifier here), and makes the mailboxes, the transport, the
outbox's one ``Sender`` (triage.outbox.sender), one ``Runner`` per mailbox sharing it, the
SLA watch and the desk; ``Components`` holds them for the service (triage.service), which
only runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from classifiers.installed import best_model_path
from triage.ack import make_env
from triage.addresses import SendPolicy, normalise
from triage.config import MailboxConfig, Settings
from triage.desk.actions import Desk, DeskConfig
from triage.desk.screened import Screening
from triage.ingest import (
    ClassifierLike,
    Ingestor,
    IngestWorker,
    LocalIngest,
    load_classifier,
    make_store,
)
from triage.lease import Lease, mailbox_lease_name, make_lease
from triage.mailbox import Mailbox
from triage.metrics import Metrics
from triage.notify import NOTIFY
from triage.notify_send import WebhookSender
from triage.oauth import TokenSources
from triage.outbox.recorders import recorder_for
from triage.outbox.render import AckPolicy, Letterhead, Renderers
from triage.outbox.sender import Sender
from triage.outbox.store import CLIENT_KINDS, Job, OutboxStore, RetryPolicy
from triage.pipeline import Runner
from triage.relay import RefusalStreak
from triage.sla import SlaPolicy, load_policy
from triage.slawatch import SlaWatch
from triage.smtp import Transport
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.workorders import WorkOrderStore


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
    # One runner per configured mailbox (``runner`` is the first); all share one sender.
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
                         reprocess=self.ingest.store if self.ingest is not None else None,
                         on_ack_refused=self.metrics.observe_ack_suppressed)

    def lease_for(self, cfg: MailboxConfig) -> Lease:
        """The lease a process holds while it polls mailbox ``cfg`` (triage.lease)."""
        url = cfg.parsed
        return make_lease(self.engine, mailbox_lease_name(
            url.scheme, url.host, url.port, url.user, url.folder, url.path))

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

    Ingestion runs where ``settings.ingest_worker`` says. ``process``: a child, started
    first so that it imports and loads the model while this process migrates the database.
    ``thread``: in this process. A test's own classifier is an object of this process, so
    it is always used in a thread; a test's own clock cannot reach a child, so it needs
    ``ingest_worker="thread"`` said explicitly.
    """
    process = settings.ingest_worker == "process" and classifier is None
    if process and clock is not utcnow:
        raise ValueError("a clock of the caller's own cannot reach the ingest worker process: "
                         "set ingest_worker='thread'")
    # A retrained model (nightly job) wins over the packaged one only when its held-out
    # macro-F1 is not worse, so a restart keeps what the last retrain installed.
    model_path = (best_model_path(settings.model_path, settings.retrained_model_dir)
                  if classifier is None else None)
    worker: IngestWorker | None = None
    if process:
        assert model_path is not None
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

