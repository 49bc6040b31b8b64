"""OAuth2 access tokens for XOAUTH2 logins (IMAP ``AUTHENTICATE``, SMTP ``AUTH``).

A ``TokenSource`` hands out an access token for one credential, fetched from the identity
provider (IdP) when there is none, when the cached one is close to its expiry, and after a
mail server refused it (``invalidate``). Tokens live in memory only: a client-credentials
grant gets a new one for the asking, so there is nothing worth keeping across restarts.

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
    it beside the secret): only watched (metric and alert), never enforced here."""

    name: str
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str = ""
    provider: Provider = "generic"
    ca_file: Path | None = None
    secret_expires: datetime | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.token_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"token URL must be https://HOST/PATH, not {self.token_url!r}")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            # The client secret goes in the request body.
            raise ValueError(f"refusing a clear-text token endpoint on {parts.hostname!r}: "
                             "use https://")
        if not self.client_id:
            raise ValueError("an OAuth client id is needed")
        if not self.client_secret:
            raise ValueError("an OAuth client secret is needed")

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Two settings naming the same app and scope share one cached token."""
        return (self.provider, self.token_url, self.client_id, self.scope)

    def describe(self) -> str:
        """For logs and ``triage check``: who asks whom, without the secret."""
        return f"client {self.client_id} at {urlsplit(self.token_url).netloc}"


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
        error = str(body.get("error") or f"HTTP {response.status_code}")
        detail = str(body.get("error_description") or "").splitlines()
        text = self._mask(f"{error}: {detail[0]}" if detail else error)[:MESSAGE_LIMIT]
        if 400 <= response.status_code < 500 and (
                error in _REJECTIONS or response.status_code in (400, 401, 403)):
            raise TokenRejected(f"token rejected: {text}")
        raise TokenUnavailable(f"token endpoint {where} answered {response.status_code}: "
                               f"{text}")

    def _mask(self, text: str) -> str:
        secret = self.credential.client_secret
        return text.replace(secret, "***") if secret else text


class TokenSources:
    """The process's token sources, one per distinct credential (IMAP and SMTP logging in
    with the same app share one token and one refresh)."""

    def __init__(self, observe: Callable[[str, Outcome], None] | None = None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self._sources: dict[tuple[str, str, str, str], TokenSource] = {}
        self._observe = observe
        self._clock = clock

    def get(self, credential: Credential) -> TokenSource:
        source = self._sources.get(credential.key)
        if source is None:
            observe = self._observe
            source = TokenSource(
                credential, clock=self._clock,
                observe=(lambda outcome: observe(credential.name, outcome))
                if observe is not None else None)
            self._sources[credential.key] = source
        return source

    def __iter__(self) -> Iterator[TokenSource]:
        return iter(list(self._sources.values()))
