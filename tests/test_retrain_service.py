"""The nightly retrain wired into the daemon: a staff correction made through the desk
becomes training data, the job trains, and the running pipeline classifies with the new
model; the next start loads it too. (The retrain rules themselves: test_retrain.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from classifiers.retrain import MODEL_FILE
from tests.models import train_weak_model
from triage.config import Settings
from triage.service import Service
from triage.storage.models import WorkOrder
from triage.wiring import build

SCANNER = (b"From: Karen <karen@harborviewdental.com>\r\nTo: helpdesk@itx.net\r\n"
           b"Subject: Scanner to folder\r\nMessage-ID: <k1@harborviewdental.com>\r\n\r\n"
           b"Hi, can you set up scan-to-folder on the Brother MFC at the front desk so scans "
           b"land in the S: drive? Thanks, Karen\r\n")


@pytest.fixture(scope="module")
def weak_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for the packaged model; it has never seen a printer request."""
    return train_weak_model(tmp_path_factory.mktemp("weak"), ("password_reset", "email_problem"))


async def test_a_correction_retrains_and_swaps_the_running_model(tmp_path: Path,
                                                                weak_model: Path) -> None:
    inbox = tmp_path / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True)
    (inbox / "new" / "1.k.host").write_bytes(SCANNER)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 't.db'}",
                        mailbox_url=f"maildir://{inbox}", smtp_url=f"dir://{tmp_path / 'out'}",
                        attachments_dir=tmp_path / "att", model_path=weak_model,
                        corrections_dir=tmp_path / "corrections",
                        retrained_model_dir=tmp_path / "model")
    c = build(settings)
    try:
        assert c.model_path == weak_model
        svc = Service(settings, c)
        assert await svc.run_once() == 1
        with c.reads() as s:
            wo = s.scalar(select(WorkOrder))
            assert wo is not None and wo.number
            assert wo.request_type != "printer_setup"  # the weak model cannot know it
        c.desk.reclassify(wo.number, "bob", "printer_setup", "normal")

        old = c.ingest.model_version if c.ingest else None
        await svc.models.retrain()
        # The running ingestion (the ingest worker process here) classifies with the
        # retrained model now: it reports the new model's version.
        assert c.model_path == tmp_path / "model" / MODEL_FILE
        assert c.ingest is not None and c.ingest.model_version not in (None, old)
        assert all(p.runner.ingest is c.ingest for p in svc.pollers)
        assert (tmp_path / "corrections" / "corrections.jsonl").read_text().count("\n") == 1
    finally:
        c.close()

    # A restart prefers the retrained model (it scored better than the "packaged" one).
    again = build(settings)
    try:
        assert again.model_path == tmp_path / "model" / MODEL_FILE
    finally:
        again.close()


def test_the_training_process_leaves_no_process_behind_and_reports_its_failure() -> None:
    """The nightly job's child is a fresh interpreter that is gone when it answers; with
    multiprocessing a resource tracker would stay beside the daemon for good."""
    import os
    import subprocess
    import sys

    from triage.retrain_job import in_subprocess

    code = ("import os; from triage.retrain_job import in_subprocess\n"
            "assert in_subprocess(os.getpid) != os.getpid()\n"
            "me = f'/proc/{os.getpid()}/task'\n"
            "print(sum(len(open(f'{me}/{t}/children').read().split()) for t in os.listdir(me)))")
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    assert done.stdout.strip() == "0", done.stderr
    with pytest.raises(RuntimeError, match="FileNotFoundError"):
        in_subprocess(os.listdir, "/nonexistent/folder")
