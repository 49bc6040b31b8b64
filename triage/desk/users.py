"""Staff users: argon2id passwords, lockout, server-side sessions and API tokens.

Lockout is per user (``MAX_FAILURES`` wrong passwords lock the account for ``LOCKOUT``), and
a wrong name costs the same argon2 verify as a wrong password, so timing does not tell which
names exist. Session and API tokens are 256-bit random strings; only their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from triage.storage.models import User, WebSession

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
SESSION_TTL = timedelta(hours=12)
MIN_PASSWORD = 10
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not a real password, only spends the same time")


class UserError(ValueError):
    """A bad user name or password given to ``add_user`` (the message says which rule)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def add_user(s: Session, name: str, password: str, *, display_name: str = "",
             email: str = "") -> User:
    if not NAME_RE.match(name):
        raise UserError("user name: 1-64 of a-z 0-9 . _ -, starting with a letter or digit")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    if s.scalar(select(User.id).where(User.name == name)) is not None:
        raise UserError(f"user {name!r} exists (use --reset to set a new password)")
    user = User(name=name, display_name=display_name or name, email=email,
                password_hash=_hasher.hash(password), active=True, failed_logins=0)
    s.add(user)
    s.flush()
    return user


def random_password() -> str:
    """For accounts that log in only with an API token (integrations)."""
    return secrets.token_urlsafe(24)


def set_password(s: Session, user: User, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    user.password_hash = _hasher.hash(password)
    user.failed_logins, user.locked_until = 0, None
    s.execute(delete(WebSession).where(WebSession.user_id == user.id))


@dataclass(frozen=True)
class LoginResult:
    user: User | None
    error: str | None = None  # shown to the person: never says whether the name exists


def authenticate(s: Session, name: str, password: str, now: datetime) -> LoginResult:
    """Check a password, counting failures; call inside a write transaction."""
    generic = "Wrong user name or password."
    user = s.scalar(select(User).where(User.name == name.strip().lower()))
    if user is None or not user.active:
        _verify(_DUMMY_HASH, password)
        return LoginResult(None, generic)
    if user.locked_until is not None and user.locked_until > now:
        _verify(_DUMMY_HASH, password)
        return LoginResult(None, "Too many failed attempts: this account is locked for a while.")
    if not _verify(user.password_hash, password):
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILURES:
            user.locked_until, user.failed_logins = now + LOCKOUT, 0
            return LoginResult(None,
                               "Too many failed attempts: this account is locked for a while.")
        return LoginResult(None, generic)
    user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return LoginResult(user)


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def create_session(s: Session, user: User, now: datetime,
                   ttl: timedelta = SESSION_TTL) -> tuple[str, WebSession]:
    """A new session (the old ones of this browser are the caller's to end): token, row."""
    token = secrets.token_urlsafe(32)
    row = WebSession(token_hash=token_hash(token), user_id=user.id,
                     csrf_token=secrets.token_urlsafe(32), created_at=now,
                     expires_at=now + ttl, last_seen_at=now)
    s.add(row)
    s.execute(delete(WebSession).where(WebSession.expires_at < now))
    return token, row


def session_for(s: Session, token: str, now: datetime) -> WebSession | None:
    if not token:
        return None
    row = s.get(WebSession, token_hash(token))
    if row is None or row.expires_at <= now or not row.user.active:
        return None
    return row


def end_session(s: Session, token: str) -> None:
    s.execute(delete(WebSession).where(WebSession.token_hash == token_hash(token)))


def issue_api_token(s: Session, user: User) -> str:
    token = "itx_" + secrets.token_urlsafe(32)
    user.api_token_hash = token_hash(token)
    return token


def user_for_api_token(s: Session, token: str) -> User | None:
    if not token.startswith("itx_"):
        return None
    user = s.scalar(select(User).where(User.api_token_hash == token_hash(token)))
    if user is None or not user.active or user.api_token_hash is None:
        return None
    # The lookup is by hash equality in SQL; compare again in constant time for good measure.
    return user if hmac.compare_digest(user.api_token_hash, token_hash(token)) else None


__all__ = [
    "LOCKOUT", "MAX_FAILURES", "LoginResult", "UserError", "add_user", "authenticate",
    "create_session", "end_session", "issue_api_token", "random_password", "session_for",
    "set_password", "token_hash", "user_for_api_token",
]
