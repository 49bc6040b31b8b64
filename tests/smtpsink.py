"""A real SMTP server for tests (aiosmtpd); pytest plugin: ``pytest_plugins = ["tests.smtpsink"]``.

Fixtures:
- ``smtp_sink``: plain SMTP on 127.0.0.1, no AUTH.
- ``smtp_sink_starttls``: STARTTLS required, AUTH required (only after TLS).
- ``smtp_sink_tls``: implicit TLS (SMTPS), AUTH required.
- ``make_smtp_sink``: factory for other combinations; every sink is stopped at teardown.

Each sink binds 127.0.0.1 on a free port, records what it accepts in ``sink.received``,
and can be told to misbehave (``sink.behave(...)``) or be stopped and restarted on the same
port to simulate an SMTP outage. The certificate is self-signed, made for the test session,
for ``localhost`` and ``127.0.0.1``; ``sink.client_context`` trusts only it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import json
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

SINK_USER = "triage"
SINK_PASSWORD = "Sink-Pass-7f3a9c"  # distinctive, so a leak into logs is easy to spot

Behaviour = Literal["accept", "tempfail", "reject"]
Security = Literal["plain", "starttls", "tls"]

# Replies as named constants (what the tests expect back).
TEMPFAIL = "451 4.3.0 Try again later (test sink)"
REJECT = "550 5.1.1 Mailbox unavailable (test sink)"
CLOSING = "421 4.4.2 Closing idle connection (test sink)"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # as received, CRLF line ends, dot-unstuffed
    mail_options: tuple[str, ...]


@dataclass
class SinkHandler:
    """aiosmtpd handler: only the hooks it needs. Attributes are read on the server thread
    and set from the test; each is a single reference swap, so no lock is needed for them."""

    behaviour: Behaviour = "accept"
    at: Literal["rcpt", "data"] = "rcpt"
    refuse: frozenset[str] = frozenset()  # these recipients always get REJECT
    drop_next_mail: bool = False  # answer the next MAIL with 421 (server closing), once
    data_delay: float = 0.0  # seconds before answering each DATA: a slow server
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _failure(self, stage: str) -> str | None:
        if self.at != stage:
            return None
        return {"accept": None, "tempfail": TEMPFAIL, "reject": REJECT}[self.behaviour]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.drop_next_mail:
            self.drop_next_mail = False
            return CLOSING
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return REJECT
        failure = self._failure("rcpt")
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        failure = self._failure("data")
        if failure:
            return failure
        assert isinstance(envelope.original_content, bytes)
        with self._lock:
            self.received.append(
                Received(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=envelope.original_content,
                    mail_options=tuple(envelope.mail_options),
                )
            )
        return "250 2.0.0 Accepted (test sink)"


Introspect = Callable[[str], "str | None"]  # token -> the user it is good for, or None


@dataclass
class XOAuth2SinkHandler(SinkHandler):
    """The sink with ``AUTH XOAUTH2``: each token is checked by ``introspect`` (the token
    server's RFC 7662 endpoint), as Dovecot's oauth2 passdb does. A refused token gets the
    error challenge real servers send (``334 <base64 JSON>``), then 535 once answered.

    ``enforce_expiry``: MAIL is answered 421 (and the session closed) once the session's
    token is no longer active, as servers that end sessions at token expiry do."""

    introspect: Introspect | None = None
    enforce_expiry: bool = False
    logins: list[str] = field(default_factory=list)  # "ok USER" / "refused USER", in order

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) > 1:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                return AuthResult(success=False, handled=False)
        else:
            answer = await server.challenge_auth("")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            blob = answer
        fields = dict(part.split("=", 1) for part in blob.decode().split("\x01") if "=" in part)
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        assert self.introspect is not None
        owner = await asyncio.to_thread(self.introspect, token)
        if owner is None or owner.lower() != user.lower():
            self.logins.append(f"refused {user}")
            await server.challenge_auth(
                json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail"}))
            return AuthResult(success=False, handled=False)
        self.logins.append(f"ok {user}")
        assert server.session is not None
        server.session.auth_data = token
        return AuthResult(success=True, auth_data=token)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.enforce_expiry and isinstance(session.auth_data, str):
            assert self.introspect is not None
            if await asyncio.to_thread(self.introspect, session.auth_data) is None:
                self.logins.append("expired")
                return CLOSING
        return await super().handle_MAIL(server, session, envelope, address, mail_options)


def _authenticator(user: str, password: str) -> Callable[..., AuthResult]:
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return authenticate


class _SinkController(Controller):
    """aiosmtpd's Controller, adjusted for tests:

    - it cannot bind port 0 (its start-up probe connects to ``port``): read the port the OS
      picked before the probe;
    - ``stop()`` stops the loop without closing open sessions, which leaks their sockets
      (ResourceWarning, an error here): abort them on the server loop first;
    - on an implicit-TLS socket every session is TLS, but aiosmtpd counts only STARTTLS
      as TLS and would hide AUTH.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions: list[SMTP] = []

    def factory(self) -> SMTP:
        smtpd = super().factory()
        if self.ssl_context is not None:
            smtpd._auth_require_tls = False  # see the class docstring
        self._sessions.append(smtpd)
        return smtpd

    def _trigger_server(self) -> None:
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

    async def _abort_sessions(self) -> None:
        if self.server is not None:
            self.server.close()
        for smtpd in self._sessions:
            for transport in (smtpd.transport, getattr(smtpd, "_original_transport", None)):
                if transport is not None:
                    transport.abort()
        for _ in range(5):  # let the scheduled connection_lost callbacks close the sockets
            await asyncio.sleep(0)

    def stop(self, no_assert: bool = False) -> None:
        if self._thread is not None and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._abort_sessions(), self.loop).result(10)
        super().stop(no_assert)


