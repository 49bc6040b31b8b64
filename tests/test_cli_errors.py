"""Every wrong setting an operator can type, through the real ``triage`` command: one line on
stderr naming the setting, exit 2 for bad configuration and 1 for a failure at run time,
never a traceback (that needs ``--debug``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, _pg_available
from tests.factories import free_port

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Ctx:
    """What a case may use: its own folder, and servers started only when it asks."""

    tmp: Path
    request: pytest.FixtureRequest

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def pg(self, user: str = "postgres", database: str = "postgres", port: int = 5432) -> str:
        reason = _pg_available()
        if reason:
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        host = PG_ADMIN_URL.split("@", 1)[1].split(":", 1)[0]
        return f"postgresql://{user}@{host}:{port}/{database}"

    def dovecot_without_starttls(self) -> dict[str, str]:
        d = self.request.getfixturevalue("dovecot_without_tls")
        return {"TRIAGE_MAILBOX_URL": f"imap://{d.user}@127.0.0.1:{d.port}/INBOX",
                "TRIAGE_MAILBOX_PASSWORD": d.password}


@dataclass
class Case:
    env: Callable[[Ctx], dict[str, str]]
    exit_code: int
    setting: str  # the name the line must carry
    says: str  # and what it must say
    args: Callable[[Ctx], list[str]] = lambda ctx: []
    command: tuple[str, ...] = ("run", "--once")


CASES: dict[str, Case] = {
    "database url garbage": Case(
        lambda c: {"TRIAGE_DATABASE_URL": "garbage"}, 2, "TRIAGE_DATABASE_URL",
        "not a database URL"),
    "postgresql refused": Case(
        lambda c: {"TRIAGE_DATABASE_URL": c.pg(port=free_port())}, 1, "TRIAGE_DATABASE_URL",
        "Connection refused"),
    "postgresql unknown role": Case(
        lambda c: {"TRIAGE_DATABASE_URL": c.pg(user="no_such_role_x")}, 1,
        "TRIAGE_DATABASE_URL", 'role "no_such_role_x" does not exist'),
    "postgresql missing database": Case(
        lambda c: {"TRIAGE_DATABASE_URL": c.pg(database="no_such_db_x")}, 1,
        "TRIAGE_DATABASE_URL", 'database "no_such_db_x" does not exist'),
    "mysql": Case(
        lambda c: {"TRIAGE_DATABASE_URL": "mysql://u:Secret-9@db.example.com/triage"}, 2,
        "TRIAGE_DATABASE_URL", "mysql is not supported"),
    "mailbox url without user": Case(
        lambda c: {"TRIAGE_MAILBOX_URL": "imaps://mail.example.com/INBOX"}, 2,
        "TRIAGE_MAILBOX_URL", "imaps://USER@mail.example.com/INBOX"),
    "plaintext imap to a remote host": Case(
        lambda c: {"TRIAGE_MAILBOX_URL": "imap+plain://helpdesk@mail.example.com/INBOX"}, 2,
        "TRIAGE_MAILBOX_URL", "loopback"),
    "pop3": Case(
        lambda c: {"TRIAGE_MAILBOX_URL": "pop3://helpdesk@mail.example.com/"}, 2,
        "TRIAGE_MAILBOX_URL", "unsupported mailbox URL scheme 'pop3'"),
    "batch size not a number": Case(
        lambda c: {"TRIAGE_BATCH_SIZE": "abc"}, 2, "TRIAGE_BATCH_SIZE", "valid integer"),
    "unknown toml key": Case(
        lambda c: {}, 2, "batchsize", "did you mean 'batch_size'",
        args=lambda c: ["--config", c.file("t.toml", "batchsize = 7\n")]),
    "toml value of the wrong type": Case(
        lambda c: {}, 2, "batch_size in", "valid integer",
        args=lambda c: ["--config", c.file("t.toml", 'batch_size = "many"\n')]),
    "missing config file": Case(
        lambda c: {}, 2, "--config", "not found",
        args=lambda c: ["--config", str(c.tmp / "absent.toml")]),
    "malformed toml": Case(
        lambda c: {}, 2, "--config", "not valid TOML",
        args=lambda c: ["--config", c.file("t.toml", "batch_size = \n[x\n")]),
    "plaintext smtp to a remote host": Case(
        lambda c: {"TRIAGE_SMTP_URL": "smtp+plain://mail.example.com"}, 2, "TRIAGE_SMTP_URL",
        "smtps://"),
    "sqlite in a missing folder": Case(
        lambda c: {"TRIAGE_DATABASE_URL": f"sqlite:///{c.tmp / 'no-such-dir' / 'x.db'}"}, 2,
        "TRIAGE_DATABASE_URL", "does not exist"),
    "log level": Case(
        lambda c: {"TRIAGE_LOG_LEVEL": "loud"}, 2, "TRIAGE_LOG_LEVEL", "DEBUG, INFO"),
    "missing policy file": Case(
        lambda c: {"TRIAGE_SLA_POLICY_PATH": str(c.tmp / "absent.toml")}, 2,
        "TRIAGE_SLA_POLICY_PATH", "does not exist"),
    "broken policy file": Case(
        lambda c: {"TRIAGE_SLA_POLICY_PATH": c.file("p.toml", "[calendar\n")}, 2,
        "TRIAGE_SLA_POLICY_PATH", "p.toml:1:"),
    "server without starttls behind imap://": Case(
        lambda c: c.dovecot_without_starttls(), 1, "TRIAGE_MAILBOX_URL", "imap+plain://"),
    "bad setting for another command": Case(
        lambda c: {"TRIAGE_DATABASE_URL": "garbage"}, 2, "TRIAGE_DATABASE_URL",
        "not a database URL", command=("db", "upgrade")),
}


def triage(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    # Anything a case leaves alone stays inside its folder.
    full |= {"TRIAGE_DATABASE_URL": f"sqlite:///{cwd / 'triage.db'}",
             "TRIAGE_MAILBOX_URL": f"maildir://{cwd / 'inbox'}",
             "TRIAGE_SMTP_URL": f"dir://{cwd / 'outbox'}",
             "TRIAGE_ATTACHMENTS_DIR": str(cwd / "att"), "TRIAGE_OPS_PORT": "0"} | env
    return subprocess.run([sys.executable, "-m", "triage", *args], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=120)


def _marks(name: str) -> list[pytest.MarkDecorator]:
    if "postgresql" in name:
        return [pytest.mark.postgres]
    return [pytest.mark.imap] if "starttls" in name else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in CASES])
def test_a_wrong_setting_is_one_line_naming_it(name: str, tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    case = CASES[name]
    ctx = Ctx(tmp_path, request)
    env = case.env(ctx)
    r = triage([*case.args(ctx), *case.command], env, tmp_path)
    assert r.returncode == case.exit_code, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    prog = " ".join(a for a in case.command if not a.startswith("-"))
    assert line.startswith(f"triage {prog}: error: "), line
    assert case.setting in line and case.says in line, line
    assert "Traceback" not in r.stderr + r.stdout
    assert "Secret-9" not in r.stderr + r.stdout
    for password in [v for k, v in env.items() if k.endswith("PASSWORD")]:
        assert password not in r.stderr + r.stdout


def test_a_missing_sqlite_folder_is_not_created(tmp_path: Path) -> None:
    folder = tmp_path / "no-such-dir"
    r = triage(["db", "upgrade"], {"TRIAGE_DATABASE_URL": f"sqlite:///{folder / 'x.db'}"},
               tmp_path)
    assert r.returncode == 2 and not folder.exists()


def test_debug_prints_the_traceback_too(tmp_path: Path) -> None:
    for args, env in ((["--debug", "run", "--once"], {"TRIAGE_BATCH_SIZE": "abc"}),
                      (["run", "--once"], {"TRIAGE_BATCH_SIZE": "abc",
                                           "TRIAGE_LOG_LEVEL": "DEBUG"})):
        r = triage(args, env, tmp_path)
        assert r.returncode == 2
        assert "Traceback" in r.stderr
        assert r.stderr.splitlines()[-1].startswith("triage run: error: TRIAGE_BATCH_SIZE")
