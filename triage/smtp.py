"""Outgoing mail transports for the outbox: SMTP (aiosmtplib) and a folder of .eml files.

A transport turns one ``EmailMessage`` into a :class:`SendResult` and never raises for
anything the network or the server does; the outbox decides from the result whether to
retry, dead-letter or pause. It raises only for programming errors (missing Message-ID,
no recipients, sending on a transport that is not open).

Classification of a failed send (``SendResult``):

    ok=True                       accepted (2xx after DATA)
    permanent=False               4xx reply, connection refused/lost, timeout: retry later
    permanent=True                5xx reply (AUTH, MAIL, RCPT, DATA), a recipient refused
                                  with 5xx, a partial delivery, missing STARTTLS/AUTH support,
                                  a TLS certificate that does not verify: retrying alone will
                                  not help.

``stage`` says where it stopped. ``connect``/``tls``/``auth`` failures concern the transport,
not the message: an outbox should pause sending rather than dead-letter every row.

Settings refuse plaintext towards anything but loopback, so a password never crosses the
network in clear, and the transport never falls back from TLS to plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.errors
import email.policy
import hashlib
import logging
import os
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import EmailMessage
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, cast
from urllib.parse import urlsplit

import aiosmtplib

from triage.netutil import is_loopback

if TYPE_CHECKING:
    from triage.oauth import TokenSource

logger = logging.getLogger(__name__)

Security = Literal["tls", "starttls", "plain"]
Stage = Literal["", "connect", "tls", "auth", "message", "mail", "rcpt", "data", "write"]

_SCHEMES: dict[str, tuple[Security, int]] = {
    "smtps": ("tls", 465),
    "smtp": ("starttls", 587),
    "smtp+plain": ("plain", 25),
}


@dataclass(frozen=True)
class WireMessage:
    """A mail already in wire form (CRLF line ends, headers encoded, no Bcc), sent byte for
    byte: acknowledgments are written this way (triage.ack.render_ack_wire), because an
    ``EmailMessage`` costs more to build and serialise than the SMTP exchange itself."""

    data: bytes
    message_id: str  # as in the header, with angle brackets

    def __post_init__(self) -> None:
        if not self.data.endswith(b"\r\n"):
            raise ValueError("a wire message ends with CRLF")


Mail = EmailMessage | WireMessage


def message_id_of(msg: Mail) -> str:
    return msg.message_id if isinstance(msg, WireMessage) else str(msg.get("Message-ID", ""))


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to submit mail; validated at construction so a bad config fails at start."""

    host: str
    port: int
    security: Security
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    # xoauth2: AUTH XOAUTH2 as ``user`` with a token from ``tokens`` instead of a password.
    auth: Literal["password", "xoauth2"] = "password"
    tokens: TokenSource | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.security not in ("tls", "starttls", "plain"):
            raise ValueError(f"SMTP security must be tls, starttls or plain, not {self.security!r}")
        if not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"SMTP host is empty or contains whitespace: {self.host!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"SMTP port out of range: {self.port}")
        if not self.timeout > 0:
            raise ValueError(f"SMTP timeout must be positive, not {self.timeout}")
        if self.auth == "xoauth2":
            if not self.user or self.password is not None:
                raise ValueError("SMTP xoauth2 needs a user (the mailbox to send as) and no "
                                 "password")
        elif self.auth != "password":
            raise ValueError(f"SMTP auth must be password or xoauth2, not {self.auth!r}")
        elif (self.user is None) != (self.password is None):
            raise ValueError("SMTP user and password must be given together")
        if self.security == "plain" and not is_loopback(self.host):
            raise ValueError(
                # Also the only way a password could cross the network in clear.
                f"refusing plaintext SMTP to non-loopback host {self.host!r}: "
                "use smtps:// (implicit TLS) or smtp:// (STARTTLS)"
            )
        if self.ssl_context is not None and self.ssl_context.verify_mode == ssl.CERT_NONE:
            raise ValueError("SMTP ssl_context must verify the server certificate")

    @classmethod
    def from_url(
        cls,
        url: str,
        user: str | None = None,
        password: str | None = None,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        auth: Literal["password", "xoauth2"] = "password",
        tokens: TokenSource | None = None,
    ) -> SmtpSettings:
        """Parse ``smtps://host[:465]``, ``smtp://host[:587]`` (STARTTLS required) or
        ``smtp+plain://host[:25]`` (loopback only). A user may be in the URL; a password may
        not, because URLs end up in logs."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                f"unsupported SMTP URL scheme {parts.scheme!r}: use smtps, smtp or smtp+plain"
            )
        if parts.password is not None:
            raise ValueError("put the SMTP password in its own setting, not in the URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("an SMTP URL has no path, query or fragment")
        if not parts.hostname:
            raise ValueError("SMTP URL has no host")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in SMTP URL: {exc}") from None
        security, default_port = _SCHEMES[scheme]
        if parts.username and user is None:
            user = parts.username
        return cls(
            host=parts.hostname,
            port=port or default_port,
            security=security,
            user=user,
            password=password,
            timeout=timeout,
            ssl_context=ssl_context,
            auth=auth,
            tokens=tokens,
        )

    @property
    def name(self) -> str:
        """The URL without credentials, for logs and metrics."""
        scheme = {v[0]: k for k, v in _SCHEMES.items()}[self.security]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class SendResult:
    """What happened to one message. ``refused`` lists recipients the server refused."""

    ok: bool
    permanent: bool
    code: int | None
    text: str
    stage: Stage = ""
    refused: tuple[str, ...] = ()

    @property
    def transport_failed(self) -> bool:
        """The failure concerns the server or our settings, not this message (e.g. a wrong
        password, permanent): pause the outbox and keep the row instead of dead-lettering it."""
        return not self.ok and self.stage in ("connect", "tls", "auth")

    @property
    def answer(self) -> str:
        """``550 5.1.1 ...``, or the text alone when no SMTP reply came."""
        return self.text if self.code is None else f"{self.code} {self.text}"


class Transport(Protocol):
    """What the daemon and the outbox call; both transports below satisfy it. Used inside
    ``async with``, which opens it (and closes it on the way out)."""

    async def __aenter__(self) -> Transport: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(
        self, msg: Mail, *, sender: str, recipients: Sequence[str],
        ready: Awaitable[object] | None = None,
    ) -> SendResult:
        """Deliver ``msg``. ``ready``, when given, is awaited just before the mail is handed
        over (before DATA): the caller's record of the previous mail, so that at most one
        delivered mail is ever unrecorded. If it raises, nothing is handed over and the
        exception propagates."""
        ...

    async def probe_recipient(self, *, sender: str, recipient: str) -> SendResult | None:
        """Would the far end take mail for ``recipient`` now? Nothing is handed over. None:
        this transport has no one to ask (triage.relay then decides without a probe)."""
        ...

    async def check(self) -> None:
        """Readiness (/readyz): raise, saying why, if mail could not leave now."""
        ...


def _needs_utf8(sender: str, recipients: Sequence[str]) -> bool:
    return not (sender.isascii() and all(r.isascii() for r in recipients))


def serialize(msg: Mail, *, utf8: bool = False, cte_type: str = "8bit") -> bytes:
    """The exact bytes put on the wire: CRLF line ends, Bcc headers removed."""
    if isinstance(msg, WireMessage):
        return msg.data
    if "Bcc" in msg or "Resent-Bcc" in msg:
        msg = copy.copy(msg)  # shallow: del rebinds the header list, the caller's stays intact
        del msg["Bcc"]
        del msg["Resent-Bcc"]
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    if cte_type != "8bit":
        policy = policy.clone(cte_type=cte_type)
    buf = BytesIO()
    BytesGenerator(buf, policy=policy).flatten(msg)
    return buf.getvalue()


# What the email generator raises for a message it cannot render (bad header, unknown charset).
_UNRENDERABLE = (email.errors.MessageError, ValueError, UnicodeError, LookupError)


def _check_args(msg: Mail, sender: str, recipients: Sequence[str]) -> tuple[str, ...]:
    """Programming errors, raised: the outbox must always set these."""
    if not isinstance(msg, EmailMessage | WireMessage):
        raise TypeError(f"expected email.message.EmailMessage, got {type(msg).__name__}")
    if not message_id_of(msg):
        raise ValueError("outgoing message has no Message-ID (the outbox must set one)")
    if isinstance(recipients, str):
        raise TypeError("recipients must be a sequence of addresses, not one string")
    rcpts = tuple(recipients)
    if not rcpts:
        raise ValueError("no recipients")
    for addr in (sender, *rcpts):
        if any(c in addr for c in "\r\n\0"):
            raise ValueError(f"control character in envelope address {addr!r}")
    return rcpts


class _Stale(Exception):
    """A reused connection turned out dead at MAIL: reconnect and try once more."""


class _NotOurs(Exception):
    """The caller's ``ready`` failed mid-transaction: re-raised to it unclassified."""


