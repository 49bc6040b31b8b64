"""``triage check`` as an operator runs it: the real CLI against the real Dovecot, aiosmtpd
(STARTTLS with AUTH), SQLite and PostgreSQL; a good configuration and broken ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from tests.factories import free_port
from tests.smtpsink import SINK_PASSWORD, SINK_USER
from triage.storage.engine import make_engine
from triage.storage.migrate import upgrade

REPO = Path(__file__).resolve().parents[1]
REQUEST = (b"From: Dana Whitfield <dana@harborviewdental.com>\r\nTo: helpdesk@itx.net\r\n"
           b"Subject: Locked out\r\nMessage-ID: <c1@harborviewdental.com>\r\n\r\n"
           b"I am locked out of my account, please reset my password.\r\n")


def check(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | env
    return subprocess.run([sys.executable, "-m", "triage", *args, "check"], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=180)


def lines(r: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``{check name: its whole line}``; every stdout line is one check."""
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        status, _, rest = line.partition(" ")
        assert status in ("ok", "FAIL"), line
        out[rest.strip().split(":", 1)[0]] = line
    return out


@pytest.fixture
def good(dovecot, smtp_sink_starttls, db_url: str, tmp_path: Path) -> dict[str, str]:
    """Settings that work: Dovecot (loopback plain IMAP), the sink with STARTTLS and AUTH
    (trusted through SSL_CERT_FILE, as an operator would add a private CA), a migrated
    database on each backend."""
    engine = make_engine(db_url)
    upgrade(engine)
    engine.dispose()
    return {
        "TRIAGE_MAILBOX_URL": f"imap+plain://{dovecot.user}@127.0.0.1:{dovecot.port}/INBOX",
        "TRIAGE_MAILBOX_PASSWORD": dovecot.password,
        "TRIAGE_SMTP_URL": f"smtp://localhost:{smtp_sink_starttls.port}",
        "TRIAGE_SMTP_USER": SINK_USER,
        "TRIAGE_SMTP_PASSWORD": SINK_PASSWORD,
        "SSL_CERT_FILE": str(smtp_sink_starttls.cert.cert),
        "TRIAGE_DATABASE_URL": db_url,
    }


@pytest.mark.imap
def test_a_good_configuration_passes_every_check(good, dovecot, smtp_sink_starttls,
                                                 tmp_path: Path) -> None:
    dovecot.append(REQUEST)
    r = check(good, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    got = lines(r)
    assert list(got) == ["settings", "policy", "templates", "model", "database",
                         "mailbox helpdesk", "smtp"]
    assert all(line.startswith("ok ") for line in got.values()), r.stdout
    assert "(the newest)" in got["database"]
    mailbox = got["mailbox helpdesk"]
    assert "IDLE yes" in mailbox and "MOVE yes" in mailbox and "UIDPLUS yes" in mailbox
    assert "1 message waiting" in mailbox
    assert "STARTTLS ok" in got["smtp"] and f"AUTH ok as {SINK_USER}" in got["smtp"]
    # It looked and changed nothing: the message is still waiting, nothing was sent.
    assert smtp_sink_starttls.received == []
    assert "1 message waiting" in lines(check(good, tmp_path))["mailbox helpdesk"]
    for secret in (dovecot.password, SINK_PASSWORD):
        assert secret not in r.stdout + r.stderr


def _one_failure(r: subprocess.CompletedProcess[str], name: str, *says: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    got = lines(r)
    failed = [k for k, v in got.items() if v.startswith("FAIL")]
    assert failed == [name], r.stdout
    assert all(s in got[name] for s in says), got[name]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.imap
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_wrong_mailbox_password(good, tmp_path: Path) -> None:
    r = check(good | {"TRIAGE_MAILBOX_PASSWORD": "wrong-Secret-42"}, tmp_path)
    _one_failure(r, "mailbox helpdesk", "TRIAGE_MAILBOX_PASSWORD", "login refused")
    assert "wrong-Secret-42" not in r.stdout + r.stderr


@pytest.mark.imap
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_missing_folder(good, dovecot, tmp_path: Path) -> None:
    url = f"imap+plain://{dovecot.user}@127.0.0.1:{dovecot.port}/NoSuchFolder"
    r = check(good | {"TRIAGE_MAILBOX_URL": url}, tmp_path)
    _one_failure(r, "mailbox helpdesk", "TRIAGE_MAILBOX_URL", "cannot select folder")


@pytest.mark.imap
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_smtp_down(good, tmp_path: Path) -> None:
    r = check(good | {"TRIAGE_SMTP_URL": f"smtp://localhost:{free_port()}"}, tmp_path)
    _one_failure(r, "smtp", "TRIAGE_SMTP_URL", "connect failed")


@pytest.mark.imap
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_wrong_smtp_password(good, tmp_path: Path) -> None:
    r = check(good | {"TRIAGE_SMTP_PASSWORD": "wrong-Secret-43"}, tmp_path)
    _one_failure(r, "smtp", "TRIAGE_SMTP_PASSWORD", "auth failed")
    assert "wrong-Secret-43" not in r.stdout + r.stderr


@pytest.mark.imap
def test_a_database_at_an_old_schema(good, db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    with engine.begin() as conn:  # back to 0005, as a database left by the previous release
        from alembic import command

        from triage.storage.migrate import alembic_config

        cfg = alembic_config(db_url)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    engine.dispose()
    r = check(good, tmp_path)
    _one_failure(r, "database", "TRIAGE_DATABASE_URL", "schema 0005", "triage db upgrade")


def test_a_missing_sqlite_database_is_reported_not_created(tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    inbox = tmp_path / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True)
    env = {"TRIAGE_DATABASE_URL": f"sqlite:///{db}", "TRIAGE_MAILBOX_URL": f"maildir://{inbox}",
           "TRIAGE_SMTP_URL": f"dir://{tmp_path / 'outbox'}"}
    r = check(env, tmp_path)
    _one_failure(r, "database", "does not exist yet", "triage db upgrade")
    assert not db.exists() and not (tmp_path / "outbox").exists()
    # The same folder after `triage db upgrade`: everything passes.
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | env
    subprocess.run([sys.executable, "-m", "triage", "db", "upgrade"], env=full, cwd=tmp_path,
                   check=True, capture_output=True, timeout=120)
    engine = create_engine(env["TRIAGE_DATABASE_URL"])
    assert "work_orders" in inspect(engine).get_table_names()
    engine.dispose()
    r = check(env, tmp_path)
    assert r.returncode == 0, r.stdout
    assert "a Maildir, 0 messages waiting" in lines(r)["mailbox helpdesk"]


def test_wrong_settings_stop_the_check_with_exit_2(tmp_path: Path) -> None:
    r = check({"TRIAGE_BATCH_SIZE": "abc"}, tmp_path)
    assert r.returncode == 2
    assert r.stdout.splitlines() == [
        "FAIL  settings: TRIAGE_BATCH_SIZE: 'abc': input should be a valid integer, unable to "
        "parse string as an integer: fix the value"]
