"""OAuth2 logins (XOAUTH2) against real servers: a local token server over TLS (a test CA),
a Dovecot whose oauth2 passdb asks its introspection endpoint, and an aiosmtpd server whose
AUTH XOAUTH2 handler asks the same endpoint (tests.oauthserver, tests.dovecot,
tests.smtpsink)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from pydantic import SecretStr

from classifiers.predict import Classifier
from tests.dovecot import DovecotUser
from tests.factories import free_port
from tests.oauthserver import BAD_SECRET, TokenServer
from tests.smtpsink import SmtpSink, XOAuth2SinkHandler
from triage.config import Settings, load_settings
from triage.errors import ConfigError
from triage.mailbox import MailboxAuthError
from triage.mailbox.imap import ImapMailbox
from triage.oauth import (
    Credential,
    TokenRejected,
    TokenSource,
    TokenUnavailable,
    xoauth2_string,
)
from triage.service import Service
from triage.smtp import SmtpSettings, SmtpTransport
from triage.wiring import build

pytestmark = pytest.mark.imap
REPO = Path(__file__).resolve().parents[1]


def credential(tokens: TokenServer, client_id: str, secret: str, **kw: object) -> Credential:
    kw.setdefault("ca_file", tokens.ca.ca)
    return Credential("oauth", tokens.token_url, client_id, secret, **kw)  # type: ignore[arg-type]


def leaks(tokens: TokenServer, client_id: str, secret: str, user: str) -> list[str]:
    """What must never be written anywhere: the secret, every token issued to the client,
    and each token's XOAUTH2 string in base64 (as it crosses the wire)."""
    out = [secret]
    for t in tokens.issued_to(client_id):
        out += [t, base64.b64encode(xoauth2_string(user, t).encode()).decode()]
    return out


def assert_no_leak(text: str, secrets: list[str]) -> None:
    for s in secrets:
        assert s not in text, "a token or secret was written"


# ---- the token source, against the token server alone ---------------------------------------
async def test_a_token_is_cached_and_refreshed_before_it_expires(tokens: TokenServer) -> None:
    now = [time.time()]
    cid, secret = tokens.add_client("nobody")
    source = TokenSource(credential(tokens, cid, secret), clock=lambda: now[0])
    first = await source.token()
    assert await source.token() == first
    assert tokens.issued_to(cid) == [first]
    now[0] += 3600 - 301  # more than the refresh margin (300 s) left: still the same
    assert await source.token() == first
    now[0] += 2  # inside the margin: a new one, before the old one has expired
    second = await source.token()
    assert second != first and tokens.issued_to(cid) == [first, second]


async def test_tasks_asking_at_once_share_one_request(tokens: TokenServer) -> None:
    cid, secret = tokens.add_client("nobody")
    source = TokenSource(credential(tokens, cid, secret))
    got = await asyncio.gather(*(source.token() for _ in range(5)))
    assert len(set(got)) == 1 and tokens.issued_to(cid) == [got[0]]


async def test_a_refused_token_is_replaced_by_a_new_one(tokens: TokenServer) -> None:
    cid, secret = tokens.add_client("nobody")
    source = TokenSource(credential(tokens, cid, secret))
    first = await source.token()
    source.invalidate("some other token")  # already replaced by another task: kept
    assert await source.token() == first
    source.invalidate(first)
    assert await source.token() != first


async def test_a_revoked_secret_is_token_rejected_in_the_idps_words(
        tokens: TokenServer) -> None:
    outcomes: list[str] = []
    cid, secret = tokens.add_client("nobody")
    tokens.revoke_client(cid)
    source = TokenSource(credential(tokens, cid, secret), observe=outcomes.append)
    with pytest.raises(TokenRejected) as e:
        await source.token()
    assert str(e.value) == f"token rejected: invalid_client: {BAD_SECRET}"
    assert outcomes == ["rejected"] and source.last_error == str(e.value)
    assert secret not in repr(source) + repr(source.credential)


