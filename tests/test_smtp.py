"""SMTP transport against a real aiosmtpd (tests/smtpsink.py), and the .eml folder transport."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.smtpsink import SINK_PASSWORD, SINK_USER, SmtpSink
from triage.smtp import (
    DirectoryTransport,
    SendResult,
    SmtpSettings,
    SmtpTransport,
    eml_name,
    serialize,
    transport_from_url,
)

SENDER = "helpdesk@itx.net"
CLIENT = "client@example.com"


BODY = "We received your request.\n.leading dot line\n"  # the dot tests transparency


def ack(n: int = 1, *, body: str = BODY) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"ITX Helpdesk <{SENDER}>"
    msg["To"] = CLIENT
    msg["Subject"] = f"[WO-{n}] Request received"
    msg["Message-ID"] = f"<outbox-{n}.ack@itx.net>"
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(body)
    return msg


def settings_for(sink: SmtpSink, *, password: str | None = SINK_PASSWORD, **kw) -> SmtpSettings:
    creds = (SINK_USER, password) if sink.auth else (None, None)
    return SmtpSettings.from_url(sink.url, *creds, ssl_context=sink.client_context, **kw)


@pytest.fixture
async def transport(smtp_sink: SmtpSink) -> AsyncIterator[SmtpTransport]:
    async with SmtpTransport(settings_for(smtp_sink)) as t:
        yield t


async def send(t: SmtpTransport | DirectoryTransport, msg: EmailMessage, *rcpts: str) -> SendResult:
    return await t.send(msg, sender=SENDER, recipients=rcpts or (CLIENT,))


# --- delivery -----------------------------------------------------------------------------


async def test_plain_loopback_delivers_the_exact_bytes(smtp_sink, transport):
    msg = ack(1)
    msg["Bcc"] = "hidden@itx.net"
    result = await send(transport, msg)

    assert result.ok and result.code == 250 and not result.permanent
    (got,) = smtp_sink.received
    assert got.mail_from == SENDER and got.rcpt_tos == (CLIENT,)
    assert got.data == serialize(msg)
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert parsed["Message-ID"] == "<outbox-1.ack@itx.net>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Bcc"] is None  # stripped on the wire ...
    assert msg["Bcc"] == "hidden@itx.net"  # ... but the caller's message is untouched
    assert parsed.get_content().replace("\r\n", "\n") == BODY


@pytest.mark.parametrize("kind", ["starttls", "tls"])
async def test_tls_with_auth_delivers(make_smtp_sink: Callable[..., SmtpSink], kind):
    sink = make_smtp_sink(kind, auth=True)  # STARTTLS/AUTH both required by the sink
    async with SmtpTransport(settings_for(sink)) as t:
        result = await send(t, ack(2))
    assert result.ok, result
    assert [r.data for r in sink.received] == [serialize(ack(2))]


async def test_8bit_body_and_utf8_recipient(smtp_sink, transport):
    msg = ack(3)
    msg.set_content("Grüße aus dem Helpdesk\n", cte="8bit")
    result = await send(transport, msg, "zoë@example.com")
    assert result.ok, result
    (got,) = smtp_sink.received
    assert got.rcpt_tos == ("zoë@example.com",)
    assert "SMTPUTF8" in got.mail_options and "BODY=8BITMIME" in got.mail_options
    assert got.data == serialize(msg, utf8=True)


async def test_one_connection_is_reused(smtp_sink, transport):
    for n in range(5):
        assert (await send(transport, ack(n))).ok
    assert transport.connects == 1 and transport.sent == 5
    assert len(smtp_sink.received) == 5


# --- failures are results, classified -------------------------------------------------------


async def test_wrong_password_is_permanent_auth_failure(smtp_sink_starttls):
    settings = settings_for(smtp_sink_starttls, password="not-the-password")
    async with SmtpTransport(settings) as t:
        result = await send(t, ack())
    assert not result.ok and result.permanent
    assert result.stage == "auth" and result.code == 535 and result.transport_failed
    assert smtp_sink_starttls.received == []


@pytest.mark.parametrize("at", ["rcpt", "data"])
async def test_451_is_transient_and_the_connection_stays_usable(smtp_sink, transport, at):
    smtp_sink.behave("tempfail", at=at)
    result = await send(transport, ack(1))
    assert (result.ok, result.permanent, result.code, result.stage) == (False, False, 451, at)

    smtp_sink.behave("accept")
    assert (await send(transport, ack(2))).ok
    assert transport.connects == 1
    assert [r.rcpt_tos for r in smtp_sink.received] == [(CLIENT,)]


@pytest.mark.parametrize("at", ["rcpt", "data"])
async def test_550_is_permanent(smtp_sink, transport, at):
    smtp_sink.behave("reject", at=at)
    result = await send(transport, ack())
    assert (result.ok, result.permanent, result.code, result.stage) == (False, True, 550, at)
    assert not result.transport_failed  # about this message: dead-letter it
    if at == "rcpt":
        assert result.refused == (CLIENT,)
    assert smtp_sink.received == []


async def test_partial_refusal_is_permanent_to_avoid_duplicates(smtp_sink, transport):
    smtp_sink.behave(refuse=frozenset({"gone@example.com"}))
    result = await send(transport, ack(), CLIENT, "gone@example.com")
    assert not result.ok and result.permanent and result.refused == ("gone@example.com",)
    assert "gone@example.com: 550" in result.text
    assert [r.rcpt_tos for r in smtp_sink.received] == [(CLIENT,)]


async def test_server_down_is_transient_then_a_fresh_connection_delivers(smtp_sink, transport):
    assert (await send(transport, ack(1))).ok
    smtp_sink.stop()

    down = await send(transport, ack(2))
    assert (down.ok, down.permanent, down.code, down.stage) == (False, False, None, "connect")

    smtp_sink.start()  # same port
    assert (await send(transport, ack(2))).ok
    assert transport.connects == 2
    assert [r.data for r in smtp_sink.received] == [serialize(ack(1)), serialize(ack(2))]


async def test_restart_between_sends_is_invisible(smtp_sink, transport):
    assert (await send(transport, ack(1))).ok
    smtp_sink.restart()
    assert (await send(transport, ack(2))).ok
    assert transport.connects == 2 and transport.failed == 0


async def test_stale_connection_421_reconnects_once_transparently(smtp_sink, transport):
    assert (await send(transport, ack(1))).ok
    smtp_sink.drop_next_mail()
    result = await send(transport, ack(2))
    assert result.ok, result
    assert transport.connects == 2
    assert len(smtp_sink.received) == 2


async def test_silent_server_times_out_transiently():
    # A listener that never accepts: the kernel completes the handshake, nobody greets.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        settings = SmtpSettings("127.0.0.1", listener.getsockname()[1], "plain", timeout=0.3)
        async with SmtpTransport(settings) as t:
            result = await send(t, ack())
    assert (result.ok, result.permanent, result.stage) == (False, False, "connect")
    assert "timed out" in result.text.lower()


async def test_connection_refused_is_transient():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with SmtpTransport(SmtpSettings("127.0.0.1", port, "plain")) as t:
        result = await send(t, ack())
    assert (result.ok, result.permanent, result.code) == (False, False, None)


async def test_starttls_missing_never_falls_back_to_plaintext(smtp_sink):
    settings = SmtpSettings("127.0.0.1", smtp_sink.port, "starttls", SINK_USER, SINK_PASSWORD)
    async with SmtpTransport(settings) as t:
        result = await send(t, ack())
    assert (result.ok, result.permanent, result.stage) == (False, True, "tls")
    assert smtp_sink.received == []


@pytest.mark.parametrize("kind", ["starttls", "tls"])
async def test_untrusted_certificate_is_refused(make_smtp_sink: Callable[..., SmtpSink], kind):
    sink = make_smtp_sink(kind, auth=True)
    # No ssl_context: the system trust store does not know the sink's self-signed certificate.
    settings = SmtpSettings("127.0.0.1", sink.port, kind, SINK_USER, SINK_PASSWORD)
    async with SmtpTransport(settings) as t:
        result = await send(t, ack())
    assert (result.ok, result.permanent, result.stage) == (False, True, "tls")
    assert "certificate" in result.text.lower() and result.transport_failed
    assert sink.received == []


async def test_missing_credentials_530_is_a_transport_failure(smtp_sink_starttls):
    sink = smtp_sink_starttls  # requires AUTH; we send none
    settings = SmtpSettings("127.0.0.1", sink.port, "starttls", ssl_context=sink.client_context)
    async with SmtpTransport(settings) as t:
        result = await send(t, ack())
    assert (result.ok, result.permanent, result.code, result.stage) == (False, True, 530, "auth")
    assert result.transport_failed and sink.received == []


async def test_password_never_logged(smtp_sink_starttls, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-Pass-d41d8c"
    good = settings_for(smtp_sink_starttls)
    bad = settings_for(smtp_sink_starttls, password=wrong)
    async with SmtpTransport(good) as t:
        ok = await send(t, ack(1))
        shown = repr(t)
    async with SmtpTransport(bad) as t:
        failed = await send(t, ack(2))
    assert ok.ok and not failed.ok
    assert caplog.records  # the failure was logged
    text = "\n".join([caplog.text, repr(good), repr(bad), shown, repr(ok), repr(failed)])
    assert SINK_PASSWORD not in text and wrong not in text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("triage"))
    assert "We received your request" not in ours  # nor the body (aiosmtpd logs it; we don't)


# --- lifecycle and programming errors --------------------------------------------------------


async def test_lifecycle_unopened_open_closed_no_reopen(smtp_sink):
    t = SmtpTransport(settings_for(smtp_sink))
    assert t.state == "unopened"
    with pytest.raises(RuntimeError):
        await send(t, ack())
    async with t:
        assert t.state == "open"
        assert (await send(t, ack())).ok
    assert t.state == "closed"
    with pytest.raises(RuntimeError):
        await send(t, ack())
    with pytest.raises(RuntimeError):
        await t.__aenter__()


async def test_programming_errors_raise(transport):
    no_id = ack()
    del no_id["Message-ID"]
    with pytest.raises(ValueError, match="Message-ID"):
        await send(transport, no_id)
    with pytest.raises(ValueError, match="no recipients"):
        await transport.send(ack(), sender=SENDER, recipients=[])
    with pytest.raises(TypeError):
        await transport.send(ack(), sender=SENDER, recipients=CLIENT)


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "security", "port"),
    [
        ("smtps://mail.example.com", "tls", 465),
        ("smtp://mail.example.com", "starttls", 587),
        ("smtp://mail.example.com:2525", "starttls", 2525),
        ("smtp+plain://127.0.0.1", "plain", 25),
        ("smtp+plain://localhost:1025", "plain", 1025),
        ("smtp+plain://[::1]:1025", "plain", 1025),
    ],
)
def test_from_url(url, security, port):
    s = SmtpSettings.from_url(url, "u", "pw")
    assert (s.security, s.port) == (security, port)
    assert "pw" not in repr(s)


@pytest.mark.parametrize(
    "url",
    [
        "smtp+plain://mail.example.com",  # plaintext off loopback
        "smtp+plain://10.0.0.5:25",
        "smtp+plain://localhost.example.com",  # names are not resolved
        "smtp://u:pw@mail.example.com",  # password in the URL
        "http://mail.example.com",
        "smtp://mail.example.com/path",
        "smtp://",
        "smtp://mail.example.com:99999",
    ],
)
def test_from_url_refuses(url):
    with pytest.raises(ValueError):
        SmtpSettings.from_url(url, None, None)


def test_settings_refuse_plaintext_and_half_credentials():
    with pytest.raises(ValueError, match="plaintext"):
        SmtpSettings("mail.example.com", 25, "plain", "u", "pw")
    with pytest.raises(ValueError, match="together"):
        SmtpSettings("mail.example.com", 587, "starttls", "u", None)
    with pytest.raises(ValueError, match="verify"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        SmtpSettings("mail.example.com", 465, "tls", ssl_context=ctx)
    assert SmtpSettings.from_url("smtp://alice@mail.example.com", None, "pw").user == "alice"


# --- folder transport -------------------------------------------------------------------------


async def test_directory_transport_writes_parseable_eml(tmp_path: Path):
    outbox = tmp_path / "var" / "outbox"
    async with DirectoryTransport(outbox) as t:
        r1 = await send(t, ack(1))
        r2 = await send(t, ack(1))  # the outbox re-sends after a crash: same file, no duplicate
        r3 = await send(t, ack(2))
    assert r1.ok and r2.ok and r3.ok
    files = sorted(p.name for p in outbox.iterdir())
    assert files == ["outbox-1.ack@itx.net.eml", "outbox-2.ack@itx.net.eml"]  # no .tmp left
    raw = (outbox / files[0]).read_bytes()
    assert raw == serialize(ack(1))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"] == "<outbox-1.ack@itx.net>" and not parsed.defects


async def test_directory_transport_hostile_message_id_stays_inside(tmp_path: Path):
    msg = ack()
    msg.replace_header("Message-ID", "<../../etc/passwd@x>")
    async with DirectoryTransport(tmp_path / "out") as t:
        assert (await send(t, msg)).ok
    (written,) = (tmp_path / "out").iterdir()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert written.name.endswith(".eml") and not written.name.startswith(".")
    assert eml_name("<a/b@x>") != eml_name("<a_b@x>")  # sanitising never merges two IDs


async def test_directory_transport_failed_write_leaves_nothing(tmp_path: Path, monkeypatch):
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("triage.smtp.os.fsync", broken_fsync)
    async with DirectoryTransport(tmp_path) as t:
        result = await send(t, ack())
    assert (result.ok, result.permanent, result.stage) == (False, False, "write")
    assert list(tmp_path.iterdir()) == []


def test_transport_from_url():
    assert isinstance(transport_from_url("dir://var/outbox"), DirectoryTransport)
    assert transport_from_url("dir://var/outbox").path == Path("var/outbox")
    assert isinstance(transport_from_url("smtps://mail.example.com", "u", "p"), SmtpTransport)


# --- ready: the outbox's record of the previous mail gates the hand-over ------------------


async def test_nothing_is_handed_over_before_ready(smtp_sink, transport):
    """MAIL and RCPT go out at once; DATA (the delivery) waits for ``ready``."""
    import asyncio

    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sending = asyncio.ensure_future(transport.send(ack(1), sender=SENDER, recipients=[CLIENT],
                                                   ready=ready))
    for _ in range(50):
        await asyncio.sleep(0.01)
    assert not sending.done() and smtp_sink.received == []  # envelope given, mail not
    ready.set_result(None)
    result = await sending
    assert result.ok and len(smtp_sink.received) == 1


async def test_a_failed_ready_hands_nothing_over_and_the_next_mail_goes(smtp_sink, transport):
    import asyncio

    async def failing() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("the record of the previous mail failed")

    with pytest.raises(RuntimeError, match="previous mail failed"):
        await transport.send(ack(1), sender=SENDER, recipients=[CLIENT],
                             ready=asyncio.ensure_future(failing()))
    assert smtp_sink.received == []
    assert (await send(transport, ack(2))).ok  # the envelope was reset: a clean transaction
    (got,) = smtp_sink.received
    assert b"outbox-2.ack" in got.data and got.rcpt_tos == (CLIENT,)


async def test_directory_transport_waits_for_ready_too(tmp_path: Path):
    import asyncio

    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    async with DirectoryTransport(tmp_path / "out") as t:
        writing = asyncio.ensure_future(t.send(ack(1), sender=SENDER, recipients=[CLIENT],
                                               ready=ready))
        await asyncio.sleep(0.05)
        assert not writing.done() and not any((tmp_path / "out").iterdir())
        ready.set_result(None)
        assert (await writing).ok
