"""``triage check``: try a configuration before going live, one line per check.

It loads what ``triage run`` loads (settings, SLA policy, templates, model) and talks to what
it talks to (the database, every mailbox, SMTP), the way the daemon would, but changes
nothing: no migration, no mail fetched, marked or sent, no SQLite file or folder created.
The one exception is ``mark = "move:FOLDER"``: logging in creates that IMAP folder if it is
missing, exactly as ``triage run`` does at start. Exit 0 when every check passed, 1 when
any failed, 2 when the settings themselves are wrong (nothing else can be tried then).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from triage.config import MailboxConfig, Settings, load_settings
from triage.errors import BAD_CONFIGURATION, ConfigError, describe

if TYPE_CHECKING:
    from triage.oauth import TokenSources

NET_TIMEOUT = 30.0  # seconds for one server's whole check: login, select, search
_OAUTH_SETTINGS = "TRIAGE_OAUTH_CLIENT_ID, TRIAGE_OAUTH_CLIENT_SECRET"


class Report:
    """Prints ``ok   what: detail`` / ``FAIL what: detail`` lines as the checks finish."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = 0

    def ok(self, what: str, detail: str) -> None:
        self.out.write(f"ok    {what}: {detail}\n")
        self.out.flush()

    def fail(self, what: str, detail: str) -> None:
        self.failed += 1
        self.out.write(f"FAIL  {what}: {detail}\n")
        self.out.flush()

    def run(self, what: str, check: Callable[[], str]) -> None:
        """One check: its detail on success; its failure as the one line ``describe`` gives."""
        try:
            self.ok(what, check())
        except Exception as exc:  # every failure is a line, never a traceback
            self.fail(what, describe(exc)[1])


def cmd_check(ns: argparse.Namespace) -> int:
    report = Report(sys.stdout)
    try:
        settings = load_settings(ns.config)
    except ConfigError as e:
        report.fail("settings", str(e))
        return BAD_CONFIGURATION
    source = f"--config {ns.config} and TRIAGE_* variables" if ns.config else \
        "TRIAGE_* variables and defaults"
    report.ok("settings", source)
    policy_holder: list[object] = []
    report.run("policy", lambda: check_policy(settings, policy_holder))
    if policy_holder:
        report.run("templates", lambda: check_templates(policy_holder[0]))
    report.run("model", lambda: check_model(settings))
    report.run("database", lambda: check_database(settings.database_url))
    for cfg in settings.mailbox_configs():
        report.run(f"mailbox {cfg.id}", functools.partial(_run_check_mailbox, settings, cfg))
    report.run("smtp", lambda: asyncio.run(check_smtp(settings)))
    return 1 if report.failed else 0


def check_policy(settings: Settings, holder: list[object]) -> str:
    from triage.sla import DEFAULT_POLICY_PATH, SlaPolicyError, load_policy

    try:
        policy = load_policy(settings.sla_policy_path)
    except SlaPolicyError as e:
        raise ConfigError(f"TRIAGE_SLA_POLICY_PATH: {e}: fix the policy file") from e
    holder.append(policy)
    return (f"{settings.sla_policy_path or DEFAULT_POLICY_PATH}: {len(policy.types)} request "
            f"types, contracts {', '.join(policy.contracts)}")


def check_templates(policy: object) -> str:
    """Every template compiles, and an acknowledgment renders for every request type (the
    templates are strict: a missing variable is an error here, not in a client's mail)."""
    from triage.ack import AckView, make_env, render_ack_wire
    from triage.sla import SlaPolicy

    assert isinstance(policy, SlaPolicy)
    env = make_env()
    names = [n for n in env.list_templates() if n.startswith("email/") and n.endswith(".j2")]
    for name in names:
        env.get_template(name)
    now = datetime.now(UTC)
    for request_type in policy.types:
        priority = policy.default_priority(request_type)
        due = policy.due(request_type, None, "standard", now)
        view = AckView(
            number="ITX-000000", request_type=request_type, priority=priority,
            priority_meaning=policy.priority_meaning(priority), to_addr="client@example.com",
            message_id="check@itx.invalid", in_reply_to=None, references=(), subject="check",
            timezone=policy.calendar("standard").tz.key, response_due=due.response_due,
            callback_due=due.callback_due, fulfil_due=due.fulfil_due,
            milestones=due.milestones, date=now, requester_name="Dana",
            fulfil_within=policy.fulfil_in_words(request_type, priority))
        render_ack_wire(env, view, from_address="helpdesk@itx.invalid", from_name="ITX",
                        phone="800-600-7785")
    return (f"{len(names)} mail templates compile; acknowledgments render for all "
            f"{len(policy.types)} request types")


def check_model(settings: Settings) -> str:
    from classifiers.installed import best_model_path
    from triage.ingest import load_classifier

    path = best_model_path(settings.model_path, settings.retrained_model_dir)
    try:
        classifier = load_classifier(path)
    except Exception as e:
        raise ConfigError(f"TRIAGE_MODEL_PATH: {path}: cannot be loaded: {e}") from e
    return f"{path} (version {classifier.version})"


