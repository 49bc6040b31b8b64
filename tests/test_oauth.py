"""OAuth2 logins (XOAUTH2) against real servers: a local token server over TLS (a test CA),
a Dovecot whose oauth2 passdb asks its introspection endpoint, and an aiosmtpd server whose
AUTH XOAUTH2 handler asks the same endpoint (tests.oauthserver, tests.dovecot,
tests.smtpsink)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.oauthserver import BAD_SECRET, TokenServer
from tests.smtpsink import SmtpSink, XOAuth2SinkHandler
from triage.mailbox import MailboxAuthError
from triage.mailbox.imap import ImapMailbox
from triage.oauth import (
    Credential,
    TokenRejected,
    TokenSource,
    TokenUnavailable,
    xoauth2_string,
)
from triage.smtp import SmtpSettings, SmtpTransport

pytestmark = pytest.mark.imap


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
