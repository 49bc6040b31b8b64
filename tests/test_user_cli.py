"""``triage user add | list | disable | enable | token revoke``: passwords from stdin (never
argv), rules enforced, reset ends sessions and revokes the token, API tokens printed once and
usable until revoked, disabled users locked out of everything, every change logged."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from triage.cli import main
from triage.desk import logins, users
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.models import User, WebSession


def run(monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(argv)


def test_user_add_reset_list_and_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    monkeypatch.setenv("TRIAGE_DATABASE_URL", url)
    assert run(monkeypatch, ["user", "add", "eve", "--password-stdin"], "short\n") == 2
    assert "at least 10" in capsys.readouterr().err
    assert run(monkeypatch, ["user", "add", "eve", "--password-stdin", "--display-name",
                             "Eve E", "--email", "eve@itx.net"], "a long password\n") == 0
    assert run(monkeypatch, ["user", "add", "eve", "--password-stdin"], "a long password\n") == 2
    assert _events(capsys.readouterr().err) == [("user_added", "eve")]  # the refusal: none
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    user = users.check_password(sessions, "eve", "a long password", now)
    assert user is not None and user.email == "eve@itx.net"
    with sessions.begin() as s:
        first_token = users.issue_api_token(s, s.get(User, user.id))
        users.create_session(s, s.get(User, user.id), now)
    assert run(monkeypatch, ["user", "add", "eve", "--reset", "--password-stdin"],
               "another long pw\n") == 0
    out = capsys.readouterr()
    assert "sessions ended; their API token is revoked" in out.out
    assert _events(out.err) == [("user_password_reset", "eve")]
    assert users.check_password(sessions, "eve", "a long password", now) is None
    assert users.check_password(sessions, "eve", "another long pw", now) is not None
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(WebSession)) == 0  # reset ended it
        assert users.user_for_api_token(s, first_token) is None  # and revoked the token
        assert s.scalar(select(User.password_hash)).startswith("$argon2id$")
    assert run(monkeypatch, ["user", "add", "eve", "--reset", "--password-stdin",
                             "--api-token"], "a third long pw\n") == 0
    token = capsys.readouterr().out.split("API token (shown once): ", 1)[1].split()[0]
    with sessions() as s:
        found = users.user_for_api_token(s, token)
        assert found is not None and found.name == "eve"
    assert run(monkeypatch, ["user", "list"]) == 0
    assert "eve\tEve E\teve@itx.net\tactive\ttoken: never used\n" in capsys.readouterr().out
    # Failed attempts are counted by the login delay (login_throttle), per address.
    with sessions.begin() as s:
        for address in ("198.51.100.1", "198.51.100.1", "198.51.100.2"):
            logins.reserve(s, "eve", address, now)
    assert run(monkeypatch, ["user", "list"]) == 0
    assert "\ttoken: never used\t3 failed logins\n" in capsys.readouterr().out
    engine.dispose()


def _events(stderr: str) -> list[tuple[str, str]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    for line in lines:
        assert line["logger"] == "triage.security" and line["actor"]
    return [(line["event"], line["user"]) for line in lines]


def test_token_last_use_revoke_and_disable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    monkeypatch.setenv("TRIAGE_DATABASE_URL", url)
    assert run(monkeypatch, ["user", "add", "bot", "--no-password", "--api-token"]) == 0
    out = capsys.readouterr()
    token = out.out.split("API token (shown once): ", 1)[1].split()[0]
    assert _events(out.err) == [("user_added", "bot"), ("api_token_issued", "bot")]
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    used = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with sessions.begin() as s:
        bot = users.user_for_api_token(s, token)
        assert bot is not None
        assert users.note_token_use(s, bot.id, used)
        # Within a minute nothing is written again; after it, the new time is.
        assert not users.note_token_use(s, bot.id, used + timedelta(seconds=30))
    assert run(monkeypatch, ["user", "list"]) == 0
    assert "bot\tbot\t\tactive\ttoken: last used 2026-12-01 09:30 UTC" in capsys.readouterr().out

    assert run(monkeypatch, ["user", "token", "revoke", "bot"]) == 0
    out = capsys.readouterr()
    assert "API token of bot revoked" in out.out
    assert _events(out.err) == [("api_token_revoked", "bot")]
    with sessions() as s:
        assert users.user_for_api_token(s, token) is None
    assert run(monkeypatch, ["user", "list"]) == 0
    assert "bot\tbot\t\tactive\ttoken: none" in capsys.readouterr().out
    assert run(monkeypatch, ["user", "token", "revoke", "nobody"]) == 2
    assert "no user 'nobody'" in capsys.readouterr().err

    assert run(monkeypatch, ["user", "add", "eve", "--password-stdin", "--api-token"],
               "a long password\n") == 0
    token = capsys.readouterr().out.split("API token (shown once): ", 1)[1].split()[0]
    now = datetime.now(UTC)
    with sessions.begin() as s:
        eve = s.scalar(select(User).where(User.name == "eve"))
        assert eve is not None
        session_token, _ = users.create_session(s, eve, now)
    assert run(monkeypatch, ["user", "disable", "eve"]) == 0
    out = capsys.readouterr()
    assert "1 session(s) ended, API token revoked" in out.out
    assert _events(out.err) == [("user_disabled", "eve")]
    with sessions() as s:
        assert users.session_for(s, session_token, now) is None
        assert users.user_for_api_token(s, token) is None
    assert users.check_password(sessions, "eve", "a long password", now) is None
    assert run(monkeypatch, ["user", "list"]) == 0
    assert "eve\teve\t\tdisabled\ttoken: none" in capsys.readouterr().out
    assert run(monkeypatch, ["user", "enable", "eve"]) == 0
    assert users.check_password(sessions, "eve", "a long password", now) is not None
    engine.dispose()


def test_user_email_sets_checks_and_clears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    monkeypatch.setenv("TRIAGE_DATABASE_URL", url)
    assert run(monkeypatch, ["user", "add", "kim", "--password-stdin", "--email",
                             "kim at itx"], "a long password\n") == 2
    assert "email: not one usable address" in capsys.readouterr().err
    assert run(monkeypatch, ["user", "add", "kim", "--password-stdin"], "a long password\n") == 0
    assert run(monkeypatch, ["user", "email", "kim", "Kim@itx.net, x@evil.example"]) == 2
    assert "not one usable address" in capsys.readouterr().err
    assert run(monkeypatch, ["user", "email", "kim", "kim@itx.net"]) == 0
    out = capsys.readouterr()
    assert "email of kim set to kim@itx.net" in out.out
    assert _events(out.err) == [("user_email_set", "kim")]
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        assert s.scalar(select(User.email).where(User.name == "kim")) == "kim@itx.net"
    assert run(monkeypatch, ["user", "email", "kim", ""]) == 0
    assert "cleared" in capsys.readouterr().out
    with make_sessionmaker(engine)() as s:
        assert s.scalar(select(User.email).where(User.name == "kim")) == ""
    assert run(monkeypatch, ["user", "email", "nobody", "a@itx.net"]) == 2
    engine.dispose()
