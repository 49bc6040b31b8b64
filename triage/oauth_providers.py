"""The ``microsoft`` and ``google`` providers: token sources built on the IdPs' own libraries.

- ``microsoft``, app-only: msal's ``ConfidentialClientApplication`` with a client secret or a
  certificate (msal signs the client assertion with the private key, the form Entra ID
  wants, and finds the token endpoint by OpenID discovery on the authority);
- ``microsoft``, delegated: the refresh token from a device-code login
  (``triage oauth login``), redeemed through msal;
- ``google``, app: a service account with domain-wide delegation; google-auth signs the
  JWT-bearer grant (RFC 7523) for ``subject`` = the mailbox user;
- ``google``, delegated: the refresh token from an installed-app authorisation, redeemed
  through google-auth.

Both libraries are synchronous (requests): each request runs in a worker thread. Their
failures are mapped onto TokenRejected / TokenUnavailable as in triage.oauth, in the IdP's
own words, and with the client secret masked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from triage.oauth import (
    HTTP_TIMEOUT,
    Credential,
    Outcome,
    TokenError,
    TokenRejected,
    TokenSource,
    TokenUnavailable,
    idp_refusal,
)

log = logging.getLogger(__name__)

MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
# Delegated: IMAP and SMTP as the signed-in user (msal adds offline_access, openid, profile).
MICROSOFT_USER_SCOPE = ("https://outlook.office.com/IMAP.AccessAsUser.All "
                        "https://outlook.office.com/SMTP.Send")
GOOGLE_SCOPE = "https://mail.google.com/"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"


def make_source(credential: Credential, *, clock: Callable[[], float] = time.time,
                observe: Callable[[Outcome], None] | None = None, store: object | None = None,
                observe_refresh: Callable[[str, datetime], None] | None = None,
                ) -> TokenSource:
    """The token source for ``credential``'s provider and flow."""
    if credential.flow == "delegated":
        return DelegatedSource(credential, clock=clock, observe=observe, store=store,
                               observe_refresh=observe_refresh)
    if credential.provider == "microsoft":
        return MicrosoftAppSource(credential, clock=clock, observe=observe)
    if credential.provider == "google":
        return GoogleServiceAccountSource(credential, clock=clock, observe=observe)
    return TokenSource(credential, clock=clock, observe=observe)


def _where(credential: Credential) -> str:
    return urlsplit(credential.authority or credential.token_url).netloc


def _http_session(credential: Credential, timeout: float | None = None) -> Any:
    """A requests session for the libraries, with the settings' CA and timeout on every
    request: requests has no session-wide timeout, and its REQUESTS_CA_BUNDLE would win
    over a session's ``verify`` (only a per-request one wins over it)."""
    import functools

    import requests

    session = requests.Session()
    fixed: dict[str, Any] = {}
    if credential.ca_file is not None:
        fixed["verify"] = str(credential.ca_file)
    if timeout is not None:
        fixed["timeout"] = timeout
    if fixed:
        session.request = functools.partial(session.request, **fixed)  # type: ignore[method-assign]
    return session


def _network_error(credential: Credential, e: Exception, timeout: float) -> TokenUnavailable:
    import requests

    where = _where(credential)
    if isinstance(e, requests.Timeout):
        return TokenUnavailable(f"token endpoint {where} did not answer within {timeout:.0f} s")
    return TokenUnavailable(f"token endpoint {where} unreachable: {type(e).__name__}")


# ---- microsoft (msal) -----------------------------------------------------------------------
def msal_app(credential: Credential, timeout: float = HTTP_TIMEOUT,
             *, public: bool = False) -> Any:
    """An msal application for ``credential``: confidential (client secret or certificate)
    unless ``public`` or it has neither (a public client's device-code login). Building it
    asks the authority's OpenID discovery document; a custom authority (tests, sovereign
    clouds) is taken as given, without Microsoft's instance discovery."""
    import msal  # type: ignore[import-untyped]

    authority = credential.authority or MICROSOFT_AUTHORITY + "/organizations"
    known = urlsplit(authority).hostname == urlsplit(MICROSOFT_AUTHORITY).hostname
    kw: dict[str, Any] = dict(
        authority=authority, http_client=_http_session(credential, timeout),
        validate_authority=known, instance_discovery=known,
        token_cache=msal.TokenCache())
    secret = _msal_client_credential(credential)
    try:
        if public or secret is None:
            return msal.PublicClientApplication(credential.client_id, **kw)
        return msal.ConfidentialClientApplication(credential.client_id,
                                                  client_credential=secret, **kw)
    except ValueError as e:  # discovery refused: an unknown tenant or a wrong authority
        raise TokenRejected(f"token rejected: {_first_line(e)}") from None
    except OSError as e:  # requests' errors are OSErrors
        raise _network_error(credential, e, timeout) from None


