"""``triage user add | list`` handlers. The password is read from the terminal (twice) or,
for scripts, from standard input with ``--password-stdin``; it never appears in argv."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.desk import users
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


def cmd_user_add(ns: argparse.Namespace) -> int:
    try:
        with _session(ns) as s:
            user = s.scalar(select(User).where(User.name == ns.name))
            if ns.reset:
                if user is None:
                    raise users.UserError(f"no user {ns.name!r}")
                users.set_password(s, user, _password(ns))
                print(f"password reset for {user.name}; their sessions ended")
            else:
                user = users.add_user(s, ns.name, _password(ns) if not ns.no_password else
                                      users.random_password(), display_name=ns.display_name or "",
                                      email=ns.email or "")
                print(f"user {user.name} added")
            if ns.api_token:
                print(f"API token (shown once): {users.issue_api_token(s, user)}")
    except users.UserError as e:
        print(f"triage user add: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_user_list(ns: argparse.Namespace) -> int:
    with _session(ns) as s:
        for u in s.scalars(select(User).order_by(User.name)):
            state = "active" if u.active else "disabled"
            locked = " locked" if u.locked_until else ""
            print(f"{u.name}\t{u.display_name}\t{u.email}\t{state}{locked}")
    return 0
