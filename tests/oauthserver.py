"""A local OAuth2 token server over TLS, for tests; pytest plugin
(``pytest_plugins = ["tests.oauthserver"]``).

It does what the mail servers and the daemon need from an identity provider, and no more:

- ``POST /token``: the client-credentials grant (RFC 6749 4.4); answers like Entra ID, with
  ``error_description`` starting "AADSTS...", when the client or its secret is unknown;
- ``POST /introspect``: RFC 7662, as Dovecot's oauth2 passdb and the SMTP sink ask it
  (``{"active": false}`` for anything unknown, expired or revoked; 200 either way, since
  Dovecot reads any other status as "temporarily unavailable");
- ``POST /revoke``: RFC 7009, one token.

Tests pull its levers directly: ``lifetime`` for new tokens, ``revoke_client`` (the secret
stops working and the client's tokens go inactive), ``revoke_token``, ``expire_tokens``.
The certificate chain is a test CA made with ``cryptography``: clients trust it through
``ca_file`` (TRIAGE_OAUTH_CA_FILE, Dovecot's ``tls_ca_cert_file``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BAD_SECRET = ("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in "
              "the request is the client secret value, not the client secret ID.")
UNKNOWN_CLIENT = "AADSTS700016: Application with identifier was not found in the directory."


@dataclass(frozen=True)
class OAuthCA:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's chain (leaf + CA)
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def make_test_ca(folder: Path) -> OAuthCA:
    """A CA and a server certificate it signs, for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "triage test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = OAuthCA(folder / "oauth-ca.pem", folder / "oauth-server.pem",
                   folder / "oauth-server-key.pem")
    paths.ca.write_bytes(ca_cert.public_bytes(pem))
    paths.cert.write_bytes(leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
    paths.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    for p in (paths.ca, paths.cert, paths.key):
        p.chmod(0o644)  # Dovecot's auth process reads the CA as another user
    return paths


@dataclass
class _Client:
    secret: str
    username: str  # what introspection reports: the mailbox the app may open
    revoked: bool = False


@dataclass
class _Token:
    client_id: str
    username: str
    expires: float
    revoked: bool = False


@dataclass
class TokenServer:
    """The IdP; every attribute is read and written under ``lock``."""

    ca: OAuthCA
    lifetime: float = 3600.0
    host: str = "127.0.0.1"
    port: int = 0
    clients: dict[str, _Client] = field(default_factory=dict)
    tokens: dict[str, _Token] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every token handed out, in order
    requests: list[str] = field(default_factory=list)  # "token ok", "introspect inactive" ...
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    # ---- levers -----------------------------------------------------------------------
    def add_client(self, username: str) -> tuple[str, str]:
        """A new app allowed to open ``username``'s mailbox: (client_id, secret)."""
        client_id = f"app-{secrets.token_hex(4)}"
        secret = f"Sec~{secrets.token_urlsafe(18)}"  # distinctive, so a leak is easy to spot
        with self.lock:
            self.clients[client_id] = _Client(secret, username)
        return client_id, secret

    def revoke_client(self, client_id: str) -> None:
        """The secret stops working and every token issued to it goes inactive."""
        with self.lock:
            self.clients[client_id].revoked = True
            for t in self.tokens.values():
                if t.client_id == client_id:
                    t.revoked = True

    def revoke_token(self, token: str) -> None:
        with self.lock:
            self.tokens[token].revoked = True

    def expire_tokens(self, client_id: str) -> None:
        """Every token of the client is past its expiry now (the client does not know)."""
        with self.lock:
            for t in self.tokens.values():
                if t.client_id == client_id:
                    t.expires = 0.0

    def issued_to(self, client_id: str) -> list[str]:
        with self.lock:
            return [t for t in self.issued if self.tokens[t].client_id == client_id]

    def active(self, token: str) -> str | None:
        """The username ``token`` is good for now, or None."""
        with self.lock:
            t = self.tokens.get(token)
            if t is None or t.revoked or t.expires <= time.time():
                return None
            return t.username

    def introspect(self, token: str) -> str | None:
        """As a mail server asks: over HTTPS, trusting the test CA (the SMTP sink's way)."""
        body = urllib.parse.urlencode({"token": token}).encode()
        ctx = ssl.create_default_context(cafile=str(self.ca.ca))
        with urllib.request.urlopen(self.introspection_url, body, timeout=10,
                                    context=ctx) as r:
            answer = json.loads(r.read())
        return answer.get("username") if answer.get("active") is True else None

    # ---- the server -------------------------------------------------------------------
    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None  # quiet: tokens travel in bodies, never in request lines

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                status, answer = owner._answer(self.path, form)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        server.socket = self.ca.server_context().wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={
            "poll_interval": 0.05}, daemon=True, name="oauth-server")
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        with self.lock:
            if path == "/token":
                return self._grant(form)
            if path == "/introspect":
                t = self.tokens.get(form.get("token", ""))
                if t is None or t.revoked or t.expires <= time.time():
                    self.requests.append("introspect inactive")
                    return 200, {"active": False}
                self.requests.append("introspect active")
                return 200, {"active": True, "username": t.username, "client_id": t.client_id,
                             "exp": int(t.expires), "token_type": "Bearer"}
            if path == "/revoke":
                t = self.tokens.get(form.get("token", ""))
                if t is not None:
                    t.revoked = True
                return 200, {}
        return 404, {"error": "not_found"}

    def _grant(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        if form.get("grant_type") != "client_credentials":
            self.requests.append("token unsupported")
            return 400, {"error": "unsupported_grant_type",
                         "error_description": "AADSTS70003: grant type not supported."}
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            self.requests.append("token unknown client")
            return 400, {"error": "unauthorized_client", "error_description": UNKNOWN_CLIENT}
        if client.revoked or not secrets.compare_digest(client.secret,
                                                        form.get("client_secret", "")):
            self.requests.append("token bad secret")
            return 401, {"error": "invalid_client", "error_description": BAD_SECRET}
        token = secrets.token_urlsafe(32)
        self.tokens[token] = _Token(form["client_id"], client.username,
                                    time.time() + self.lifetime)
        self.issued.append(token)
        self.requests.append("token ok")
        return 200, {"access_token": token, "token_type": "Bearer",
                     "expires_in": self.lifetime, "ext_expires_in": self.lifetime}


@pytest.fixture(scope="session")
def oauth_ca(tmp_path_factory: pytest.TempPathFactory) -> OAuthCA:
    folder = tmp_path_factory.mktemp("oauth-ca")
    folder.chmod(0o755)
    return make_test_ca(folder)


@pytest.fixture(scope="session")
def token_server(oauth_ca: OAuthCA) -> Iterator[TokenServer]:
    """One token server per session; each test adds its own clients (and may set
    ``lifetime``, which the ``token_lifetime`` fixture puts back)."""
    server = TokenServer(oauth_ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tokens(token_server: TokenServer) -> Iterator[TokenServer]:
    """The session's token server, its ``lifetime`` restored after the test."""
    lifetime = token_server.lifetime
    yield token_server
    token_server.lifetime = lifetime