async def test_an_untrusted_or_absent_endpoint_is_unavailable_not_rejected(
        tokens: TokenServer, sink_cert, tmp_path: Path) -> None:
    cid, secret = tokens.add_client("nobody")
    # The endpoint's certificate is not signed by the CA we were told to trust.
    wrong = TokenSource(credential(tokens, cid, secret, ca_file=sink_cert.cert))
    with pytest.raises(TokenUnavailable, match="unreachable: ConnectError"):
        await wrong.token()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = TokenSource(Credential("oauth", f"https://127.0.0.1:{port}/token", cid, secret,
                                  ca_file=tokens.ca.ca))
    with pytest.raises(TokenUnavailable, match="unreachable"):
        await gone.token()
    assert tokens.issued_to(cid) == []


def test_a_clear_text_token_endpoint_is_refused_off_this_machine() -> None:
    with pytest.raises(ValueError, match="clear-text token endpoint"):
        Credential("oauth", "http://login.example.com/token", "id", "secret")
    Credential("oauth", "http://127.0.0.1:9/token", "id", "secret")  # loopback: allowed


# ---- IMAP: AUTHENTICATE XOAUTH2 against Dovecot's oauth2 passdb -----------------------------
def imap(dovecot_oauth, source: TokenSource) -> ImapMailbox:
    return ImapMailbox(dovecot_oauth.host, dovecot_oauth.port, dovecot_oauth.user, "",
                       security="plain", tokens=source)


REQUEST = (b"From: Dana Whitfield <dana@harborviewdental.com>\r\nTo: helpdesk@itx.net\r\n"
           b"Subject: Outlook cannot send mail\r\nMessage-ID: <o1@harborviewdental.com>\r\n"
           b"Date: Tue, 01 Dec 2026 09:00:00 -0500\r\n\r\n"
           b"Since this morning Outlook cannot send any email. Please help.\r\n")


async def test_imap_logs_in_with_a_token_and_reads_mail(tokens: TokenServer, dovecot_oauth,
                                                        caplog) -> None:
    caplog.set_level(logging.DEBUG)  # aioimaplib's own wire log included
    dovecot_oauth.append(REQUEST)
    cid, secret = tokens.add_client(dovecot_oauth.user)
    mailbox = imap(dovecot_oauth, TokenSource(credential(tokens, cid, secret)))
    await mailbox.connect()
    try:
        batches = [b async for b in mailbox.batches()]
    finally:
        await mailbox.close()
    assert [m.data for b in batches for m in b] == [REQUEST]
    assert "method=XOAUTH2" in dovecot_oauth.server.log_tail(50)
    assert "AUTHENTICATE XOAUTH2 ***" in caplog.text, caplog.text[-3000:]
    assert_no_leak(caplog.text, leaks(tokens, cid, secret, dovecot_oauth.user))


async def test_imap_replaces_a_token_the_server_refuses(tokens: TokenServer,
                                                       dovecot_oauth) -> None:
    """Revoked (or expired) early at the IdP while we still hold it: refused once, then a
    new one from the IdP, on the same session."""
    cid, secret = tokens.add_client(dovecot_oauth.user)
    source = TokenSource(credential(tokens, cid, secret))
    mailbox = imap(dovecot_oauth, source)
    await mailbox.connect()
    await mailbox.close()
    (first,) = tokens.issued_to(cid)
    tokens.revoke_token(first)
    await mailbox.connect()
    try:
        assert mailbox.connected and await mailbox.count_waiting() == 0
    finally:
        await mailbox.close()
    assert len(tokens.issued_to(cid)) == 2


async def test_imap_revoked_secret_is_an_auth_error_naming_the_idps_reason(
        tokens: TokenServer, dovecot_oauth) -> None:
    cid, secret = tokens.add_client(dovecot_oauth.user)
    mailbox = imap(dovecot_oauth, TokenSource(credential(tokens, cid, secret)))
    await mailbox.connect()
    await mailbox.close()
    tokens.revoke_client(cid)
    with pytest.raises(MailboxAuthError, match="token rejected: invalid_client: AADSTS7000215"):
        await mailbox.connect()
    assert not mailbox.connected


