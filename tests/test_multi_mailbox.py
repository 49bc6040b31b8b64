"""Several mailboxes in one configuration (a brand or tenant each): one process reads all of
them, each with its own lease, poll loop and metrics label; work orders and acknowledgments
share one database and one outbox."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from classifiers.predict import Classifier
from triage.config import Settings
from triage.service import Service
from triage.storage.models import Fetch, WorkOrder
from triage.wiring import build


def deliver(inbox: Path, name: str, frm: str, subject: str) -> None:
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    data = (f"From: {frm}\r\nTo: helpdesk@itx.net\r\nSubject: {subject}\r\n"
            f"Message-ID: <{name}@example.com>\r\n\r\nOutlook cannot send email since this "
            "morning, please help.\r\n").encode()
    (inbox / "new" / f"{name}.host").write_bytes(data)


def settings_for(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'm.db'}",
        mailboxes=[{"id": "brand-a", "url": f"maildir://{tmp_path / 'a'}"},
                   {"id": "brand-b", "url": f"maildir://{tmp_path / 'b'}"}],
        smtp_url=f"dir://{tmp_path / 'out'}", attachments_dir=tmp_path / "att",
        poll_interval=0.1, outbox_interval=0.1, use_idle=False,
    )


def count(c, model, *where) -> int:
    with c.reads() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


async def test_run_once_reads_every_mailbox(tmp_path: Path, classifier: Classifier) -> None:
    deliver(tmp_path / "a", "a1", "dana@harborview.com", "email down")
    deliver(tmp_path / "b", "b1", "rick@palmertrucking.com", "email down")
    settings = settings_for(tmp_path)
    c = build(settings, classifier=classifier)
    assert [cfg.id for cfg, _ in c.runners] == ["brand-a", "brand-b"]
    n = await Service(settings, c).run_once()
    assert n == 2
    assert count(c, WorkOrder) == 2
    with c.reads() as s:
        keys = {m for (m,) in s.execute(select(Fetch.mailbox))}
    assert len(keys) == 2  # fetch keys are per mailbox
    assert len(list((tmp_path / "out").glob("*.eml"))) == 2
    c.engine.dispose()


async def test_daemon_polls_both_and_labels_metrics(tmp_path: Path,
                                                    classifier: Classifier) -> None:
    settings = settings_for(tmp_path)
    for box in ("a", "b"):
        for sub in ("new", "cur", "tmp"):
            (tmp_path / box / sub).mkdir(parents=True, exist_ok=True)
    c = build(settings, classifier=classifier)
    svc = Service(settings, c)
    task = asyncio.create_task(svc.run())
    try:
        deliver(tmp_path / "b", "b2", "rick@palmertrucking.com", "email down")
        deliver(tmp_path / "a", "a2", "dana@harborview.com", "email down")
        async with asyncio.timeout(20):
            while count(c, WorkOrder) < 2:
                await asyncio.sleep(0.05)
        # A poll is counted when it ends, a moment after its work order is committed.
        series = [f'triage_mailbox_last_success_timestamp_seconds{{mailbox="{m}"}}'
                  for m in ("brand-a", "brand-b")]
        async with asyncio.timeout(20):
            while not all(x in c.metrics.exposition()[0].decode() for x in series):
                await asyncio.sleep(0.05)
        await svc._check_mailbox()  # ready: both connected and fresh
    finally:
        svc.should_exit.set()
        await asyncio.wait_for(task, 30)
    c.engine.dispose()


def test_mailbox_ids_and_urls_must_be_distinct(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="given twice"):
        Settings(mailboxes=[{"id": "x", "url": f"maildir://{tmp_path}/a"},
                            {"id": "x", "url": f"maildir://{tmp_path}/b"}])
    with pytest.raises(ValidationError, match="given twice"):
        Settings(mailboxes=[{"id": "x", "url": f"maildir://{tmp_path}/a"},
                            {"id": "y", "url": f"maildir://{tmp_path}/a"}])
    with pytest.raises(ValidationError):
        Settings(mailboxes=[{"id": "bad id!", "url": f"maildir://{tmp_path}/a"}])


async def test_the_mailboxes_send_through_one_sender(tmp_path: Path,
                                                     classifier: Classifier) -> None:
    """One outbox and one transport: every mailbox's runner sweeps through the process's one
    sender, so it never runs a second sweep beside one in hand (nor past its
    transport pause), and what it left is sent by the next sweep."""
    deliver(tmp_path / "b", "b3", "rick@palmertrucking.com", "email down")
    settings = settings_for(tmp_path)
    c = build(settings, classifier=classifier)
    (_, a), (_, b) = c.runners
    assert b.sender is a.sender
    out = tmp_path / "out"
    async with c.transport:
        await b.mailbox.connect()
        try:
            async with a.sender.sweep_lock:  # a sweep of brand-a's in hand
                assert await b.process_waiting(send=True) == 1
                assert list(out.glob("*.eml")) == []  # no second sweep beside it
                assert b.outbox_wakeup.is_set()  # the poll's own sweep will follow
            assert await a.sender.drain() == (1, 0)
        finally:
            await b.mailbox.close()
    assert len(list(out.glob("*.eml"))) == 1
    c.engine.dispose()
