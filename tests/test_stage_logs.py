"""Per-stage log events (issue 6): every message leaves one structured event per stage, with
its ids (mailbox, UID, work-order number, outbox row) and never its subject, body or
addresses. Real Maildir, real SQLite, the real classifier, acknowledgments to a folder."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from classifiers.predict import Classifier
from triage.config import Settings
from triage.logs import JsonFormatter
from triage.mailbox.maildir import MaildirMailbox
from triage.smtp import DirectoryTransport
from triage.wiring import build

SECRETS = ("SUBJECTMARK", "BODYMARK", "dana", "harborview", "news@", "hostingdeals")
MAILS = {
    "1.a.host": (b"From: Dana Whitfield <dana@harborview.com>\r\nTo: helpdesk@itx.net\r\n"
                 b"Subject: SUBJECTMARK locked out of my email\r\nMessage-ID: <s1@harborview.com>"
                 b"\r\n\r\nBODYMARK I typed my password wrong and now my account is locked. "
                 b"Please reset my password.\r\n"),
    "2.b.host": (b"From: news@hostingdeals.example\r\nTo: helpdesk@itx.net\r\n"
                 b"Subject: SUBJECTMARK 50% off\r\nPrecedence: bulk\r\n"
                 b"List-Id: <deals.hostingdeals.example>\r\n\r\nBODYMARK big savings\r\n"),
}


@pytest.fixture
def records() -> Iterator[io.StringIO]:
    """The triage loggers at DEBUG, written as the daemon writes them (JSON lines)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("triage")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old)


async def test_each_stage_is_one_event_with_ids_and_no_content(
        tmp_path: Path, records: io.StringIO) -> None:
    inbox = tmp_path / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True)
    for name, data in MAILS.items():
        (inbox / "new" / name).write_bytes(data)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 's.db'}",
                        mailbox_url=f"maildir://{inbox}", attachments_dir=tmp_path / "att",
                        outbox_retry_base=0.0)  # type: ignore[arg-type]
    c = build(settings, classifier=Classifier.load(), mailbox=MaildirMailbox(inbox),
              transport=DirectoryTransport(tmp_path / "out"))
    async with c.transport:
        await c.runner.mailbox.connect()
        assert await c.runner.process_waiting(send=True) == 2  # sends while it ingests
        await c.runner.mailbox.close()
    c.engine.dispose()

    lines = records.getvalue().splitlines()
    for line in lines:
        for secret in SECRETS:
            assert secret not in line, f"{secret!r} leaked into a log line: {line}"
    events = [e for e in map(json.loads, lines) if "event" in e]
    by_uid: dict[str, list[str]] = {}
    for e in events:
        if "uid" in e:
            assert e["mailbox"] == c.runner.mailbox.name
            by_uid.setdefault(e["uid"], []).append(e["event"])
    assert sorted(by_uid) == ["1.a.host", "2.b.host"]
    assert by_uid["1.a.host"] == ["fetched", "parsed", "classified", "stored", "queued",
                                  "marked"]
    assert by_uid["2.b.host"] == ["fetched", "parsed", "classified", "stored", "marked"]

    stored = {e["uid"]: e for e in events if e["event"] == "stored"}
    assert stored["1.a.host"]["level"] == "info"
    assert (stored["1.a.host"]["disposition"], stored["1.a.host"]["work_order"]) == (
        "work_order", "ITX-000001")
    assert stored["2.b.host"]["disposition"] == "non_request"
    queued = next(e for e in events if e["event"] == "queued")
    assert queued["work_order"] == "ITX-000001" and queued["level"] == "debug"
    (sent,) = [e for e in events if e["event"] == "sent"]
    assert (sent["level"], sent["work_order"], sent["kind"]) == ("info", "ITX-000001", "ack")
    assert isinstance(sent["outbox"], int)
    assert len(list((tmp_path / "out").glob("*.eml"))) == 1


def test_extra_fields_become_json_keys_and_cannot_replace_the_envelope() -> None:
    record = logging.LogRecord("triage.x", logging.INFO, __file__, 1, "stored uid=%s", ("7",),
                               None)
    record.__dict__.update({"event": "stored", "uid": "7", "level": "forged", "ts": 0})
    out = json.loads(JsonFormatter().format(record))
    assert out["msg"] == "stored uid=7" and out["event"] == "stored" and out["uid"] == "7"
    assert out["level"] == "info" and out["ts"] != 0
    assert set(out) == {"ts", "level", "logger", "msg", "event", "uid"}