async def test_imap_a_server_refusing_every_token_fails_cleanly_not_by_timeout(
        tokens: TokenServer, dovecot_oauth) -> None:
    """The app's tokens are good for another mailbox only. The server's error challenge is
    answered, so the NO comes (after Dovecot's ~2 s failure delay): a MailboxAuthError, not
    the timeout aioimaplib's own xoauth2() would run into."""
    cid, secret = tokens.add_client("someone-else")
    mailbox = imap(dovecot_oauth, TokenSource(credential(tokens, cid, secret)))
    mailbox.timeout = 30.0
    with pytest.raises(MailboxAuthError) as e:
        await mailbox.connect()
    assert "token rejected by the server: NO [AUTHENTICATIONFAILED]" in str(e.value)
    assert '"status":"401"' in str(e.value)  # the challenge's JSON, decoded
    assert len(tokens.issued_to(cid)) == 2  # a new token was tried before giving up


# ---- SMTP: AUTH XOAUTH2 against aiosmtpd asking the same endpoint ---------------------------
def smtp(sink: SmtpSink, user: str, source: TokenSource) -> SmtpTransport:
    return SmtpTransport(SmtpSettings(sink.host, sink.port, "tls", user=user, auth="xoauth2",
                                      tokens=source, ssl_context=sink.client_context))