@dataclass(frozen=True)
class SinkCert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """Verifies hostname and chain, trusting only this certificate."""
        return ssl.create_default_context(cafile=str(self.cert))


def make_cert(folder: Path) -> SinkCert:
    """Self-signed certificate for localhost/127.0.0.1 (cryptography; openssl as fallback)."""
    cert, key = folder / "sink-cert.pem", folder / "sink-key.pem"
    try:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:  # pragma: no cover - cryptography is installed here
        import subprocess

        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key),
             "-out", str(cert), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        return SinkCert(cert, key)
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pkey, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return SinkCert(cert, key)


class SmtpSink:
    """One aiosmtpd server in a thread; ``stop()``/``start()`` keep the port and the record."""

    host = "127.0.0.1"

    def __init__(
        self,
        security: Security = "plain",
        *,
        cert: SinkCert | None = None,
        auth: tuple[str, str] | None = None,
        xoauth2: Introspect | None = None,
    ) -> None:
        """``xoauth2``: AUTH XOAUTH2 required, tokens checked by it (``XOAuth2SinkHandler``);
        passwords are refused then."""
        if security != "plain" and cert is None:
            raise ValueError("a TLS sink needs a certificate")
        self.security = security
        self.cert = cert
        self.auth = auth
        self.handler: SinkHandler = (XOAuth2SinkHandler(introspect=xoauth2) if xoauth2
                                     else SinkHandler())
        self.port = 0
        self._controller: _SinkController | None = None

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    @property
    def running(self) -> bool:
        return self._controller is not None

    @property
    def client_context(self) -> ssl.SSLContext | None:
        return self.cert.client_context() if self.cert else None

    @property
    def url(self) -> str:
        scheme = {"plain": "smtp+plain", "starttls": "smtp", "tls": "smtps"}[self.security]
        return f"{scheme}://{self.host}:{self.port}"

    def behave(
        self,
        behaviour: Behaviour = "accept",
        *,
        at: Literal["rcpt", "data"] = "rcpt",
        refuse: frozenset[str] = frozenset(),
    ) -> None:
        self.handler.behaviour = behaviour
        self.handler.at = at
        self.handler.refuse = refuse

    def drop_next_mail(self) -> None:
        """Answer the next MAIL with 421, as a server does to a connection it timed out."""
        self.handler.drop_next_mail = True

    def start(self) -> None:
        if self._controller is not None:
            raise RuntimeError("sink already running")
        kwargs: dict[str, Any] = {}
        if self.auth:
            kwargs.update(authenticator=_authenticator(*self.auth), auth_required=True)
        elif isinstance(self.handler, XOAuth2SinkHandler):
            kwargs.update(authenticator=_authenticator("", secrets.token_hex(16)),
                          auth_required=True)
        if self.security == "starttls":
            assert self.cert is not None
            kwargs.update(tls_context=self.cert.server_context(), require_starttls=True)
        elif self.security == "tls":
            assert self.cert is not None
            kwargs.update(ssl_context=self.cert.server_context())
        controller = _SinkController(
            self.handler, hostname=self.host, port=self.port, ready_timeout=10, **kwargs
        )
        controller.start()
        self.port = controller.port
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and drop every open session (the clients see the connection close)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def sink_cert(tmp_path_factory: pytest.TempPathFactory) -> SinkCert:
    return make_cert(tmp_path_factory.mktemp("smtpsink"))


