"""``triage user add | list``: passwords from stdin (never argv), rules enforced, reset ends
sessions, API tokens printed once and usable."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from triage.cli import main
from triage.desk import users
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
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    with sessions.begin() as s:
        user = users.authenticate(s, "eve", "a long password", now).user
        assert user is not None and user.email == "eve@itx.net"
        users.create_session(s, user, now)
    assert run(monkeypatch, ["user", "add", "eve", "--reset", "--password-stdin",
                             "--api-token"], "another long pw\n") == 0
    out = capsys.readouterr().out
    token = out.split("API token (shown once): ", 1)[1].split()[0]
    with sessions.begin() as s:
        assert users.authenticate(s, "eve", "a long password", now).user is None
        assert users.authenticate(s, "eve", "another long pw", now).user is not None
        assert s.scalar(select(func.count()).select_from(WebSession)) == 0  # reset ended it
        found = users.user_for_api_token(s, token)
        assert found is not None and found.name == "eve"
        assert s.scalar(select(User.password_hash)).startswith("$argon2id$")
    assert run(monkeypatch, ["user", "list"]) == 0
    assert "eve\tEve E\teve@itx.net\tactive" in capsys.readouterr().out
    engine.dispose()
