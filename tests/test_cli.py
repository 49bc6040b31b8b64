"""The command line as users run it: real subprocesses, real Dovecot and SMTP sink."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select

from tests.daemons import child_pids, wait_gone
from triage.storage.models import Client, WorkOrder

REPO = Path(__file__).resolve().parents[1]


def triage(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "triage", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd or REPO, timeout=timeout)


def test_demo_once_processes_the_sample_inbox(tmp_path: Path) -> None:
    var = tmp_path / "var"
    r = triage("demo", "--once", "--var", str(var))
    assert r.returncode == 0, r.stderr
    samples = sorted((REPO / "data" / "samples").glob("*.eml"))
    assert f"{len(samples)} sample messages seeded" in r.stdout
    engine = create_engine(f"sqlite:///{var / 'triage.db'}")
    with engine.connect() as c:
        wos = c.execute(select(WorkOrder.number, WorkOrder.requester)).all()
    engine.dispose()
    acks = sorted((var / "outbox").glob("*.eml"))
    assert len(wos) >= 12 and len(acks) == len(wos)
    ack = email.message_from_bytes(acks[0].read_bytes(), policy=email.policy.default)
    assert ack["Auto-Submitted"] == "auto-replied" and "[ITX-000001]" in ack["Subject"]
    # Every sample is accounted for: marked into the Triaged folder, none left waiting.
    assert not any((var / "inbox" / "new").iterdir())
    # A second run finds nothing new and sends nothing twice.
    r2 = triage("demo", "--once", "--var", str(var))
    assert r2.returncode == 0, r2.stderr
    assert sorted((var / "outbox").glob("*.eml")) == acks


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    r = triage("db", "upgrade", env={"TRIAGE_DATABASE_URL": url})
    assert r.returncode == 0, r.stderr
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"work_orders", "messages", "outbox", "fetches", "clients", "alembic_version"} <= tables


def test_client_set_records_contract(tmp_path: Path) -> None:
    env = {"TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    r = triage("client", "set", "Harborview.COM", "--contract", "24x7", env=env)
    assert r.returncode == 0, r.stderr
    bad = triage("client", "set", "not a domain", "--contract", "24x7", env=env)
    assert bad.returncode == 2 and "not a mail domain" in bad.stderr
    engine = create_engine(env["TRIAGE_DATABASE_URL"])
    with engine.connect() as c:
        assert c.execute(select(Client.domain, Client.contract)).all() == [
            ("harborview.com", "24x7")]
    engine.dispose()


def _env(dovecot, smtp_sink, tmp_path: Path) -> dict[str, str]:
    return {
        "TRIAGE_MAILBOX_URL": f"imap+plain://{dovecot.user}@127.0.0.1:{dovecot.port}/INBOX",
        "TRIAGE_MAILBOX_PASSWORD": dovecot.password,
        "TRIAGE_SMTP_URL": smtp_sink.url,
        "TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'triage.db'}",
        "TRIAGE_ATTACHMENTS_DIR": str(tmp_path / "att"),
        "TRIAGE_POLL_INTERVAL": "1",
        "TRIAGE_OUTBOX_INTERVAL": "0.5",
        "TRIAGE_OPS_PORT": "0",  # no fixed port in tests
    }


REQUEST = (b"From: Omar Haddad <omar@haddadlaw.com>\r\nTo: helpdesk@itx.net\r\n"
           b"Subject: Exchange not receiving mail\r\nMessage-ID: <q1@haddadlaw.com>\r\n"
           b"Date: Sat, 28 Nov 2026 02:00:00 -0500\r\n\r\n"
           b"Since last night nobody in the office receives any email, Outlook shows "
           b"nothing new and senders get bounces. Please help.\r\n")


@pytest.mark.imap
def test_run_once_with_environment_config_and_24x7_client(dovecot, smtp_sink,
                                                           tmp_path: Path) -> None:
    env = _env(dovecot, smtp_sink, tmp_path)
    assert triage("client", "set", "haddadlaw.com", "--contract", "24x7", env=env).returncode == 0
    dovecot.append(REQUEST)
    r = triage("run", "--once", env=env)
    assert r.returncode == 0, r.stderr
    engine = create_engine(env["TRIAGE_DATABASE_URL"])
    with engine.connect() as c:
        (wo,) = c.execute(select(WorkOrder)).all()
    engine.dispose()
    assert wo.request_type == "email_problem" and wo.contract == "24x7"
    # 24x7: the clock starts at receipt, on a Saturday; the callback is one hour later.
    assert (wo.callback_due - wo.clock_start).total_seconds() == 3600
    assert len(smtp_sink.received) == 1 and smtp_sink.received[0].rcpt_tos == (
        "omar@haddadlaw.com",)
    ack = email.message_from_bytes(smtp_sink.received[0].data, policy=email.policy.default)
    text = ack.get_body(("plain",)).get_content()
    # The work order's requester name and its one fulfil target reach the mail.
    assert text.startswith("Hello Omar,") and "(within 24 hours)." in text
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    assert dovecot.password not in r.stdout + r.stderr


def wait_until_catches(pid: int, sig: signal.Signals, timeout: float = 30.0) -> None:
    """Until process ``pid`` has a handler for ``sig`` (its ``SigCgt`` mask in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
        if caught & (1 << (sig - 1)):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not catch {sig.name} within {timeout} s")


@contextlib.contextmanager
def running_daemon(dovecot, smtp_sink, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``python -m triage run`` with the test servers; killed at the end if still running."""
    env = _env(dovecot, smtp_sink, tmp_path)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | env
    proc = subprocess.Popen([sys.executable, "-m", "triage", "run"], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.imap
def test_daemon_stops_cleanly_on_sigterm(dovecot, smtp_sink, tmp_path: Path) -> None:
    with running_daemon(dovecot, smtp_sink, tmp_path) as proc:
        dovecot.append(REQUEST)
        deadline = time.monotonic() + 60
        while not smtp_sink.received and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert len(smtp_sink.received) == 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "finishing the message in hand" in out and "stopped" in out


@pytest.mark.imap
@pytest.mark.parametrize("after", [0.3, 1.0, 2.0])
def test_a_stop_during_start_up_is_a_clean_exit(dovecot, smtp_sink, tmp_path: Path,
                                                after: float) -> None:
    """SIGTERM while the daemon imports, migrates or starts its ingest worker: exit 0, and
    no ingest worker left behind."""
    with running_daemon(dovecot, smtp_sink, tmp_path) as proc:
        # Before its first line runs, an interpreter dies of SIGTERM like any program; the
        # window that is ours starts when the handler is in place (under load, a second).
        wait_until_catches(proc.pid, signal.SIGTERM)
        time.sleep(after)
        children = child_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    wait_gone(children)


@pytest.mark.imap
def test_daemon_exits_non_zero_when_the_mailbox_refuses_login(dovecot, smtp_sink,
                                                              tmp_path: Path) -> None:
    env = _env(dovecot, smtp_sink, tmp_path) | {"TRIAGE_MAILBOX_PASSWORD": "wrong-Secret-42"}
    r = triage("run", env=env, timeout=60)
    assert r.returncode == 1
    assert "refuses us" in r.stdout
    assert "wrong-Secret-42" not in r.stdout + r.stderr
