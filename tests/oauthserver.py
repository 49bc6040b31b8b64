"""A local OAuth2 token server over TLS, for tests; pytest plugin
(``pytest_plugins = ["tests.oauthserver"]``).

It does what the mail servers and the daemon need from an identity provider, and no more:

- ``POST /token``: the client-credentials grant (RFC 6749 4.4); answers like Entra ID, with
  ``error_description`` starting "AADSTS...", when the client or its secret is unknown;
- ``POST /introspect``: RFC 7662, as Dovecot's oauth2 passdb and the SMTP sink ask it
  (``{"active": false}`` for anything unknown, expired or revoked; 200 either way, since
  Dovecot reads any other status as "temporarily unavailable");
- ``POST /revoke``: RFC 7009, one token.

And what the ``microsoft`` and ``google`` providers' libraries ask:

- ``GET /TENANT/v2.0/.well-known/openid-configuration``: the OpenID discovery document msal
  reads for an authority ``https://127.0.0.1:PORT/TENANT``; its token endpoint
  ``/TENANT/oauth2/v2.0/token`` is the same grant handler as ``/token``;
- a client assertion (a JWT signed with the app's certificate key, RS256 or PS256) in place
  of a client secret, checked against the registered public key;
- the device-code flow (``/TENANT/oauth2/v2.0/devicecode``; ``approve_device``) and the
  refresh-token grant, rotating the refresh token on every use and refusing the old one at
  once (stricter than Entra ID, so that two processes racing a rotation fail visibly);
- Google's JWT-bearer grant (RFC 7523) from a service account, its signature checked with
  the account's public key, ``sub`` = the user it may act for (domain-wide delegation).

Tests pull its levers directly: ``lifetime`` for new tokens, ``revoke_client`` (the secret
stops working and the client's tokens go inactive), ``revoke_token``, ``expire_tokens``.
The certificate chain is a test CA made with ``cryptography``: clients trust it through
``ca_file`` (TRIAGE_OAUTH_CA_FILE, Dovecot's ``tls_ca_cert_file``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
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
from typing import Any

import jwt
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
    secret: str | None  # None: a public client (device code) or a certificate-only app
    username: str  # what introspection reports: the mailbox the app may open
    revoked: bool = False
    public_key: Any = None  # a certificate's key: client assertions are checked with it
    users: tuple[str, ...] = ()  # a service account: whom it may act for


@dataclass
class _Device:
    client_id: str
    user_code: str
    expires: float
    username: str | None = None  # set by approve_device


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
    refresh_tokens: dict[str, _Token] = field(default_factory=dict)  # the live ones only
    devices: dict[str, _Device] = field(default_factory=dict)  # by device_code
    # Google's installed-app consent: who "signs in" at /authorize, and the codes it gave.
    consenting_user: str | None = None
    codes: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
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

    def add_cert_client(self, username: str, public_key: Any) -> str:
        """An app that proves itself with a certificate's private key: its client_id."""
        client_id = f"app-{secrets.token_hex(4)}"
        with self.lock:
            self.clients[client_id] = _Client(None, username, public_key=public_key)
        return client_id

    def add_public_client(self) -> str:
        """A public client (no secret) for delegated logins: its client_id."""
        client_id = f"pub-{secrets.token_hex(4)}"
        with self.lock:
            self.clients[client_id] = _Client(None, "")
        return client_id

    def add_service_account(self, email: str, public_key: Any, users: tuple[str, ...]) -> None:
        """A Google service account allowed (domain-wide delegation) to act for ``users``."""
        with self.lock:
            self.clients[email] = _Client(None, "", public_key=public_key, users=users)

    def approve_device(self, user_code: str, username: str) -> None:
        """The user signs in at the verification page and enters ``user_code``."""
        with self.lock:
            for d in self.devices.values():
                if d.username is None and d.user_code == user_code:
                    d.username = username
                    return
        raise KeyError(user_code)

    def revoke_refresh_tokens(self, client_id: str) -> None:
        """The user's grant is withdrawn (a password reset, an admin's revocation)."""
        with self.lock:
            for rt in [k for k, t in self.refresh_tokens.items() if t.client_id == client_id]:
                del self.refresh_tokens[rt]

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

            def do_GET(self) -> None:
                if self.path.startswith("/authorize?"):
                    status, location = owner._authorize(self.path)
                    self.send_response(status)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._reply(*owner._get(self.path))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                self._reply(*owner._answer(self.path, form))

            def _reply(self, status: int, answer: dict[str, object]) -> None:
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

    def _get(self, path: str) -> tuple[int, dict[str, object]]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            tenant = parts[0]
            if tenant == "no-such-tenant":
                return 400, {"error": "invalid_tenant", "error_description":
                             f"AADSTS90002: Tenant '{tenant}' not found."}
            with self.lock:
                self.requests.append("discovery")
            base = f"{self.url}/{tenant}"
            return 200, {"issuer": f"{base}/v2.0",
                         "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "token_endpoint": f"{base}/oauth2/v2.0/token",
                         "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode"}
        return 404, {"error": "not_found"}

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        with self.lock:
            if path == "/token" or path.endswith("/oauth2/v2.0/token"):
                return self._grant(form, f"{self.url}{path}")
            if path.endswith("/oauth2/v2.0/devicecode"):
                return self._device(form)
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

    def _grant(self, form: dict[str, str], url: str) -> tuple[int, dict[str, object]]:
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt_bearer(form, url)
        if grant not in ("client_credentials", "refresh_token", "authorization_code",
                         "urn:ietf:params:oauth:grant-type:device_code"):
            self.requests.append("token unsupported")
            return 400, {"error": "unsupported_grant_type",
                         "error_description": "AADSTS70003: grant type not supported."}
        client_id = form.get("client_id", "")
        client = self.clients.get(client_id)
        if client is None:
            self.requests.append("token unknown client")
            return 400, {"error": "unauthorized_client", "error_description": UNKNOWN_CLIENT}
        refusal = self._authenticate(client, client_id, form, url)
        if refusal is not None:
            return refusal
        if grant == "client_credentials":
            self.requests.append("token ok")
            return 200, self._issue(client_id, client.username)
        if grant == "refresh_token":
            old = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if old is None or old.client_id != client_id:
                self.requests.append("refresh refused")
                return 400, {"error": "invalid_grant", "error_description":
                             "AADSTS700082: The refresh token has expired or was revoked."}
            self.requests.append("refresh ok")
            return 200, self._issue(client_id, old.username, refresh=True)
        if grant == "authorization_code":
            bound = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "").encode()
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()) \
                .rstrip(b"=").decode()
            if bound is None or bound[0] != client_id or bound[2] != challenge or \
                    bound[3] != form.get("redirect_uri"):
                self.requests.append("code refused")
                return 400, {"error": "invalid_grant", "error_description": "Bad Request"}
            self.requests.append("code ok")
            return 200, self._issue(client_id, bound[1], refresh=True)
        device = self.devices.get(form.get("device_code", ""))
        if device is None or device.expires <= time.time():
            return 400, {"error": "expired_token", "error_description": "AADSTS70019: expired"}
        if device.username is None:
            return 400, {"error": "authorization_pending",
                         "error_description": "AADSTS70016: pending"}
        del self.devices[form["device_code"]]
        self.requests.append("device ok")
        return 200, self._issue(client_id, device.username, refresh=True)

    def _authenticate(self, client: _Client, client_id: str, form: dict[str, str],
                      url: str) -> tuple[int, dict[str, object]] | None:
        """A client secret, a client assertion, or nothing (a public client)."""
        if client.revoked:
            self.requests.append("token bad secret")
            return 401, {"error": "invalid_client", "error_description": BAD_SECRET}
        if client.public_key is not None:
            assertion = form.get("client_assertion", "")
            try:
                claims = jwt.decode(assertion, client.public_key, algorithms=["RS256", "PS256"],
                                    audience=url, issuer=client_id)
                ok = claims.get("sub") == client_id
            except jwt.PyJWTError:
                ok = False
            if not ok or form.get("client_assertion_type") != \
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                self.requests.append("token bad assertion")
                return 401, {"error": "invalid_client", "error_description":
                             "AADSTS700027: Client assertion contains an invalid signature."}
            return None
        if client.secret is None:
            return None
        if not secrets.compare_digest(client.secret, form.get("client_secret", "")):
            self.requests.append("token bad secret")
            return 401, {"error": "invalid_client", "error_description": BAD_SECRET}
        return None

    def _jwt_bearer(self, form: dict[str, str], url: str) -> tuple[int, dict[str, object]]:
        """Google's service-account grant: the assertion's signature, audience and subject."""
        assertion = form.get("assertion", "")
        try:
            issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss", "")
            account = self.clients.get(issuer)
            if account is None or account.public_key is None or account.revoked:
                raise jwt.InvalidIssuerError(issuer)
            # google-auth always names Google's token endpoint as the audience, whatever
            # token_uri says (Google takes that, or its own URL).
            claims = jwt.decode(assertion, account.public_key, algorithms=["RS256"],
                                audience=[url, "https://oauth2.googleapis.com/token"],
                                issuer=issuer)
        except jwt.PyJWTError:
            self.requests.append("jwt bad")
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        user = str(claims.get("sub") or "")
        if user not in account.users or claims.get("scope") != "https://mail.google.com/":
            self.requests.append("jwt unauthorized")
            return 401, {"error": "unauthorized_client", "error_description": "Client is "
                         "unauthorized to retrieve access tokens using this method, or client "
                         "not authorized for any of the scopes requested."}
        self.requests.append("jwt ok")
        return 200, self._issue(issuer, user)

    def _authorize(self, path: str) -> tuple[int, str]:
        """The consent page, as if ``consenting_user`` signed in and allowed access: back to
        the redirect URI (a loopback one only) with a code bound to the PKCE challenge."""
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
        redirect = q.get("redirect_uri", "")
        if not redirect.startswith("http://127.0.0.1:") or q.get("client_id") not in \
                self.clients or q.get("code_challenge_method") != "S256":
            return 400, "about:blank"
        with self.lock:
            user = self.consenting_user
            if user is None:
                return 302, f"{redirect}?error=access_denied&state={q.get('state', '')}"
            code = secrets.token_urlsafe(16)
            self.codes[code] = (q["client_id"], user, q.get("code_challenge", ""), redirect)
        return 302, redirect + "?" + urllib.parse.urlencode(
            {"code": code, "state": q.get("state", ""), "scope": q.get("scope", "")})

    def _device(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        if form.get("client_id") not in self.clients:
            return 400, {"error": "unauthorized_client", "error_description": UNKNOWN_CLIENT}
        code, user_code = secrets.token_urlsafe(24), secrets.token_hex(4).upper()
        self.devices[code] = _Device(form["client_id"], user_code, time.time() + 900)
        verify = f"{self.url}/devicelogin"
        return 200, {"device_code": code, "user_code": user_code, "verification_uri": verify,
                     "expires_in": 900, "interval": 1,
                     "message": f"To sign in, use a web browser to open the page {verify} "
                                f"and enter the code {user_code} to authenticate."}

    def _issue(self, client_id: str, username: str, *, refresh: bool = False,
               ) -> dict[str, object]:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = _Token(client_id, username, time.time() + self.lifetime)
        self.issued.append(token)
        answer: dict[str, object] = {"access_token": token, "token_type": "Bearer",
                                     "expires_in": self.lifetime,
                                     "ext_expires_in": self.lifetime}
        if refresh:
            rt = f"RT.{secrets.token_urlsafe(32)}"
            self.refresh_tokens[rt] = _Token(client_id, username, time.time() + 90 * 86400)
            answer["refresh_token"] = rt
            answer["scope"] = "https://outlook.office.com/IMAP.AccessAsUser.All"
        return answer


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
