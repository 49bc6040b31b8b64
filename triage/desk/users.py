"""Staff users: argon2id passwords, server-side sessions and API tokens, and their lifecycle
(password reset, token revocation, disabling a user).

A password is checked outside any write transaction (argon2 takes ~0.1 s of CPU; inside a
SQLite write transaction it would hold the database's only write lock that long). Attempts
are counted, and repeated failures slowed, by ``triage.desk.logins``, not by locking the
account. A wrong name costs the same argon2 verify as a wrong password, so
timing does not tell which names exist. Session and API tokens are 256-bit random strings;
only their SHA-256 is stored, and a password reset or a disable ends both.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import CursorResult, delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from triage.addresses import AddressError, parse
from triage.storage.models import User, WebSession

SESSION_TTL = timedelta(hours=12)
TOKEN_USE_RESOLUTION = timedelta(minutes=1)  # how often a token's last use is written
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
    user = User(name=name, display_name=display_name or name, email="",
                password_hash=_hasher.hash(password), active=True)
    set_email(user, email)
    s.add(user)
    s.flush()
    return user


def set_email(user: User, email: str) -> None:
    """The address a user's notifications and escalations go to; "" clears it."""
    email = email.strip()
    if email:
        try:
            parse(email)
        except AddressError as e:
            raise UserError(f"email: not one usable address ({e.reason})") from None
    user.email = email


def random_password() -> str:
    """For accounts that log in only with an API token (integrations)."""
    return secrets.token_urlsafe(24)


def set_password(s: Session, user: User, password: str) -> None:
    """A new password ends every session and revokes the API token: a reset is what an
    operator does when the old credentials may be known to someone else."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    user.password_hash = _hasher.hash(password)
    user.api_token_hash, user.api_token_used_at = None, None
    end_sessions(s, user)


def end_sessions(s: Session, user: User) -> int:
    """End every session of ``user``; how many there were."""
    r = cast(CursorResult[Any], s.execute(delete(WebSession)
                                          .where(WebSession.user_id == user.id)))
    return r.rowcount or 0


def disable_user(s: Session, user: User) -> None:
    """No more logins, sessions or API calls; the user stays for the audit trail."""
    user.active = False
    user.api_token_hash, user.api_token_used_at = None, None
    end_sessions(s, user)


def enable_user(s: Session, user: User) -> None:
    """Logins again with the same password (the old sessions and token stay ended)."""
    user.active = True


def revoke_api_token(s: Session, user: User) -> bool:
    """Whether there was a token to revoke."""
    had = user.api_token_hash is not None
    user.api_token_hash, user.api_token_used_at = None, None
    return had


@dataclass(frozen=True)
class Credentials:
    """What a password check needs, read outside any write transaction. An unknown or
    disabled name gets the dummy hash, so its check costs the same argon2 time."""

    user_id: int | None
    password_hash: str


def credentials_for(s: Session, name: str) -> Credentials:
    user = s.scalar(select(User).where(User.name == name.strip().lower()))
    if user is None or not user.active:
        return Credentials(None, _DUMMY_HASH)
    return Credentials(user.id, user.password_hash)


def verify_password(hashed: str, password: str) -> bool:
    """argon2 verify: CPU-heavy (~0.1 s); never call it inside a write transaction."""
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def rehash_if_needed(hashed: str, password: str) -> str | None:
    """A new hash when the stored one uses older parameters (after a successful check)."""
    return _hasher.hash(password) if _hasher.check_needs_rehash(hashed) else None


def record_success(s: Session, user_id: int, now: datetime,
                   new_hash: str | None = None) -> User | None:
    """The user after a right password, or None if they were disabled meanwhile."""
    user = s.get(User, user_id)
    if user is None or not user.active:
        return None
    user.last_login_at = now
    if new_hash is not None:
        user.password_hash = new_hash
    return user


def check_password(sessions: sessionmaker[Session], name: str, password: str,
                   now: datetime) -> User | None:
    """Read, verify outside any transaction, record a success: for the command line and
    tests (the web login adds the progressive delay of ``triage.desk.logins``, which also
    counts the failures)."""
    with sessions() as s:
        creds = credentials_for(s, name)
    ok = verify_password(creds.password_hash, password)
    if creds.user_id is None:
        return None
    if not ok:
        return None
    with sessions.begin() as s:
        return record_success(s, creds.user_id, now,
                              rehash_if_needed(creds.password_hash, password))


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
    user.api_token_hash, user.api_token_used_at = token_hash(token), None
    return token


def user_for_api_token(s: Session, token: str) -> User | None:
    if not token.startswith("itx_"):
        return None
    user = s.scalar(select(User).where(User.api_token_hash == token_hash(token)))
    if user is None or not user.active or user.api_token_hash is None:
        return None
    # The lookup is by hash equality in SQL; compare again in constant time for good measure.
    return user if hmac.compare_digest(user.api_token_hash, token_hash(token)) else None


def note_token_use(s: Session, user_id: int, now: datetime) -> bool:
    """Record a token's use, at most once per ``TOKEN_USE_RESOLUTION``: whether it wrote.

    The condition is in the UPDATE, so parallel calls write once and the common case (used a
    moment ago) writes nothing."""
    r = cast(CursorResult[Any], s.execute(update(User).where(
        User.id == user_id, User.api_token_hash.is_not(None),
        or_(User.api_token_used_at.is_(None),
            User.api_token_used_at < now - TOKEN_USE_RESOLUTION))
        .values(api_token_used_at=now).execution_options(synchronize_session=False)))
    return bool(r.rowcount)


__all__ = [
    "SESSION_TTL", "TOKEN_USE_RESOLUTION", "Credentials", "UserError", "add_user",
    "check_password", "create_session", "credentials_for", "disable_user", "enable_user",
    "end_session", "end_sessions", "issue_api_token", "note_token_use", "random_password",
    "record_success", "rehash_if_needed", "revoke_api_token", "session_for",
    "set_password", "token_hash", "user_for_api_token", "verify_password",
]