def _msal_client_credential(credential: Credential) -> str | dict[str, str] | None:
    if credential.certificate is not None:
        try:
            pem = credential.certificate.read_text()
        except OSError as e:
            raise TokenRejected(f"token rejected: certificate file {credential.certificate}: "
                                f"{e.strerror}") from None
        cert: dict[str, str] = {"private_key": pem}
        if credential.certificate_thumbprint:
            cert["thumbprint"] = credential.certificate_thumbprint.replace(":", "")
        elif "BEGIN CERTIFICATE" in pem:
            cert["public_certificate"] = pem  # msal takes the SHA-256 thumbprint from it
        else:
            raise TokenRejected("token rejected: the certificate file holds no certificate: "
                                "add it to the file or give certificate_thumbprint")
        return cert
    return credential.client_secret or None


def _first_line(e: object) -> str:
    return (str(e).splitlines() or [""])[0][:300]


def msal_result(credential: Credential, result: dict[str, Any] | None) -> tuple[str, float,
                                                                              str | None]:
    """msal's answer as (access token, lifetime, refresh token), or its error mapped."""
    if not result:
        raise TokenUnavailable(f"token endpoint {_where(credential)} gave no answer")
    if "access_token" in result:
        try:
            lifetime = float(result.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        return str(result["access_token"]), max(1.0, lifetime), result.get("refresh_token")
    secret = credential.client_secret

    def mask(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    raise idp_refusal(result.get("error"), result.get("error_description"), None,
                      _where(credential), mask)


class MicrosoftAppSource(TokenSource):
    """App-only access to Exchange Online: the client-credentials grant through msal, with
    a client secret or a certificate. msal's own token cache is replaced on each request:
    this class asks only when its token is stale or a server refused it, and then a cached
    (refused) token is the one thing it must not get back."""

    _app: Any = None

    async def _request(self) -> tuple[str, float]:
        return await asyncio.to_thread(self._acquire)

    def _acquire(self) -> tuple[str, float]:
        import msal

        c = self.credential
        if self._app is None:
            self._app = msal_app(c, self._timeout)
        self._app.token_cache = msal.TokenCache()
        try:
            result = self._app.acquire_token_for_client(
                scopes=[c.scope or MICROSOFT_APP_SCOPE])
        except OSError as e:
            raise _network_error(c, e, self._timeout) from None
        except ValueError as e:  # an unreadable key, a non-JSON answer
            raise TokenUnavailable(f"token endpoint {_where(c)}: {_first_line(e)}") from None
        token, lifetime, _ = msal_result(c, result)
        return token, lifetime


# ---- google (google-auth) ------------------------------------------------------------------
class _GoogleRequest:
    """google-auth's requests transport with our timeout and CA (it defaults to 120 s)."""

    def __init__(self, credential: Credential, timeout: float) -> None:
        from google.auth.transport.requests import Request

        self._request = Request(session=_http_session(credential))
        self._timeout = timeout

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        return self._request(url, method=method, body=body, headers=headers,
                             timeout=self._timeout, **kwargs)


def google_error(credential: Credential, e: Exception) -> TokenError:
    """google-auth's RefreshError / TransportError as TokenRejected / TokenUnavailable."""
    from google.auth import exceptions

    where = _where(credential)
    if isinstance(e, exceptions.RefreshError):
        body = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else {}
        if getattr(e, "retryable", False):
            return TokenUnavailable(f"token endpoint {where} answered: {_first_line(e.args[0])}")
        if body.get("error"):
            return idp_refusal(body.get("error"), body.get("error_description"), 400, where)
        return TokenRejected(f"token rejected: {_first_line(e.args[0] if e.args else e)}")
    return TokenUnavailable(f"token endpoint {where} unreachable: {type(e).__name__}")


class GoogleServiceAccountSource(TokenSource):
    """A service account with domain-wide delegation, acting as the mailbox user: the
    JWT-bearer grant signed with the account's private key (the key file never leaves this
    process; only the signed assertion does)."""

    async def _request(self) -> tuple[str, float]:
        return await asyncio.to_thread(self._acquire)

    def _acquire(self) -> tuple[str, float]:
        from google.auth import exceptions
        from google.oauth2 import service_account

        c = self.credential
        assert c.service_account is not None
        try:
            info = json.loads(c.service_account.read_text())
        except (OSError, ValueError) as e:
            raise TokenRejected(f"token rejected: service account key {c.service_account} "
                                f"unreadable: {type(e).__name__}") from None
        if not isinstance(info, dict):
            raise TokenRejected(f"token rejected: {c.service_account} is not a key file")
        info["token_uri"] = c.token_url  # the settings' (the key file's by default)
        try:
            creds = service_account.Credentials.from_service_account_info(
                info, scopes=[c.scope or GOOGLE_SCOPE], subject=c.user)
        except (ValueError, KeyError) as e:
            raise TokenRejected(f"token rejected: service account key {c.service_account}: "
                                f"{type(e).__name__}: {_first_line(e)}") from None
        try:
            creds.refresh(_GoogleRequest(c, self._timeout))
        except (exceptions.RefreshError, exceptions.TransportError) as e:
            raise google_error(c, e) from None
        return str(creds.token), _google_lifetime(creds.expiry)


def _google_lifetime(expiry: datetime | None) -> float:
    if expiry is None:  # google-auth gives naive UTC
        return 3600.0
    return max(1.0, (expiry.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds())


# ---- delegated logins: a user's refresh token -------------------------------------------------
def redeem_refresh_token(credential: Credential, timeout: float = HTTP_TIMEOUT,
                         ) -> Callable[[str], Any]:
    """The provider's refresh-token grant (RFC 6749 6) as ``rt -> Grant``."""
    from triage.oauth_store import Grant

    def microsoft(refresh_token: str) -> Grant:
        # A public client, as at the device-code login: Entra ID binds the refresh token to
        # the kind of client it was issued to.
        app = msal_app(credential, timeout, public=True)
        try:
            result = app.acquire_token_by_refresh_token(
                refresh_token, scopes=(credential.scope or MICROSOFT_USER_SCOPE).split())
        except OSError as e:
            raise _network_error(credential, e, timeout) from None
        token, lifetime, rotated = msal_result(credential, result)
        return Grant(token, lifetime, rotated)

    def google(refresh_token: str) -> Grant:
        from google.auth import exceptions
        from google.oauth2.credentials import Credentials

        creds = Credentials(None, refresh_token=refresh_token, token_uri=credential.token_url,
                            client_id=credential.client_id,
                            client_secret=credential.client_secret or None,
                            scopes=[credential.scope or GOOGLE_SCOPE])
        try:
            creds.refresh(_GoogleRequest(credential, timeout))
        except (exceptions.RefreshError, exceptions.TransportError) as e:
            raise google_error(credential, e) from None
        rotated = creds.refresh_token if creds.refresh_token != refresh_token else None
        return Grant(str(creds.token), _google_lifetime(creds.expiry), rotated)

    if credential.provider == "microsoft":
        return microsoft
    if credential.provider == "google":
        return google
    raise ValueError(f"no delegated login for the {credential.provider} provider")


class DelegatedSource(TokenSource):
    """A user's delegated login: access tokens from the refresh token stored in the database
    (triage.oauth_store), refreshed under a per-credential lock so that processes sharing
    the database never race a rotation, the rotated token saved at once."""

    def __init__(self, credential: Credential, *, store: object | None = None,
                 observe_refresh: Callable[[str, datetime], None] | None = None,
                 **kw: Any) -> None:
        super().__init__(credential, **kw)
        self.store = store
        self._observe_refresh = observe_refresh
        self._refused: str | None = None

    def invalidate(self, token: str) -> None:
        self._refused = token  # not to be taken back from the database either
        super().invalidate(token)

    async def _request(self) -> tuple[str, float]:
        from triage.oauth_store import TokenStore

        store = self.store
        if not isinstance(store, TokenStore):
            raise TokenRejected("token rejected: a delegated login needs the database and "
                                "TRIAGE_OAUTH_TOKEN_KEY")
        redeem = redeem_refresh_token(self.credential, self._timeout)
        try:
            token, lifetime, issued = await asyncio.to_thread(
                store.access_token, self.credential, self._refused, redeem)
        except TokenError:
            raise
        except Exception as e:  # the database: try again later
            raise TokenUnavailable(f"token store: {type(e).__name__}: {_first_line(e)}") \
                from None
        self.note_refresh_token(issued)
        return token, lifetime

    def note_refresh_token(self, issued: datetime) -> None:
        """The refresh token's end of life (issue + refresh_token_days) to the metric."""
        if self._observe_refresh is not None:
            self._observe_refresh(self.credential.name, issued + timedelta(
                days=self.credential.refresh_token_days))

    def load_refresh_token_age(self) -> None:
        """At start: the stored token's age to the metric (blocking; no login: nothing)."""
        from triage.oauth_store import TokenStore

        if isinstance(self.store, TokenStore):
            issued = self.store.issued_at(self.credential)
            if issued is not None:
                self.note_refresh_token(issued)
