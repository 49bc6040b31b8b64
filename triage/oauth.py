"""OAuth2 access tokens for XOAUTH2 logins (IMAP ``AUTHENTICATE``, SMTP ``AUTH``).

A ``TokenSource`` hands out an access token for one credential, fetched from the identity
provider (IdP) when there is none, when the cached one is close to its expiry, and after a
mail server refused it (``invalidate``). App-only credentials (the generic client-credentials
grant here; Microsoft's client secret or certificate and Google's service account in
``triage.oauth_providers``) keep their tokens in memory only: a new one is had for the
asking. Delegated logins (a user's refresh token) keep theirs in the database, encrypted
(``triage.oauth_store``).

Failures, as the callers need to tell them apart::

    TokenError
     +-- TokenRejected     the IdP refuses the credential (a wrong or expired client secret,
     |                     an app without consent): a setting must change; str() starts with
     |                     "token rejected:" and carries the IdP's own words (AADSTS...)
     +-- TokenUnavailable  the IdP is unreachable, slow or answered 5xx: try again later

Neither a token nor a secret is ever part of an exception, a log line or a ``repr``: the
IdP's error text is quoted, but any echo of the client secret in it is masked.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx

from triage.netutil import is_loopback

log = logging.getLogger(__name__)

Provider = Literal["generic", "microsoft", "google"]
# app: the app logs in as itself (client credentials, a certificate, a service account);
# delegated: as a user who authorised it once (``triage oauth login``), by refresh token.
Flow = Literal["app", "delegated"]
Outcome = Literal["ok", "rejected", "unavailable"]
# Refresh when less than this is left (or a quarter of the token's lifetime, if shorter):
# a login started with the token must finish before it expires.
REFRESH_MARGIN = 300.0
DEFAULT_LIFETIME = 3600.0  # when the IdP does not say (expires_in is RECOMMENDED, not required)
HTTP_TIMEOUT = 15.0
MESSAGE_LIMIT = 300
# IdP answers that mean "this credential will not work until someone changes it"
# (RFC 6749 5.2); anything else from a 4xx is read the same way, 5xx as temporary.
_REJECTIONS = ("invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope",
               "access_denied", "invalid_request", "unsupported_grant_type")


class TokenError(Exception):
    """No access token could be had; see the module docstring for the two kinds."""


class TokenRejected(TokenError):
    """The IdP refused the credential: retrying will not help until a setting changes."""


class TokenUnavailable(TokenError):
    """The IdP could not be asked now (network, timeout, 5xx): try again later."""


@dataclass(frozen=True)
class Credential:
    """What to ask the IdP with; ``name`` is the metrics label (a configured token).

    ``secret_expires`` is the client secret's end date as the IdP shows it (Entra ID lists
    it beside the secret): only watched (metric and alert), never enforced here.
    ``token_url`` is where tokens come from (for ``microsoft``, the authority's token
    endpoint, which msal finds by discovery; it only names the IdP in messages).
    ``user`` is the mailbox the token is for: a Google service account's ``subject``, and
    whose refresh token a delegated login keeps."""

    name: str
    token_url: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    scope: str = ""
    provider: Provider = "generic"
    ca_file: Path | None = None
    secret_expires: datetime | None = None
    flow: Flow = "app"
    authority: str = ""  # microsoft: https://login.microsoftonline.com/TENANT
    certificate: Path | None = None  # microsoft app-only: PEM private key (and certificate)
    certificate_thumbprint: str = ""  # its SHA-1 thumbprint, as Entra ID shows it
    service_account: Path | None = None  # google app: the service account's JSON key file
    user: str = ""
    auth_url: str = ""  # google delegated: the authorisation endpoint (triage oauth login)
    refresh_token_days: float = 90.0  # delegated: how long an unused refresh token lives

    def __post_init__(self) -> None:
        check_endpoint(self.token_url, "token URL")
        if self.authority:
            check_endpoint(self.authority, "authority")
        if not self.client_id and not (self.provider == "google" and self.flow == "app"):
            raise ValueError("an OAuth client id is needed")
        if self.flow == "app":
            if self.provider == "generic" and not self.client_secret:
                raise ValueError("an OAuth client secret is needed")
            if self.provider == "microsoft" and not (self.client_secret or self.certificate):
                raise ValueError("a client secret or a certificate is needed")
            if self.provider == "google" and self.service_account is None:
                raise ValueError("a service account key file is needed")
        elif self.provider == "generic":
            raise ValueError("the generic provider logs in as the app only: flow = app")
        if self.provider == "google" and not self.user:
            raise ValueError("the mailbox user is needed (the service account's subject)")
        if self.flow == "delegated" and not self.user:
            raise ValueError("the mailbox user is needed for a delegated login")

    @property
    def key(self) -> tuple[str, ...]:
        """Two settings naming the same app, scope and user share one cached token."""
        user = self.user if self.provider == "google" or self.flow == "delegated" else ""
        return (self.provider, self.flow, self.token_url, self.client_id, self.scope,
                str(self.service_account or ""), user.lower())

    @property
    def store_key(self) -> str:
        """The delegated refresh token's row: the same app, IdP and user in any process."""
        return "|".join((self.provider, self.authority or self.token_url, self.client_id,
                         self.user.lower()))

    def describe(self) -> str:
        """For logs and ``triage check``: who asks whom, without the secret."""
        who = self.client_id or "service account"
        if self.provider == "google" and self.flow == "app":
            who = f"service account {self.service_account} for {self.user}"
        elif self.flow == "delegated":
            who = f"client {self.client_id} for {self.user}"
        else:
            who = f"client {who}"
        return f"{who} at {urlsplit(self.authority or self.token_url).netloc}"


