"""The ingest worker process (triage.ingest.IngestWorker): what the daemon promises about it.

- A batch goes to the child and comes back committed, classified by the model it loaded.
- A child that dies is replaced; the batch it died on is stored once, message by message,
  and a message it dies on twice becomes a quarantine record with that reason (nothing
  lost, the mailbox not stalled).
- The child dies with the daemon (SIGKILL of the daemon leaves no orphan writing).
- Neither process of a running daemon imports scikit-learn; only the child maps numpy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from classifiers.artifact import DEFAULT_MODEL_PATH
from tests.daemons import child_pids, daemon_env, wait_gone
from triage.config import Settings
from triage.ingest import IngestWorker, IngestWorkerError
from triage.messages import RawMessage
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Message, WorkOrder

REPO = Path(__file__).resolve().parent.parent

# Loaded by the worker's interpreter (the only one started with this PYTHONPATH): the child
# exits at once, as an out-of-memory kill would end it, on a batch with a body with "POISON".
POISON_HOOK = '''
import os
import triage.ingest as ing

handle = ing._Child.handle


def poisoned(self, request):
    if isinstance(request, ing.StoreBatch) and any(b"POISON" in (r.data or b"")
                                                   for r in request.batch):
        os._exit(9)
    return handle(self, request)


ing._Child.handle = poisoned
'''


def mail(i: int, body: str = "Our website is down and shows a 503 error.") -> bytes:
    return (f"From: User {i} <user{i}@client{i}.test>\r\nTo: helpdesk@itx.net\r\n"
            f"Subject: Website down {i}\r\nMessage-ID: <w{i}@worker.test>\r\n\r\n"
            f"{body} (ref {i})\r\n").encode()


def raw(i: int, data: bytes) -> RawMessage:
    return RawMessage("worker-test", 1, str(i), len(data), data)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return Settings(database_url=url, attachments_dir=tmp_path / "att")


@pytest.fixture
def worker(settings: Settings) -> Iterator[IngestWorker]:
    w = IngestWorker(settings, DEFAULT_MODEL_PATH)
    w.start()
    yield w
    w.close()


def stored(settings: Settings) -> tuple[list[str], list[tuple[str, str | None]]]:
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            types = list(s.scalars(select(WorkOrder.request_type).order_by(WorkOrder.id)))
            msgs = [(m.disposition, m.reason) for m in s.scalars(select(Message)
                                                                 .order_by(Message.id))]
        return types, msgs
    finally:
        engine.dispose()


def test_a_batch_is_classified_and_committed_by_the_child(worker: IngestWorker,
                                                          settings: Settings) -> None:
    worker.wait_ready()
    assert worker.model_version and worker.pid and worker.pid != os.getpid()
    outcomes = worker.store([raw(i, mail(i)) for i in range(3)])
    assert [o.disposition for o in outcomes] == ["work_order"] * 3
    assert all(o.acked for o in outcomes)
    assert stored(settings)[0] == ["website_down"] * 3
    # The same batch again (a crash before the mailbox was marked): nothing twice.
    assert [o.disposition for o in worker.store([raw(i, mail(i)) for i in range(3)])] == \
        ["already"] * 3


def test_a_killed_child_is_replaced_and_nothing_is_lost(worker: IngestWorker,
                                                        settings: Settings) -> None:
    worker.wait_ready()
    first = worker.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    outcomes = worker.store([raw(i, mail(i)) for i in range(4)])
    assert worker.pid != first and worker.restarts == 1
    assert [o.disposition for o in outcomes] == ["work_order"] * 4
    assert len(stored(settings)[0]) == 4


def test_a_replacement_that_fails_to_start_is_retried_on_the_next_batch(
        worker: IngestWorker, settings: Settings, tmp_path: Path) -> None:
    """A child that dies and whose replacement cannot start (its model file mid-install,
    say) fails that batch; the next batch starts a fresh child rather than finding the
    failed one's closed socket for ever, which would stall the mailbox in a live daemon."""
    worker.wait_ready()
    first = worker.pid
    assert first is not None
    good = worker.model_path
    worker.model_path = tmp_path / "half-installed.skops"
    worker.model_path.write_bytes(b"not a model")
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(IngestWorkerError):
        worker.store([raw(1, mail(1))])
    assert stored(settings)[0] == []  # nothing stored, so the batch stays unmarked
    worker.model_path = good
    outcomes = worker.store([raw(i, mail(i)) for i in range(1, 3)])
    assert [o.disposition for o in outcomes] == ["work_order"] * 2
    assert worker.pid not in (None, first)
    assert stored(settings)[0] == ["website_down"] * 2


def test_a_message_the_child_dies_on_twice_is_quarantined(settings: Settings,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(POISON_HOOK)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    w = IngestWorker(settings, DEFAULT_MODEL_PATH)
    w.start()
    try:
        batch = [raw(1, mail(1)), raw(2, mail(2, "POISON in the body")), raw(3, mail(3))]
        outcomes = w.store(batch)
    finally:
        w.close()
    assert [o.disposition for o in outcomes] == ["work_order", "quarantined", "work_order"]
    assert "died on this message twice" in (outcomes[1].reason or "")
    assert w.restarts == 2  # it died on the batch, then on the poison message alone
    types, msgs = stored(settings)
    assert types == ["website_down", "website_down"]
    assert sorted(d for d, _ in msgs) == ["quarantined", "work_order", "work_order"]


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.imap
def test_the_daemon_is_two_processes_without_scikit_learn_and_the_child_dies_with_it(
        dovecot, smtp_sink, tmp_path: Path) -> None:
    env = daemon_env(dovecot, smtp_sink, f"sqlite:///{tmp_path / 'd.db'}", tmp_path)
    dovecot.deliver_files([mail(i) for i in range(3)])
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "triage", "run"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while len(smtp_sink.received) < 3:
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no acknowledgments"
            time.sleep(0.2)
        (child,) = child_pids(proc.pid)
        parent_maps, child_maps = _maps(proc.pid), _maps(child)
        assert "sklearn" not in parent_maps and "sklearn" not in child_maps
        assert "numpy" not in parent_maps  # the model lives in the child alone
        assert "numpy" in child_maps
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_gone([child])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