@pytest.fixture
def make_smtp_sink(sink_cert: SinkCert) -> Iterator[Callable[..., SmtpSink]]:
    sinks: list[SmtpSink] = []

    def make(security: Security = "plain", *, auth: bool = False,
             xoauth2: Introspect | None = None) -> SmtpSink:
        sink = SmtpSink(
            security,
            cert=sink_cert if security != "plain" else None,
            auth=(SINK_USER, SINK_PASSWORD) if auth else None,
            xoauth2=xoauth2,
        )
        sinks.append(sink)
        sink.start()
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
def smtp_sink(make_smtp_sink: Callable[..., SmtpSink]) -> SmtpSink:
    return make_smtp_sink("plain")


@pytest.fixture
def smtp_sink_starttls(make_smtp_sink: Callable[..., SmtpSink]) -> SmtpSink:
    return make_smtp_sink("starttls", auth=True)


@pytest.fixture
def smtp_sink_tls(make_smtp_sink: Callable[..., SmtpSink]) -> SmtpSink:
    return make_smtp_sink("tls", auth=True)


# ---- a sink that knows whether a client is inside an SMTP transaction ------------------------
@dataclass
class TrackingHandler(SinkHandler):
    """The test sink's handler, plus: per open session, where its transaction stands.

    ``mail`` = MAIL seen, DATA not yet answered; ``data`` = DATA answered 250 and the client
    has not moved on (no MAIL/RSET/NOOP/QUIT yet): it may not have recorded the send yet.
    """

    sessions: dict[int, tuple[SMTP, str]] = field(default_factory=dict)
    tempfails: int = 0

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.sessions[id(server)] = (server, "mail")
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        answer = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        if answer == TEMPFAIL:
            self.tempfails += 1
        return answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        if answer.startswith("250"):
            self.sessions[id(server)] = (server, "data")
        return answer

    async def _idle(self, server: SMTP) -> str:
        self.sessions.pop(id(server), None)
        return "250 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self._idle(server)

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope,
                          arg: str) -> str:
        return await self._idle(server)

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.sessions.pop(id(server), None)
        return "221 Bye"

    def open_transactions(self) -> list[str]:
        """States of the transactions on connections still open (dead sessions dropped)."""
        return [state for server, state in list(self.sessions.values())
                if server.transport is not None and not server.transport.is_closing()]


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """A sink whose handler tracks where each open session's transaction stands."""
    s = SmtpSink("plain")
    s.handler = TrackingHandler()
    s.start()
    try:
        yield s
    finally:
        s.stop()


def handler(sink: SmtpSink) -> TrackingHandler:
    """The tracking handler of the ``sink`` fixture."""
    assert isinstance(sink.handler, TrackingHandler)
    return sink.handler