class _State:
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class SmtpTransport:
    """One reused SMTP connection, opened lazily at the first send and re-opened after the
    server dropped it. Sends are serialised (one transaction at a time on one connection).

    Use ``async with SmtpTransport(settings) as t: await t.send(...)``; it cannot be reopened.
    """

    def __init__(self, settings: SmtpSettings, *, local_hostname: str | None = None) -> None:
        self.settings = settings
        self._state = _State.UNOPENED
        self._lock = asyncio.Lock()
        context = settings.ssl_context
        if context is None and settings.security != "plain":
            context = ssl.create_default_context()
        self._smtp = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            use_tls=settings.security == "tls",
            start_tls=False,  # done explicitly below, never opportunistically
            tls_context=context,
            timeout=settings.timeout,
            # getfqdn() can block on DNS for seconds; a fixed name is enough for EHLO.
            local_hostname=local_hostname or "localhost",
        )
        self.sent = 0
        self.failed = 0
        self.connects = 0

    def __repr__(self) -> str:
        return (
            f"<SmtpTransport {self.settings.name} {self._state} sent={self.sent} "
            f"failed={self.failed} connects={self.connects}>"
        )

    @property
    def state(self) -> str:
        return self._state

    async def __aenter__(self) -> SmtpTransport:
        if self._state != _State.UNOPENED:
            raise RuntimeError(f"cannot open an SMTP transport that is {self._state}")
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def probe(self) -> SendResult | None:
        """Connect, secure and log in as a send would, sending nothing (``triage check``):
        None when all of it worked, else the failure. Use it inside ``async with``."""
        async with self._lock:
            failure = await self._connect()
        return failure

    async def check(self) -> None:
        """The server accepts a TCP connection (closed at once: no SMTP session, so a
        readiness probe every few seconds costs the relay nothing)."""
        _, writer = await asyncio.open_connection(self.settings.host, self.settings.port)
        writer.close()
        await writer.wait_closed()

    @property
    def offers_auth(self) -> bool:
        """After ``probe``: the server announced AUTH."""
        return bool(self._smtp.supports_extension("auth"))

    async def aclose(self) -> None:
        """Say QUIT if connected; idempotent."""
        if self._state == _State.CLOSED:
            return
        self._state = _State.CLOSED
        async with self._lock:
            transport = self._smtp.transport
            if self._smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await self._smtp.quit(timeout=min(5.0, self.settings.timeout))
            self._drop()
            _abort(transport)  # quit() only close()d it: a TLS close waits for the peer
            # The socket is closed by a callback on the next loop iterations; run them, or a
            # loop that ends right after us leaks the socket.
            for _ in range(3):
                await asyncio.sleep(0)

    def _drop(self) -> None:
        """Forget the connection at once (abort, not close: a TLS close awaits the peer)."""
        transport = self._smtp.transport
        self._smtp.close()
        _abort(transport)

    async def send(
        self, msg: Mail, *, sender: str, recipients: Sequence[str],
        ready: Awaitable[object] | None = None,
    ) -> SendResult:
        rcpts = _check_args(msg, sender, recipients)
        if self._state != _State.OPEN:
            raise RuntimeError(f"SMTP transport is {self._state}; use it inside 'async with'")
        async with self._lock:
            try:
                result = await self._send_locked(msg, sender, rcpts, ready)
            except asyncio.CancelledError:
                self._drop()  # mid-transaction: the connection state is unknown
                raise
            except _NotOurs as e:
                assert e.__cause__ is not None  # always raised from the caller's exception
                raise e.__cause__ from None
        mid = message_id_of(msg)
        if result.ok:
            self.sent += 1
            logger.debug(
                "smtp %s: sent %s (%s %s)", self.settings.name, mid, result.code, result.text
            )
        else:
            self.failed += 1
            logger.warning(
                "smtp %s: %s failure sending %s at %s: %s",
                self.settings.name,
                "permanent" if result.permanent else "transient",
                mid,
                result.stage,
                result.answer,
            )
        return result

    async def probe_recipient(self, *, sender: str, recipient: str) -> SendResult:
        """MAIL from ``sender``, RCPT to ``recipient``, then RSET: would the server take mail
        for ``recipient`` now? Nothing is handed over. The outbox asks this with an address
        the relay accepted before, to tell a relay that refuses everyone from recipients
        that refuse (triage.relay). ``ok`` means the RCPT was accepted."""
        rcpts = (recipient,)
        if any(c in a for a in (sender, recipient) for c in "\r\n\0"):
            raise ValueError("control character in envelope address")
        if self._state != _State.OPEN:
            raise RuntimeError(f"SMTP transport is {self._state}; use it inside 'async with'")
        async with self._lock:
            return await self._on_connection(
                lambda reused: self._probe(sender, rcpts, reused=reused))

    async def _probe(self, sender: str, rcpts: tuple[str, ...], *, reused: bool) -> SendResult:
        smtp = self._smtp
        utf8 = _needs_utf8(sender, rcpts)
        if utf8 and not smtp.supports_extension("smtputf8"):
            return _fail("mail", None, "non-ASCII address and no SMTPUTF8", permanent=False)
        encoding = "utf-8" if utf8 else "ascii"
        stage: Stage = "mail"
        try:
            await smtp.mail(sender, options=["SMTPUTF8"] if utf8 else [], encoding=encoding)
            stage = "rcpt"
            response = await smtp.rcpt(rcpts[0], encoding=encoding)
        except Exception as exc:
            if reused and stage == "mail" and (
                    isinstance(exc, ConnectionError)
                    or (isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code == 421)):
                raise _Stale(str(exc)) from exc
            result = _classify(exc, stage)
            if result is None:
                raise
            if smtp.is_connected:
                await self._rset()
            return result
        await self._rset()
        return SendResult(ok=True, permanent=False, code=response.code, text=response.message,
                          stage="rcpt")

    async def _send_locked(
        self, msg: Mail, sender: str, rcpts: tuple[str, ...], ready: Awaitable[object] | None
    ) -> SendResult:
        return await self._on_connection(
            lambda reused: self._transaction(msg, sender, rcpts, ready, reused=reused))

    async def _on_connection(
        self, exchange: Callable[[bool], Awaitable[SendResult]]
    ) -> SendResult:
        """``exchange(reused)`` on the open connection, or a new one. A reused connection the
        server has dropped since (it answers the first command with 421 or a reset) is
        replaced once; a fresh one never raises ``_Stale``."""
        for _ in range(2):
            reused = self._smtp.is_connected
            if not reused:
                failure = await self._connect()
                if failure is not None:
                    return failure
            try:
                return await exchange(reused)
            except _Stale as exc:
                logger.info(
                    "smtp %s: connection went stale (%s); reconnecting", self.settings.name, exc
                )
                self._drop()
        raise AssertionError("unreachable: a fresh connection never raises _Stale")

    async def _connect(self) -> SendResult | None:
        """Connect, STARTTLS, AUTH; None on success, else the failure as a result."""
        smtp = self._smtp
        stage: Stage = "connect"  # an implicit-TLS handshake failure is classified as "tls"
        try:
            await smtp.connect()
            self.connects += 1
            if self.settings.security == "starttls":
                stage = "tls"
                if smtp.is_ehlo_or_helo_needed:
                    await smtp.ehlo()
                if not smtp.supports_extension("starttls"):
                    self._drop()
                    return _fail("tls", None, "server does not offer STARTTLS: use smtps://, "
                                 "or smtp+plain:// on this machine (loopback only)",
                                 permanent=True)
                await smtp.starttls()
            if self.settings.auth == "xoauth2":
                stage = "auth"
                if smtp.is_ehlo_or_helo_needed:
                    await smtp.ehlo()
                refused = await self._auth_xoauth2()
                if refused is not None:
                    self._drop()
                    return refused
            elif self.settings.user is not None and self.settings.password is not None:
                stage = "auth"
                if smtp.is_ehlo_or_helo_needed:
                    await smtp.ehlo()
                await smtp.login(self.settings.user, self.settings.password)
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()
            logger.info("smtp %s: connected", self.settings.name)
            return None
        except Exception as exc:  # classified below; anything unknown is re-raised
            self._drop()
            result = _classify(exc, stage)
            if result is None:
                raise
            return result

    async def _auth_xoauth2(self) -> SendResult | None:
        """AUTH XOAUTH2 with the cached token; a refused token is dropped and a new one tried
        once (it may have expired or been revoked early). None when logged in."""
        from triage.oauth import TokenRejected, TokenUnavailable

        tokens, user = self.settings.tokens, self.settings.user
        if tokens is None or user is None:
            raise RuntimeError("SMTP xoauth2 without a token source")
        if "xoauth2" not in self._smtp.server_auth_methods:
            return _fail("auth", None, "server does not offer AUTH XOAUTH2", permanent=True)
        for attempt in (1, 2):
            try:
                token = await tokens.token()
            except TokenRejected as e:
                return _fail("auth", None, str(e), permanent=True)
            except TokenUnavailable as e:
                return _fail("auth", None, str(e), permanent=False)
            try:
                await self._smtp.auth_xoauth2(user, token)
                return None
            except aiosmtplib.SMTPAuthenticationError as exc:
                tokens.invalidate(token)
                if exc.code < 500:  # 454 and the like: the server cannot check it now
                    return _fail("auth", exc.code, f"token not checked: {exc.message}",
                                 permanent=False)
                if attempt == 1:
                    logger.info("smtp %s: XOAUTH2 token refused (%s); asking for a new one",
                                self.settings.name, exc.code)
                    continue
                return _fail("auth", exc.code, f"token rejected by the server: {exc.message}",
                             permanent=True)
        raise AssertionError("unreachable")

    async def _transaction(
        self, msg: Mail, sender: str, rcpts: tuple[str, ...], ready: Awaitable[object] | None,
        *, reused: bool
    ) -> SendResult:
        smtp = self._smtp
        utf8 = _needs_utf8(sender, rcpts)
        options: list[str] = []
        try:
            data = serialize(msg, utf8=utf8)
            if not data.isascii() and not smtp.supports_extension("8bitmime"):
                data = serialize(msg, utf8=utf8, cte_type="7bit")
        except _UNRENDERABLE as exc:  # this message only
            return _fail("message", None, f"cannot serialise message: {exc}", permanent=True)
        if utf8:
            if not smtp.supports_extension("smtputf8"):
                return _fail("mail", None, "non-ASCII address and no SMTPUTF8", permanent=True)
            options.append("SMTPUTF8")
        if not data.isascii():
            options.append("BODY=8BITMIME")
        if smtp.supports_extension("size"):
            options.insert(0, f"SIZE={len(data)}")
        encoding = "utf-8" if utf8 else "ascii"

        stage: Stage = "mail"
        try:
            await smtp.mail(sender, options=options, encoding=encoding)
            stage = "rcpt"
            refused: list[aiosmtplib.SMTPRecipientRefused] = []
            for rcpt in rcpts:
                try:
                    await smtp.rcpt(rcpt, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused.append(exc)
            if len(refused) == len(rcpts):
                await self._rset()
                first = refused[0]
                return SendResult(
                    ok=False,
                    permanent=all(r.code >= 500 for r in refused),
                    code=first.code,
                    text=first.message,
                    stage="rcpt",
                    refused=tuple(r.recipient for r in refused),
                )
            if ready is not None:
                try:
                    await ready
                except Exception as exc:
                    await self._rset()  # nothing handed over: the server drops the envelope
                    raise _NotOurs(exc) from exc
            stage = "data"
            response = await smtp.data(data)
        except _NotOurs:
            raise
        except Exception as exc:
            stale = (
                reused
                and stage == "mail"
                and (
                    isinstance(exc, ConnectionError)
                    or (isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code == 421)
                )
            )
            if stale:
                raise _Stale(str(exc)) from exc
            result = _classify(exc, stage)
            if result is None:
                raise
            if result.code is not None and smtp.is_connected:
                await self._rset()
            return result
        if refused:
            # Delivered to some: a retry would duplicate it for them, so stop here.
            return SendResult(
                ok=False,
                permanent=True,
                code=refused[0].code,
                text="partial delivery; refused: "
                + "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in refused),
                stage="rcpt",
                refused=tuple(r.recipient for r in refused),
            )
        return SendResult(ok=True, permanent=False, code=response.code, text=response.message)

    async def _rset(self) -> None:
        try:
            await self._smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self._drop()


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Close a socket now, without waiting for the peer. aiosmtplib types its transport as
    the base class, which has no ``abort()``; what it holds is the ``asyncio.Transport`` that
    the event loop's ``create_connection`` returned."""
    if transport is not None:
        cast(asyncio.Transport, transport).abort()


def _fail(stage: Stage, code: int | None, text: str, *, permanent: bool) -> SendResult:
    return SendResult(ok=False, permanent=permanent, code=code, text=text, stage=stage)


def _classify(exc: Exception, stage: Stage) -> SendResult | None:
    """Map an aiosmtplib/OS error to a result; None means a programming error (re-raise)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code == 530:  # "authentication required" (at MAIL): our settings, not the mail
            stage = "auth"
        return _fail(stage, exc.code, exc.message, permanent=exc.code >= 500)
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return _fail("tls", None, f"TLS failed: {exc}", permanent=True)
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError subclasses it
        return _fail(stage, None, f"timeout: {exc}", permanent=False)
    if isinstance(exc, OSError):  # refused, reset, SMTPServerDisconnected, SMTPConnectError
        return _fail(stage, None, f"connection failed: {exc}", permanent=False)
    if isinstance(exc, aiosmtplib.SMTPException):
        # No STARTTLS / no AUTH / no usable AUTH method / SMTPUTF8: a configuration matter.
        return _fail(stage, None, exc.message, permanent=True)
    return None


_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")


def eml_name(message_id: str) -> str:
    """A file name from a Message-ID: the same ID gives the same name (so a re-send
    overwrites instead of duplicating) and distinct IDs never collide."""
    core = message_id.strip().strip("<>")
    safe = _UNSAFE.sub("_", core).lstrip(".")[:120]
    if safe != core or not safe:
        safe = f"{safe}-{hashlib.sha256(message_id.encode()).hexdigest()[:12]}"
    return f"{safe}.eml"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class DirectoryTransport:
    """Writes each message to ``path/<Message-ID>.eml`` (``.tmp`` then rename, so a reader
    never sees half a file). For ``triage demo``: acknowledgments without an SMTP server."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._state = _State.UNOPENED
        self.sent = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"<DirectoryTransport {self.path} {self._state} sent={self.sent}>"

    async def __aenter__(self) -> DirectoryTransport:
        if self._state != _State.UNOPENED:
            raise RuntimeError(f"cannot open a directory transport that is {self._state}")
        await asyncio.to_thread(self.path.mkdir, parents=True, exist_ok=True)
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSED

    async def probe_recipient(self, *, sender: str, recipient: str) -> None:
        """A folder refuses no recipient: nothing to ask."""
        return None

    async def check(self) -> None:
        if not os.access(self.path, os.W_OK):
            raise PermissionError("outbox folder not writable")

    async def send(
        self, msg: Mail, *, sender: str, recipients: Sequence[str],
        ready: Awaitable[object] | None = None,
    ) -> SendResult:
        rcpts = _check_args(msg, sender, recipients)
        if self._state != _State.OPEN:
            raise RuntimeError(f"directory transport is {self._state}; use 'async with'")
        if ready is not None:
            await ready
        target = self.path / eml_name(message_id_of(msg))
        try:
            data = serialize(msg, utf8=_needs_utf8(sender, rcpts))
        except _UNRENDERABLE as exc:
            self.failed += 1
            return _fail("message", None, f"cannot serialise message: {exc}", permanent=True)
        try:
            await asyncio.to_thread(_write_atomic, target, data)
        except OSError as exc:
            self.failed += 1
            logger.warning("outbox folder %s: cannot write %s: %s", self.path, target.name, exc)
            return _fail("write", None, f"cannot write {target}: {exc}", permanent=False)
        self.sent += 1
        logger.debug("outbox folder %s: wrote %s", self.path, target.name)
        return SendResult(ok=True, permanent=False, code=None, text=str(target))


def transport_from_url(
    url: str,
    user: str | None = None,
    password: str | None = None,
    *,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    tokens: TokenSource | None = None,
) -> SmtpTransport | DirectoryTransport:
    """``dir://var/outbox`` (relative) or ``dir:///abs/path`` → folder; else SMTP (logging
    in with XOAUTH2 when ``tokens`` is given)."""
    if url.startswith("dir://"):
        return DirectoryTransport(url[len("dir://") :])
    return SmtpTransport(
        SmtpSettings.from_url(url, user, None if tokens else password, timeout=timeout,
                              ssl_context=ssl_context,
                              auth="xoauth2" if tokens else "password", tokens=tokens)
    )