def check_endpoint(url: str, what: str) -> None:
    """An IdP URL: https://, or http:// on loopback only (secrets travel in the body)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be https://HOST/PATH, not {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"refusing a clear-text token endpoint on {parts.hostname!r}: "
                         "use https://")


def secret_end(value: date | datetime | None) -> datetime | None:
    """A settings date (``2027-03-31``) or datetime as an aware UTC datetime."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # time.time() seconds
    lifetime: float


def xoauth2_string(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial response, before base64 (Google's and Microsoft's spec)."""
    if any(c in user for c in "\x01\r\n"):
        raise ValueError("control character in the XOAUTH2 user name")
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


class TokenSource:
    """One credential's access token, cached in memory and refreshed before it expires.

    ``token()`` is safe to call from several tasks at once: one request goes to the IdP and
    the others wait for it. ``observe`` is called with each request's outcome (metrics).
    """

    def __init__(
        self,
        credential: Credential,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = HTTP_TIMEOUT,
        observe: Callable[[Outcome], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.credential = credential
        self._clock = clock
        self._timeout = timeout
        self._observe = observe
        self._transport = transport
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self.fetched = 0  # tokens the IdP issued to this process
        self.last_error: str | None = None  # the last failure, None after a success

    def __repr__(self) -> str:
        state = "no token" if self._token is None else f"token until {self._token.expires_at:.0f}"
        return f"<TokenSource {self.credential.name} {self.credential.describe()} {state}>"

    @property
    def expires_at(self) -> float | None:
        return self._token.expires_at if self._token is not None else None

    def _fresh(self, token: AccessToken | None) -> bool:
        if token is None:
            return False
        return token.expires_at - self._clock() > self._margin(token)

    def _margin(self, token: AccessToken) -> float:
        return min(REFRESH_MARGIN, token.lifetime / 4)

    async def token(self) -> str:
        """A token with time left; fetched from the IdP when the cached one is not."""
        if self._fresh(self._token):
            assert self._token is not None
            return self._token.value
        async with self._lock:
            if not self._fresh(self._token):  # another task may have fetched it meanwhile
                self._token = await self._fetch()
            assert self._token is not None
            return self._token.value

    def invalidate(self, token: str) -> None:
        """A mail server refused ``token``: the next ``token()`` asks the IdP again (unless
        another task already replaced it)."""
        if self._token is not None and self._token.value == token:
            self._token = None

    async def _fetch(self) -> AccessToken:
        c = self.credential
        try:
            token, lifetime = await self._request()
        except TokenRejected as e:
            self._failed("rejected", str(e))
            raise
        except TokenUnavailable as e:
            self._failed("unavailable", str(e))
            raise
        self.fetched += 1
        self.last_error = None
        if self._observe is not None:
            self._observe("ok")
        result = AccessToken(token, self._clock() + lifetime, lifetime)
        log.info("oauth %s: new access token for %s, valid %.0f s", c.name, c.describe(),
                 lifetime)
        return result

    def _failed(self, outcome: Outcome, message: str) -> None:
        self.last_error = message
        if self._observe is not None:
            self._observe(outcome)
        log.warning("oauth %s: %s", self.credential.name, message)

    def _ssl_context(self) -> ssl.SSLContext:
        ca = self.credential.ca_file
        return ssl.create_default_context(cafile=str(ca) if ca else None)

    async def _request(self) -> tuple[str, float]:
        """One client-credentials grant (RFC 6749 4.4): the token and its lifetime."""
        c = self.credential
        form = {"grant_type": "client_credentials", "client_id": c.client_id,
                "client_secret": c.client_secret}
        if c.scope:
            form["scope"] = c.scope
        return await self.post_token_request(form)

    async def post_token_request(self, form: dict[str, str]) -> tuple[str, float]:
        """POST ``form`` to the token endpoint; the access token and its lifetime, or the
        IdP's refusal as ``TokenRejected``. Providers with other grants call this too."""
        c = self.credential
        where = urlsplit(c.token_url).netloc
        try:
            async with httpx.AsyncClient(verify=self._ssl_context(), timeout=self._timeout,
                                         transport=self._transport,
                                         follow_redirects=False) as http:
                response = await http.post(c.token_url, data=form,
                                           headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            raise TokenUnavailable(f"token endpoint {where} did not answer within "
                                   f"{self._timeout:.0f} s") from None
        except httpx.HTTPError as e:
            # The message names the URL at most, never the form: no secret in it.
            raise TokenUnavailable(f"token endpoint {where} unreachable: "
                                   f"{type(e).__name__}: {self._mask(str(e))}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if response.status_code == 200:
            token = body.get("access_token")
            if not isinstance(token, str) or not token:
                raise TokenUnavailable(f"token endpoint {where} answered 200 without an "
                                       "access_token")
            try:
                lifetime = float(body.get("expires_in", DEFAULT_LIFETIME))
            except (TypeError, ValueError):
                lifetime = DEFAULT_LIFETIME
            return token, max(1.0, lifetime)
        raise idp_refusal(body.get("error"), body.get("error_description"),
                          response.status_code, where, self._mask)

    def _mask(self, text: str) -> str:
        secret = self.credential.client_secret
        return text.replace(secret, "***") if secret else text


def idp_refusal(error: object, description: object, status: int | None, where: str,
                mask: Callable[[str], str] = lambda s: s) -> TokenError:
    """The IdP's error answer as TokenRejected (4xx, or an RFC 6749 5.2 code when the
    library hides the status) or TokenUnavailable (5xx, anything else), in the IdP's words
    (the first line of its description: Entra ID's carries AADSTS code, trace and time)."""
    code = str(error or (f"HTTP {status}" if status else "error"))
    detail = str(description or "").splitlines()
    text = mask(f"{code}: {detail[0]}" if detail else code)[:MESSAGE_LIMIT]
    if status is None:
        if code in _REJECTIONS:
            return TokenRejected(f"token rejected: {text}")
        return TokenUnavailable(f"token endpoint {where} answered: {text}")
    if 400 <= status < 500 and (code in _REJECTIONS or status in (400, 401, 403)):
        return TokenRejected(f"token rejected: {text}")
    return TokenUnavailable(f"token endpoint {where} answered {status}: {text}")


class TokenSources:
    """The process's token sources, one per distinct credential (IMAP and SMTP logging in
    with the same app share one token and one refresh)."""

    def __init__(self, observe: Callable[[str, Outcome], None] | None = None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self._sources: dict[tuple[str, ...], TokenSource] = {}
        self._observe = observe
        self._clock = clock
        # Where delegated logins keep their refresh tokens (triage.oauth_store.TokenStore);
        # None: a delegated credential fails with a clear TokenRejected.
        self.store: object | None = None
        # Called with (credential name, end of life) when a refresh token is read or saved.
        self.observe_refresh: Callable[[str, datetime], None] | None = None

    def get(self, credential: Credential) -> TokenSource:
        source = self._sources.get(credential.key)
        if source is None:
            from triage.oauth_providers import make_source

            observe = self._observe
            source = make_source(
                credential, clock=self._clock,
                observe=(lambda outcome: observe(credential.name, outcome))
                if observe is not None else None,
                store=self.store, observe_refresh=self.observe_refresh)
            self._sources[credential.key] = source
        return source

    def __iter__(self) -> Iterator[TokenSource]:
        return iter(list(self._sources.values()))
