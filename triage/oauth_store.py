"""Delegated OAuth2 logins' tokens in the database, encrypted, rotated under a lock.

A delegated login (``triage oauth login``) leaves a refresh token that the IdP may replace
each time it is used (Entra ID does; the old one then stops working some time later). Two
processes refreshing at once would each rotate it and one would keep a token the IdP no
longer honours, so a refresh runs in one database transaction that holds a per-credential
lock (``triage.lease.lock_for_transaction``): it reads the row, and either takes the access
token another process has just stored or redeems the refresh token and saves what the IdP
returned before the transaction (and the lock) ends. The lock is its own, not the mailbox's
polling lease: that one is held for as long as a node polls, and SMTP on every node needs
tokens too.

Both tokens are Fernet-encrypted (AES-128-CBC + HMAC-SHA256) with TRIAGE_OAUTH_TOKEN_KEY;
several comma-separated keys decrypt, the first encrypts (a key rotation: add the new key
first, and every row is re-encrypted with it on its next refresh).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Engine, delete, insert, select, update

from triage.lease import lock_for_transaction
from triage.oauth import REFRESH_MARGIN, Credential, TokenRejected
from triage.storage.models import OAuthToken

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grant:
    """What the IdP gave for a refresh token (or a login): a new refresh token, if any."""

    access_token: str = field(repr=False)
    lifetime: float
    refresh_token: str | None = field(default=None, repr=False)


def token_cipher(keys: str) -> MultiFernet:
    """TRIAGE_OAUTH_TOKEN_KEY (one or more comma-separated Fernet keys) as a cipher;
    ValueError says how to make a key, never what was given."""
    parts = [k.strip() for k in keys.split(",") if k.strip()]
    if not parts:
        raise ValueError("no key given")
    try:
        return MultiFernet([Fernet(k) for k in parts])
    except ValueError:
        raise ValueError("not a Fernet key (32 url-safe base64-encoded bytes): make one with "
                         "python -c 'from cryptography.fernet import Fernet; "
                         "print(Fernet.generate_key().decode())'") from None


class TokenStore:
    """The ``oauth_tokens`` rows. Blocking: call from a worker thread."""

    def __init__(self, engine: Engine, keys: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self._cipher = token_cipher(keys)
        self._clock = clock

    def _seal(self, value: str) -> str:
        return self._cipher.encrypt(value.encode()).decode()

    def _open(self, value: str, credential: Credential) -> str:
        try:
            return self._cipher.decrypt(value.encode()).decode()
        except InvalidToken:
            raise TokenRejected(
                f"token rejected: the stored tokens of {credential.user} cannot be decrypted "
                "with TRIAGE_OAUTH_TOKEN_KEY (a different key?): give the key they were "
                f"saved with, or log in again (triage oauth login)") from None

    def save_login(self, credential: Credential, grant: Grant) -> None:
        """A new authorisation (``triage oauth login``): replaces any earlier one."""
        if not grant.refresh_token:
            raise TokenRejected("token rejected: the IdP gave no refresh token (Microsoft: "
                                "offline_access; Google: access_type=offline)")
        now = self._clock()
        with self.engine.begin() as conn:
            lock_for_transaction(conn, _lock_name(credential))
            conn.execute(delete(OAuthToken).where(
                OAuthToken.key == credential.store_key))
            conn.execute(insert(OAuthToken).values(
                key=credential.store_key, name=credential.name,
                refresh_token=self._seal(grant.refresh_token),
                access_token=self._seal(grant.access_token),
                access_expires_at=now + timedelta(seconds=grant.lifetime),
                issued_at=now, authorised_at=now, updated_at=now))

    def issued_at(self, credential: Credential) -> datetime | None:
        """When the refresh token held now was issued (None: no login yet)."""
        with self.engine.connect() as conn:
            return conn.execute(select(OAuthToken.issued_at).where(
                OAuthToken.key == credential.store_key)).scalar()

    def access_token(self, credential: Credential, refused: str | None,
                     redeem: Callable[[str], Grant]) -> tuple[str, float, datetime]:
        """An access token with time left: the one stored (another process may have just
        refreshed it) unless it is ``refused`` or close to expiry, else a new one from
        ``redeem(refresh_token)``, the rotated refresh token saved before returning.
        Returns the token, its remaining lifetime and the refresh token's issue time."""
        with self.engine.begin() as conn:
            lock_for_transaction(conn, _lock_name(credential))
            row = conn.execute(select(OAuthToken).where(
                OAuthToken.key == credential.store_key)).one_or_none()
            if row is None:
                raise TokenRejected(
                    f"token rejected: no authorisation stored for {credential.user}: run "
                    "triage oauth login")
            now = self._clock()
            if row.access_token is not None and row.access_expires_at is not None:
                left = (row.access_expires_at - now).total_seconds()
                token = self._open(row.access_token, credential)
                if token != refused and left > REFRESH_MARGIN:
                    return token, left, row.issued_at
            grant = redeem(self._open(row.refresh_token, credential))
            values: dict[str, object] = {
                "access_token": self._seal(grant.access_token),
                "access_expires_at": now + timedelta(seconds=grant.lifetime),
                "updated_at": now,
                # Re-encrypted each time, so that a new first key takes over.
                "refresh_token": self._seal(grant.refresh_token or
                                            self._open(row.refresh_token, credential)),
            }
            issued = row.issued_at
            if grant.refresh_token:
                values["issued_at"] = issued = now
            conn.execute(update(OAuthToken).where(
                OAuthToken.key == credential.store_key).values(**values))
        if grant.refresh_token:
            log.info("oauth %s: refresh token rotated and saved", credential.name)
        return grant.access_token, grant.lifetime, issued

    def forget(self, credential: Credential) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(delete(OAuthToken).where(
                OAuthToken.key == credential.store_key)).rowcount
        return bool(n)


def _lock_name(credential: Credential) -> str:
    return f"triage-oauth-refresh:{credential.store_key}"
