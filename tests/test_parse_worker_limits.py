"""The ingest worker's hard limits (issue 14 item 2), through the real child process: a
message that needs more memory than TRIAGE_INGEST_MEMORY_LIMIT, or more CPU than
TRIAGE_INGEST_CPU_BUDGET, ends the child, is quarantined by the retry path with a reason
naming the limit, and the messages around it are stored."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from sqlalchemy import select

from classifiers.artifact import DEFAULT_MODEL_PATH
from triage.config import Settings
from triage.ingest import IngestWorker
from triage.messages import RawMessage
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Message

# Loaded by the worker's interpreter only (PYTHONPATH): parsing a message whose body says
# SPIN never ends, as a parser surprise in C code would not.
SPIN_HOOK = '''
import triage.ingest as ing

_parse = ing.parse


def spinning(data):
    if b"SPIN" in data:
        while True:
            pass
    return _parse(data)


ing.parse = spinning
'''


def mail(i: int, body: str = "Our website is down and shows a 503 error.") -> bytes:
    return (f"From: User {i} <user{i}@client{i}.test>\r\nTo: helpdesk@itx.net\r\n"
            f"Subject: Website down {i}\r\nMessage-ID: <l{i}@limits.test>\r\n\r\n"
            f"{body} (ref {i})\r\n").encode()


def big_mail(i: int, megabytes: int) -> bytes:
    """A real message whose parse needs several times its size (raw, skeleton, payload)."""
    payload = base64.encodebytes(b"\x01" * (megabytes * 2**20)).replace(b"\n", b"\r\n")
    return (f"From: Scan <scan{i}@client{i}.test>\r\nTo: helpdesk@itx.net\r\n"
            f"Subject: scan {i}\r\nMessage-ID: <l{i}@limits.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
            "Content-Type: text/plain\r\n\r\nThe printer does not print, scan attached.\r\n"
            "--B\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="scan.pdf"\r\n\r\n').encode() + (
        payload + b"--B--\r\n")


def raw(i: int, data: bytes) -> RawMessage:
    return RawMessage("limits-test", 1, str(i), len(data), data)


def make_settings(tmp_path: Path, **limits: float) -> Settings:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return Settings(database_url=url, attachments_dir=tmp_path / "att", **limits)


def dispositions(settings: Settings) -> list[tuple[str, str | None]]:
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            return [(m.disposition, m.reason)
                    for m in s.scalars(select(Message).order_by(Message.id))]
    finally:
        engine.dispose()


def store(settings: Settings, batch: list[RawMessage]) -> tuple[list[str], list[str | None],
                                                               int]:
    w = IngestWorker(settings, DEFAULT_MODEL_PATH)
    w.start()
    try:
        outcomes = w.store(batch)
    finally:
        w.close()
    return [o.disposition for o in outcomes], [o.reason for o in outcomes], w.restarts


def test_a_message_over_the_memory_limit_ends_the_worker_and_is_quarantined(
        tmp_path: Path) -> None:
    """The loaded child maps about 210 MB; 400 MiB leaves too little for a 60 MB message
    (its parse holds the raw bytes, their copy without the base64 body, and the payload)."""
    settings = make_settings(tmp_path, ingest_memory_limit=400 * 2**20)
    batch = [raw(1, mail(1)), raw(2, big_mail(2, 45)), raw(3, mail(3))]
    got, reasons, restarts = store(settings, batch)
    assert got == ["work_order", "quarantined", "work_order"], reasons
    assert "died on this message twice" in (reasons[1] or "")
    assert "memory limit (TRIAGE_INGEST_MEMORY_LIMIT)" in (reasons[1] or "")
    assert restarts == 2  # on the batch, then on that message alone
    assert sorted(d for d, _ in dispositions(settings)) == [
        "quarantined", "work_order", "work_order"]


def test_the_same_message_is_stored_without_the_limit(tmp_path: Path) -> None:
    """The control: what the limit refused is an ordinary message, not a broken one."""
    settings = make_settings(tmp_path, ingest_memory_limit=0)
    got, reasons, restarts = store(settings, [raw(2, big_mail(2, 45))])
    assert got == ["work_order"] and restarts == 0, reasons


def test_a_message_over_the_cpu_budget_ends_the_worker_and_is_quarantined(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SPIN_HOOK)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    settings = make_settings(tmp_path, ingest_cpu_budget=1.0)
    batch = [raw(1, mail(1)), raw(2, mail(2, "SPIN")), raw(3, mail(3))]
    got, reasons, restarts = store(settings, batch)
    assert got == ["work_order", "quarantined", "work_order"], reasons
    assert "CPU budget per message (TRIAGE_INGEST_CPU_BUDGET)" in (reasons[1] or "")
    assert restarts == 2
    assert [r for d, r in dispositions(settings) if d == "quarantined"] == [reasons[1]]