def check_database(url: str) -> str:
    """Connects and compares the schema with the newest migration; creates nothing."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url

    from triage.storage.engine import make_engine
    from triage.storage.migrate import alembic_config

    u = make_url(url)
    where = u.render_as_string(hide_password=True)
    if (u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:"
            and not Path(u.database).is_file()):
        raise ConfigError(f"TRIAGE_DATABASE_URL: {where}: the file does not exist yet: "
                          "triage db upgrade (or triage run) creates it")
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        at = f"schema {current}" if current else "no schema"
        raise ConfigError(f"TRIAGE_DATABASE_URL: {where}: {at}, the code needs {head}: run "
                          "triage db upgrade (triage run also upgrades at start)")
    return f"{where}: schema {current} (the newest)"


def _run_check_mailbox(settings: Settings, cfg: MailboxConfig) -> str:
    return asyncio.run(check_mailbox(settings, cfg))


async def check_mailbox(settings: Settings, cfg: MailboxConfig) -> str:
    """Log in and select the folder as the daemon does; count what is waiting."""
    from triage.errors import RunFailure
    from triage.mailbox import MailboxAuthError, MailboxError
    from triage.mailbox.imap import ImapMailbox
    from triage.mailbox.maildir import MaildirMailbox
    from triage.wiring import make_mailbox

    url = cfg.parsed
    mailbox = make_mailbox(settings, cfg, _tokens(settings))
    setting = "TRIAGE_MAILBOXES" if settings.mailboxes else "TRIAGE_MAILBOX_URL"
    try:
        async with asyncio.timeout(NET_TIMEOUT):
            if isinstance(mailbox, MaildirMailbox):
                await mailbox.connect()
                waiting = await mailbox.count_waiting()
                return f"{mailbox.name}: a Maildir, {_waiting(waiting)}"
            assert isinstance(mailbox, ImapMailbox)  # make_mailbox's other kind
            await mailbox.connect()
            caps = mailbox.capabilities
            waiting = await mailbox.count_waiting()
    except MailboxAuthError as e:
        # Not a network matter: the IdP or the server refuses the OAuth2 credential.
        if cfg.oauth is None and not settings.mailboxes:
            setting = _OAUTH_SETTINGS
        raise RunFailure(f"{setting}: authentication failed: {e}") from e
    except MailboxError as e:
        if "login refused" in str(e) and not settings.mailboxes:
            setting = "TRIAGE_MAILBOX_PASSWORD"
        raise RunFailure(f"{setting}: {e}") from e
    except TimeoutError as e:
        raise RunFailure(f"{setting}: {url.host}:{url.port} did not answer within "
                         f"{NET_TIMEOUT:.0f} s") from e
    finally:
        await mailbox.close()
    have = ", ".join(f"{c} {'yes' if c in caps else 'no'}" for c in ("IDLE", "MOVE", "UIDPLUS"))
    idle = "" if "IDLE" in caps or not settings.use_idle else \
        f" (without IDLE it polls every {settings.poll_interval:g} s)"
    login = "XOAUTH2 login" if cfg.auth == "xoauth2" else "login"
    return (f"{mailbox.name}: {url.security} {login} ok, folder {url.folder} selected, {have}"
            f"{idle}; {_waiting(waiting)}")


def _tokens(settings: Settings) -> TokenSources:
    """Token sources as the daemon has them: delegated logins read the database."""
    from triage.storage.engine import make_engine
    from triage.wiring import token_sources

    engine = make_engine(settings.database_url) if settings.oauth_token_key else None
    return token_sources(settings, engine)


def _waiting(n: int) -> str:
    return f"{n} message{'' if n == 1 else 's'} waiting"


async def check_smtp(settings: Settings) -> str:
    """Connect, TLS or STARTTLS, AUTH, as a send would; nothing is sent."""
    from triage.errors import RunFailure
    from triage.smtp import SmtpTransport
    from triage.wiring import make_transport

    transport = make_transport(settings, _tokens(settings))
    if not isinstance(transport, SmtpTransport):
        folder = Path(settings.smtp_url[len("dir://"):])
        probe = folder.absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # the daemon creates the missing folders under it
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise RunFailure(f"TRIAGE_SMTP_URL: {folder} cannot be written (nor created)")
        return f"{settings.smtp_url}: acknowledgments are written as .eml files, not sent"
    name = transport.settings.name
    async with transport:
        try:
            async with asyncio.timeout(NET_TIMEOUT):
                failure = await transport.probe()
        except TimeoutError as e:
            raise RunFailure(f"TRIAGE_SMTP_URL: {name} did not answer within "
                             f"{NET_TIMEOUT:.0f} s") from e
        if failure is not None:
            setting = ("TRIAGE_SMTP_USER, TRIAGE_SMTP_PASSWORD" if failure.stage == "auth"
                       else "TRIAGE_SMTP_URL")
            what = f"{failure.stage} failed"
            if failure.stage == "auth" and transport.settings.auth == "xoauth2":
                setting = _OAUTH_SETTINGS
                what = "authentication failed"
            code = f"{failure.code} " if failure.code else ""
            raise RunFailure(f"{setting}: {name}: {what}: {code}{failure.text}")
        security = {"tls": "TLS ok", "starttls": "STARTTLS ok",
                    "plain": "plaintext (loopback only)"}[transport.settings.security]
        if transport.settings.auth == "xoauth2":
            auth = f"AUTH XOAUTH2 ok as {transport.settings.user}"
        elif transport.settings.user:
            auth = f"AUTH ok as {transport.settings.user}"
        else:
            auth = "no AUTH (no TRIAGE_SMTP_USER)" + (
                "; the server offers it" if transport.offers_auth else "")
    return f"{name}: {security}, {auth}"
