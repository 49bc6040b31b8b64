"""``triage user add | list | disable | enable | token revoke`` handlers. The password is read
from the terminal (twice) or, for scripts, from standard input with ``--password-stdin``; it
never appears in argv. Every change is also a security log event (JSON on standard error)."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage import security
from triage.desk import logins, users
from triage.storage.models import User


@contextmanager
def _session(ns: argparse.Namespace) -> Iterator[Session]:
    from triage.config import load_settings
    from triage.storage.engine import make_engine, make_sessionmaker
    from triage.storage.migrate import upgrade

    engine = make_engine(load_settings(ns.config).database_url)
    try:
        upgrade(engine)
        with make_sessionmaker(engine).begin() as s:
            yield s
    finally:
        engine.dispose()


def _password(ns: argparse.Namespace) -> str:
    if ns.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"Password for {ns.name}: ")
    if getpass.getpass("Again: ") != first:
        raise users.UserError("the passwords differ")
    return first


def _actor() -> str:
    """Who ran the command, for the security log (the login name of the shell)."""
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container)
        return "unknown"


def _user(s: Session, name: str) -> User:
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        raise users.UserError(f"no user {name!r}")
    return user


def cmd_user_add(ns: argparse.Namespace) -> int:
    security.log_to_stderr()
    try:
        with _session(ns) as s:
            if ns.reset:
                user = _user(s, ns.name)
                had_token = user.api_token_hash is not None
                users.set_password(s, user, _password(ns))
                print(f"password reset for {user.name}; their sessions ended"
                      + ("; their API token is revoked" if had_token else ""))
                security.event("user_password_reset", user=user.name, actor=_actor())
            else:
                user = users.add_user(s, ns.name, _password(ns) if not ns.no_password else
                                      users.random_password(), display_name=ns.display_name or "",
                                      email=ns.email or "")
                print(f"user {user.name} added")
                security.event("user_added", user=user.name, actor=_actor())
            if ns.api_token:
                print(f"API token (shown once): {users.issue_api_token(s, user)}")
                security.event("api_token_issued", user=user.name, actor=_actor())
    except users.UserError as e:
        print(f"triage user add: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_user_list(ns: argparse.Namespace) -> int:
    with _session(ns) as s:
        failures = logins.failures(s)
        for u in s.scalars(select(User).order_by(User.name)):
            state = "active" if u.active else "disabled"
            if u.api_token_hash is None:
                token = "token: none"
            elif u.api_token_used_at is None:
                token = "token: never used"
            else:
                token = f"token: last used {u.api_token_used_at:%Y-%m-%d %H:%M} UTC"
            n = failures.get(u.name, 0)
            failed = f"\t{n} failed logins" if n else ""
            print(f"{u.name}\t{u.display_name}\t{u.email}\t{state}\t{token}{failed}")
    return 0


def _change(ns: argparse.Namespace, command: str, fn: Callable[[Session, User], str],
            event: str) -> int:
    security.log_to_stderr()
    try:
        with _session(ns) as s:
            user = _user(s, ns.name)
            print(fn(s, user))
            security.event(event, user=user.name, actor=_actor())
    except users.UserError as e:
        print(f"triage user {command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_user_disable(ns: argparse.Namespace) -> int:
    def run(s: Session, user: User) -> str:
        sessions = users.end_sessions(s, user)
        users.disable_user(s, user)
        return (f"user {user.name} disabled; {sessions} session(s) ended, API token revoked "
                "(triage user enable NAME undoes the disable, not the rest)")
    return _change(ns, "disable", run, "user_disabled")


def cmd_user_enable(ns: argparse.Namespace) -> int:
    def run(s: Session, user: User) -> str:
        users.enable_user(s, user)
        return f"user {user.name} enabled (an API token needs --api-token again)"
    return _change(ns, "enable", run, "user_enabled")


def cmd_user_email(ns: argparse.Namespace) -> int:
    def run(s: Session, user: User) -> str:
        users.set_email(user, ns.address)
        return (f"email of {user.name} set to {user.email}" if user.email
                else f"email of {user.name} cleared (no notifications by mail)")
    return _change(ns, "email", run, "user_email_set")


def cmd_user_token_revoke(ns: argparse.Namespace) -> int:
    def run(s: Session, user: User) -> str:
        if users.revoke_api_token(s, user):
            return f"API token of {user.name} revoked"
        return f"{user.name} had no API token"
    return _change(ns, "token revoke", run, "api_token_revoked")