def ack(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "helpdesk@itx.net", f"c{n}@example.com", f"ack {n}"
    msg["Message-ID"] = f"<ack{n}@itx.net>"
    msg.set_content("Received.")
    return msg


async def test_smtp_sends_with_a_token_and_replaces_one_the_server_refuses(
        tokens: TokenServer, make_smtp_sink: Callable[..., SmtpSink], caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sink = make_smtp_sink("tls", xoauth2=tokens.introspect)
    user = "helpdesk@itx.net"
    cid, secret = tokens.add_client(user)
    source = TokenSource(credential(tokens, cid, secret))
    async with smtp(sink, user, source) as t:
        first = await t.send(ack(1), sender=user, recipients=["c1@example.com"])
    assert first.ok, first
    tokens.revoke_token(tokens.issued_to(cid)[0])
    async with smtp(sink, user, source) as t:
        second = await t.send(ack(2), sender=user, recipients=["c2@example.com"])
    assert second.ok, second
    assert [r.rcpt_tos for r in sink.received] == [("c1@example.com",), ("c2@example.com",)]
    handler = sink.handler
    assert isinstance(handler, XOAuth2SinkHandler)
    assert handler.logins == [f"ok {user}", f"refused {user}", f"ok {user}"]
    assert_no_leak(caplog.text, leaks(tokens, cid, secret, user))


async def test_smtp_revoked_secret_is_a_permanent_auth_failure(
        tokens: TokenServer, make_smtp_sink: Callable[..., SmtpSink]) -> None:
    sink = make_smtp_sink("tls", xoauth2=tokens.introspect)
    cid, secret = tokens.add_client("helpdesk@itx.net")
    tokens.revoke_client(cid)
    async with smtp(sink, "helpdesk@itx.net", TokenSource(credential(tokens, cid, secret))) as t:
        result = await t.send(ack(1), sender="helpdesk@itx.net", recipients=["c@example.com"])
    assert not result.ok and result.permanent and result.transport_failed
    assert result.stage == "auth" and result.text.startswith("token rejected: invalid_client")
    assert sink.received == []


async def test_smtp_server_refusing_every_token(
        tokens: TokenServer, make_smtp_sink: Callable[..., SmtpSink]) -> None:
    sink = make_smtp_sink("tls", xoauth2=tokens.introspect)
    cid, secret = tokens.add_client("someone-else@itx.net")
    async with smtp(sink, "helpdesk@itx.net", TokenSource(credential(tokens, cid, secret))) as t:
        result = await t.send(ack(1), sender="helpdesk@itx.net", recipients=["c@example.com"])
    assert not result.ok and result.permanent and result.stage == "auth"
    assert result.code == 535 and result.text.startswith("token rejected by the server")
    assert len(tokens.issued_to(cid)) == 2


# ---- the daemon: expiry mid-sweep and mid-IDLE ------------------------------------------------
def request(n: int) -> bytes:
    return (f"From: Client {n} <pat{n}@client{n}.example.com>\r\nTo: helpdesk@itx.net\r\n"
            f"Subject: Printer {n} jammed again\r\nMessage-ID: <r{n}@client{n}.example.com>\r\n"
            f"Date: Tue, 01 Dec 2026 09:{n:02d}:00 -0500\r\n\r\n"
            f"The printer on floor {n} jams on every page since this morning. Please send "
            "someone.\r\n").encode()


async def wait_until(condition: Callable[[], bool], seconds: float = 90.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def oauth_settings(tokens: TokenServer, dovecot_oauth, sink: SmtpSink, cid: str, secret: str,
                   tmp_path: Path, **kw: object) -> Settings:
    user = dovecot_oauth.user
    return Settings(
        mailbox_url=f"imap+plain://{user}@127.0.0.1:{dovecot_oauth.port}/INBOX",
        mailbox_auth="xoauth2", smtp_url=sink.url, smtp_auth="xoauth2", smtp_user=user,
        oauth_token_url=tokens.token_url, oauth_client_id=cid,
        oauth_client_secret=SecretStr(secret), oauth_ca_file=tokens.ca.ca,
        database_url=f"sqlite:///{tmp_path / 't.db'}", attachments_dir=tmp_path / "att",
        poll_interval=1.0, outbox_interval=0.5, ops_port=0, ingest_worker="thread",
        **kw)  # type: ignore[arg-type]


async def test_tokens_expiring_mid_sweep_and_mid_idle_are_refreshed_and_nothing_is_lost(
        tokens: TokenServer, dovecot_oauth, make_smtp_sink: Callable[..., SmtpSink],
        sink_cert, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        classifier: Classifier) -> None:
    """Tokens live 3 s. The SMTP server ends a session whose token died (421 at MAIL) and
    takes 0.4 s per DATA, so a sweep of 12 acknowledgments outlives its token: the sender
    reconnects with a new token and carries on. Then, the mailbox idling, its token expires
    and the server ends the session: the poller logs in again with a new token and the next
    mail is triaged. Every acknowledgment goes out exactly once."""
    tokens.lifetime = 3.0
    sink = make_smtp_sink("tls", xoauth2=tokens.introspect)
    handler = sink.handler
    assert isinstance(handler, XOAuth2SinkHandler)
    handler.enforce_expiry, handler.data_delay = True, 0.4
    monkeypatch.setenv("SSL_CERT_FILE", str(sink_cert.cert))  # trust the sink's certificate
    cid, secret = tokens.add_client(dovecot_oauth.user)
    settings = oauth_settings(tokens, dovecot_oauth, sink, cid, secret, tmp_path)
    dovecot_oauth.deliver_files([request(n) for n in range(1, 13)])
    svc = Service(settings, build(settings, classifier=classifier))
    task = asyncio.create_task(svc.run())
    try:
        assert await wait_until(lambda: len(sink.received) == 12), sink.received
        assert "expired" in handler.logins  # the token did die in the middle of the sweep
        assert svc.c.tokens is not None
        (source,) = list(svc.c.tokens)  # IMAP and SMTP share the app's token
        assert await wait_until(lambda: (source.expires_at or 0) < time.time(), 10)
        logins = dovecot_oauth.server.log_tail(500).count("method=XOAUTH2")
        dovecot_oauth.server.kick(dovecot_oauth.user)  # the session ends with its token
        dovecot_oauth.deliver_files([request(13)])
        assert await wait_until(lambda: len(sink.received) == 13), handler.logins
    finally:
        svc.should_exit.set()
        async with asyncio.timeout(30):
            await task
    assert dovecot_oauth.server.log_tail(500).count("method=XOAUTH2") > logins
    ids = [m.data.split(b"In-Reply-To: ", 1)[1].split(b"\r\n", 1)[0] for m in sink.received]
    assert sorted(set(ids)) == sorted(
        f"<r{n}@client{n}.example.com>".encode() for n in range(1, 14))
    assert len(tokens.issued_to(cid)) >= 3
    assert svc.fatal is None and all(p.stopped is None for p in svc.pollers)


# ---- the daemon as users run it: a revoked credential ---------------------------------------
def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_a_revoked_credential_stops_its_mailbox_and_the_daemon_goes_on(
        tokens: TokenServer, dovecot_oauth, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """Two mailboxes: "oauth" logs in with the app's tokens, "plain" with a password. The
    app's secret is revoked and the server ends its session: "oauth" stops, saying why;
    /readyz fails naming "token rejected"; mail to "plain" is still triaged and
    acknowledged, and the web app still answers. No token or secret in any output."""
    other = DovecotUser(dovecot_oauth.server, dovecot_oauth.server.new_user())
    cid, secret = tokens.add_client(dovecot_oauth.user)
    port = free_port()
    mailboxes = [
        {"id": "oauth", "auth": "xoauth2",
         "url": f"imap+plain://{dovecot_oauth.user}@127.0.0.1:{dovecot_oauth.port}/INBOX",
         "oauth": {"token_url": tokens.token_url, "client_id": cid, "client_secret": secret,
                   "ca_file": str(tokens.ca.ca), "secret_expires": "2027-06-30"}},
        {"id": "plain", "password": other.password,
         "url": f"imap+plain://{other.user}@127.0.0.1:{dovecot_oauth.port}/INBOX"},
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | {
        "TRIAGE_MAILBOXES": json.dumps(mailboxes), "TRIAGE_SMTP_URL": smtp_sink.url,
        "TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'triage.db'}",
        "TRIAGE_ATTACHMENTS_DIR": str(tmp_path / "att"), "TRIAGE_POLL_INTERVAL": "1",
        "TRIAGE_OUTBOX_INTERVAL": "0.5", "TRIAGE_OPS_PORT": str(port),
        "TRIAGE_LOG_LEVEL": "DEBUG"}
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "triage", "run"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        dovecot_oauth.deliver_files([request(1)])
        deadline = time.monotonic() + 90
        while len(smtp_sink.received) < 1 and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.2)
        assert len(smtp_sink.received) == 1
        status, body = _get(f"{base}/metrics")
        assert status == 200
        assert ('triage_oauth_credential_expiry_timestamp_seconds{credential="oauth",'
                'kind="client_secret"} 1.8143136e+09') in body  # 2027-06-30T00:00:00Z
        assert 'triage_oauth_token_requests_total{credential="oauth",outcome="ok"} 1.0' in body

        tokens.revoke_client(cid)
        dovecot_oauth.server.kick(dovecot_oauth.user)
        deadline = time.monotonic() + 90
        ready = (0, "")
        while time.monotonic() < deadline:
            assert proc.poll() is None
            ready = _get(f"{base}/readyz")
            if "token rejected" in ready[1]:
                break
            time.sleep(0.3)
        assert ready[0] == 503
        mailbox_check = json.loads(ready[1])["checks"]["mailbox"]
        assert "mailbox oauth stopped" in mailbox_check
        assert "token rejected: invalid_client: AADSTS7000215" in mailbox_check

        other.deliver_files([request(2)])  # the other mailbox is still read
        deadline = time.monotonic() + 90
        while len(smtp_sink.received) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.2)
        assert len(smtp_sink.received) == 2
        assert _get(f"{base}/healthz")[0] == 200 and _get(f"{base}/login")[0] == 200
        status, body = _get(f"{base}/metrics")
        assert 'triage_oauth_token_requests_total{credential="oauth",outcome="rejected"} 1.0' \
            in body
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(other.maildir.parent, ignore_errors=True)
    assert proc.returncode == 0
    assert "mailbox oauth stopped" in out
    assert_no_leak(out + ready[1], leaks(tokens, cid, secret, dovecot_oauth.user))


def test_triage_check_names_an_authentication_failure_as_such(
        tokens: TokenServer, dovecot_oauth, make_smtp_sink: Callable[..., SmtpSink],
        sink_cert, tmp_path: Path) -> None:
    sink = make_smtp_sink("tls", xoauth2=tokens.introspect)
    user = dovecot_oauth.user
    cid, secret = tokens.add_client(user)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | {
        "TRIAGE_MAILBOX_URL": f"imap+plain://{user}@127.0.0.1:{dovecot_oauth.port}/INBOX",
        "TRIAGE_MAILBOX_AUTH": "xoauth2", "TRIAGE_SMTP_URL": sink.url,
        "TRIAGE_SMTP_AUTH": "xoauth2", "TRIAGE_SMTP_USER": user,
        "TRIAGE_OAUTH_TOKEN_URL": tokens.token_url, "TRIAGE_OAUTH_CLIENT_ID": cid,
        "TRIAGE_OAUTH_CLIENT_SECRET": secret, "TRIAGE_OAUTH_CA_FILE": str(tokens.ca.ca),
        "TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'triage.db'}",
        "SSL_CERT_FILE": str(sink_cert.cert)}

    def check() -> dict[str, str]:
        r = subprocess.run([sys.executable, "-m", "triage", "check"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
        assert_no_leak(r.stdout + r.stderr, leaks(tokens, cid, secret, user))
        return {line.split(":", 1)[0].split(None, 1)[1]: line
                for line in r.stdout.splitlines() if line[:4] in ("ok  ", "FAIL")}

    good = check()
    assert good["mailbox helpdesk"].startswith("ok ") and "XOAUTH2 login ok" in \
        good["mailbox helpdesk"]
    assert good["smtp"].startswith("ok ") and f"AUTH XOAUTH2 ok as {user}" in good["smtp"]
    tokens.revoke_client(cid)
    bad = check()
    for what in ("mailbox helpdesk", "smtp"):
        assert bad[what].startswith(
            f"FAIL  {what}: TRIAGE_OAUTH_CLIENT_ID, TRIAGE_OAUTH_CLIENT_SECRET: "), bad[what]
        assert "authentication failed: " in bad[what]
        assert "token rejected: invalid_client: AADSTS7000215" in bad[what]


# ---- settings -------------------------------------------------------------------------------
def test_settings_name_what_an_xoauth2_login_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    for k in [k for k in os.environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(k)
    base = {"mailbox_url": "imaps://helpdesk%40itx.net@outlook.office365.com/INBOX",
            "database_url": f"sqlite:///{tmp_path / 't.db'}"}
    with pytest.raises(ConfigError) as e:
        load_settings(**base, mailbox_auth="xoauth2", oauth_client_id="app",
                      oauth_client_secret="Sec-Do-Not-Echo-1")
    assert str(e.value).startswith("TRIAGE_OAUTH_TOKEN_URL, TRIAGE_OAUTH_CLIENT_ID, "
                                   "TRIAGE_OAUTH_CLIENT_SECRET: xoauth2 needs token_url")
    with pytest.raises(ConfigError, match="clear-text token endpoint") as e:
        load_settings(**base, mailbox_auth="xoauth2", oauth_client_id="app",
                      oauth_client_secret="Sec-Do-Not-Echo-1",
                      oauth_token_url="http://login.example.com/token")
    assert "Sec-Do-Not-Echo-1" not in str(e.value)
    with pytest.raises(ConfigError, match="TRIAGE_SMTP_USER: xoauth2 logs in as a mailbox"):
        load_settings(**base, smtp_url="smtps://smtp.office365.com", smtp_auth="xoauth2",
                      oauth_token_url="https://login.example.com/token",
                      oauth_client_id="app", oauth_client_secret="Sec-Do-Not-Echo-1")
    with pytest.raises(ConfigError, match="not a Maildir"):
        load_settings(database_url=base["database_url"], mailbox_auth="xoauth2")
    ok = load_settings(**base, mailbox_auth="xoauth2", smtp_url="smtps://smtp.office365.com",
                       smtp_auth="xoauth2", smtp_user="helpdesk@itx.net",
                       oauth_token_url="https://login.example.com/t/oauth2/v2.0/token",
                       oauth_client_id="app", oauth_client_secret="Sec-Do-Not-Echo-1",
                       oauth_scope="https://outlook.office365.com/.default",
                       oauth_secret_expires="2027-06-30")
    (cfg,) = ok.mailbox_configs()
    mailbox_app, smtp_app = ok.mailbox_credential(cfg), ok.smtp_credential()
    assert mailbox_app is not None and mailbox_app == smtp_app  # one token for both
    assert mailbox_app.secret_expires is not None
    assert mailbox_app.secret_expires.isoformat() == "2027-06-30T00:00:00+00:00"
    assert "Sec-Do-Not-Echo-1" not in repr(ok) + repr(mailbox_app)
