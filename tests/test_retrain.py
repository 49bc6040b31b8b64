"""Corrections → training data → a retrained model that is installed only when it scores no
worse on the held-out set (classifiers.retrain), against a real migrated database.

Two real trainings in all (about 5–10 s each): one whose candidate is installed, one whose
candidate is made worse on purpose (staff "corrections" that relabel held-out texts wrongly).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from classifiers import artifact
from classifiers.evaluate import jsonl_files, load_records
from classifiers.installed import best_model_path
from classifiers.predict import Classifier
from classifiers.retrain import (
    EXPORT_FILE,
    LOCK_FILE,
    MODEL_FILE,
    _exclusive,
    export_corrections,
    nightly,
    retrain,
)
from classifiers.train import DEFAULT_HELDOUT, data_hash
from classifiers.types import EmailInput
from tests import factories
from tests.models import train_weak_model
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Correction, Message

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
_ids = itertools.count(1)

# Two requests the shipped model gets wrong (other / not_a_request), corrected by staff.
SCANNER = {
    "subject": "Scanner to folder",
    "body": "Hi, can you set up scan-to-folder on the Brother MFC at the front desk so scans "
    "land in the S: drive? Thanks, Karen",
    "label": "printer_setup",
}
WEBCAM = {
    "subject": "Teams camera",
    "body": "My webcam shows a black screen in Teams meetings since this morning. Laptop is a "
    "Dell Latitude. Thanks, Paul",
    "label": "other",
}


# --------------------------------------------------------------------------- rows


def _database(url: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(url)
    upgrade(engine)
    return engine, make_sessionmaker(engine)


def _message(wo_id: int | None, disposition: str, subject: str, body: str, **kw: Any) -> Message:
    n = next(_ids)
    return Message(
        dedupe_key=f"test-{n}",
        message_id=f"m{n}@test",
        content_hash=f"{n:064x}",
        size=len(body),
        subject=subject,
        body_text=body,
        disposition=disposition,
        work_order_id=wo_id,
        **kw,
    )


def add_work_order(
    sessions: sessionmaker[Session],
    subject: str,
    body: str,
    *,
    request_type: str = "other",
    priority: str = "normal",
    from_name: str = "Karen Lee",
    from_addr: str = "karen@harborviewdental.com",
    headers: list[list[str]] | None = None,
    opening: bool = True,
) -> int:
    """A work order and (unless ``opening`` is False) the message that opened it."""
    with sessions.begin() as s:
        wo = factories.add_work_order(
            s, T0, domain="harborviewdental.com", client_name="Harborview Dental",
            requester=from_addr, subject=subject, request_type=request_type,
            priority=priority, confidence=0.4)
        if opening:
            s.add(
                _message(
                    wo.id,
                    "work_order",
                    subject,
                    body,
                    from_name=from_name,
                    from_addr=from_addr,
                    headers=headers or [],
                )
            )
        return wo.id


def correct(
    sessions: sessionmaker[Session],
    wo_id: int,
    new_type: str,
    new_priority: str = "normal",
    at: datetime = T0,
    old_type: str = "other",
) -> None:
    with sessions.begin() as s:
        s.add(
            Correction(
                work_order_id=wo_id,
                actor="dana",
                old_type=old_type,
                new_type=new_type,
                old_priority="normal",
                new_priority=new_priority,
                at=at,
            )
        )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- export


def test_export_latest_correction_wins_and_text_is_the_opening_message(
    db_url: str, tmp_path: Path
) -> None:
    engine, sessions = _database(db_url)
    try:
        headers = [
            ["Received", "from mx.example by mx.itx.net"],
            ["X-Mailer", "Microsoft Outlook 16.0"],
            ["ARC-Seal", "i=1; a=rsa-sha256"],
            ["X-Mailer", "second value loses"],
        ]
        scanner = add_work_order(sessions, SCANNER["subject"], SCANNER["body"], headers=headers)
        with sessions.begin() as s:  # a later reply on the same work order: not the text
            s.add(_message(scanner, "reply", "Re: Scanner to folder", "any news?"))
        # Inserted out of time order: the latest by ``at`` wins, not the last row written.
        correct(sessions, scanner, "email_problem", "urgent", at=T0)
        correct(sessions, scanner, "printer_setup", "normal", at=T0 + timedelta(hours=2))
        correct(sessions, scanner, "software_install", "normal", at=T0 + timedelta(hours=1))

        spam = add_work_order(
            sessions, "You won", "Claim your prize", from_name="", from_addr="win@prize.example"
        )
        correct(sessions, spam, "not_a_request", "normal")
        add_work_order(sessions, "Uncorrected", "nothing to learn here")
        orphan = add_work_order(sessions, "No opening", "x", opening=False)
        correct(sessions, orphan, "other")

        out = tmp_path / "corrections"
        path = export_corrections(sessions, out)
        assert path == out / EXPORT_FILE
        rows = read_jsonl(path)
        assert [r["work_order_id"] for r in rows] == [scanner, spam]
        assert rows[0] == {
            "subject": SCANNER["subject"],
            "body": SCANNER["body"],
            "from": "Karen Lee <karen@harborviewdental.com>",
            "headers": {"X-Mailer": "Microsoft Outlook 16.0"},
            "label": "printer_setup",
            "priority": "normal",
            "work_order_id": scanner,
        }
        assert rows[1]["from"] == "win@prize.example"
        assert (rows[1]["label"], rows[1]["priority"]) == ("not_a_request", None)
        # Training reads it as it reads data/training.
        records = load_records([path])
        assert [r.label for r in records] == ["printer_setup", "not_a_request"]
        assert records[0].email.subject == SCANNER["subject"]

        # Same table, same bytes (retraining's "nothing new" check relies on it); no temp
        # files left beside the export.
        before = path.read_bytes()
        export_corrections(sessions, out)
        assert path.read_bytes() == before
        assert sorted(p.name for p in out.iterdir()) == [EXPORT_FILE]
    finally:
        engine.dispose()


def test_export_with_no_corrections_writes_an_empty_file(db_url: str, tmp_path: Path) -> None:
    engine, sessions = _database(db_url)
    try:
        add_work_order(sessions, "Printer offline", "the printer is offline")
        out = tmp_path / "corrections"
        out.mkdir()
        (out / EXPORT_FILE).write_text('{"stale": true}\n')
        path = export_corrections(sessions, out)
        assert path.read_bytes() == b""
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- retrain


@pytest.fixture(scope="module")
def weak_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_weak_model(tmp_path_factory.mktemp("weak"), ("password_reset", "printer_setup"))


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, made = _database(f"sqlite:///{tmp_path / 'triage.db'}")
    yield made
    engine.dispose()


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".candidate-"))


def test_nightly_installs_a_candidate_that_is_not_worse(
    sessions: sessionmaker[Session], weak_model: Path, tmp_path: Path
) -> None:
    for case in (SCANNER, WEBCAM):
        wo = add_work_order(sessions, case["subject"], case["body"])
        correct(sessions, wo, case["label"])
    fixes, target = tmp_path / "corrections", tmp_path / "model"

    result = nightly(sessions, fixes, target, weak_model, DEFAULT_HELDOUT)

    assert result.swapped, result.reason
    assert result.model_path == target / MODEL_FILE
    assert result.corrections == 2
    assert result.old_macro_f1 is not None and result.new_macro_f1 is not None
    assert result.new_macro_f1 > result.old_macro_f1
    assert _leftovers(target) == []
    # The installed model loads the normal way and has learned the corrections.
    clf = Classifier.load(result.model_path)
    assert clf.version == result.model_version
    for case in (SCANNER, WEBCAM):
        decision = clf.classify(
            EmailInput(
                subject=case["subject"], body=case["body"], sender="karen@harborviewdental.com"
            )
        )
        assert decision.label == case["label"]
    # Its metadata carries what best_model_path compares: its own held-out score, and the
    # scores of the models it was compared with (the packaged one among them).
    meta = clf.meta
    assert meta["metrics"]["heldout"]["macro_f1"] == result.new_macro_f1
    assert meta["metrics"]["heldout"]["data_sha256"] == data_hash(jsonl_files([DEFAULT_HELDOUT]))
    assert meta["n_corrections"] == 2
    packaged_sha = artifact.read_meta(artifact.DEFAULT_MODEL_PATH)["artifact_sha256"]
    assert packaged_sha in meta["retrain"]["scores"]

    # The next night with nothing new trains nothing and keeps the installed model.
    installed = result.model_path.read_bytes()
    again = nightly(sessions, fixes, target, result.model_path, DEFAULT_HELDOUT)
    assert not again.swapped
    assert "unchanged" in again.reason
    assert again.model_version is None  # no candidate was trained
    assert result.model_path.read_bytes() == installed


def test_retrain_keeps_the_current_model_when_the_candidate_is_worse(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Bad "corrections": 8 held-out texts of every type, each relabelled as the next type.
    heldout = sorted(DEFAULT_HELDOUT.glob("*.jsonl"))
    labels = [f.stem for f in heldout]
    for i, f in enumerate(heldout):
        wrong = labels[(i + 1) % len(labels)]
        for rec in read_jsonl(f)[:8]:
            wo = add_work_order(
                sessions, rec["subject"], rec["body"], from_name="", from_addr=rec["from"]
            )
            correct(sessions, wo, wrong)
    # The current model is a retrained one already installed in the target folder.
    target = tmp_path / "model"
    target.mkdir()
    for src in (artifact.DEFAULT_MODEL_PATH, artifact.meta_path(artifact.DEFAULT_MODEL_PATH)):
        shutil.copy(src, target / src.name)
    current = target / MODEL_FILE
    before = (current.read_bytes(), artifact.meta_path(current).read_bytes())
    (target / ".candidate-killed").mkdir()  # left by a run killed mid-training

    result = nightly(sessions, tmp_path / "corrections", target, current, DEFAULT_HELDOUT)

    assert not result.swapped, result.reason
    assert result.corrections == 8 * len(heldout)
    assert result.old_macro_f1 is not None and result.new_macro_f1 is not None
    assert result.new_macro_f1 < result.old_macro_f1
    assert result.model_path == current
    assert (current.read_bytes(), artifact.meta_path(current).read_bytes()) == before
    assert _leftovers(target) == []


def test_retrain_without_corrections_trains_nothing(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    target = tmp_path / "model"
    result = nightly(sessions, tmp_path / "corrections", target, None, DEFAULT_HELDOUT)
    assert not result.swapped
    assert result.reason == "no corrections to learn from"
    assert result.model_path == artifact.DEFAULT_MODEL_PATH
    assert not (target / MODEL_FILE).exists()


def test_a_second_retrain_on_the_same_folder_waits_its_turn(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with _exclusive(target / LOCK_FILE) as mine:
        assert mine
        result = retrain(None, target, DEFAULT_HELDOUT, corrections_dir=tmp_path, force=True)
    assert not result.swapped
    assert result.reason == "another retrain holds the lock"
    assert not (target / MODEL_FILE).exists()


# --------------------------------------------------------------------------- best_model_path

HELDOUT_SHA = "h" * 64


def _copy_model(
    dest: Path,
    *,
    heldout_f1: float | None = None,
    heldout_sha: str | None = HELDOUT_SHA,
    scores: dict[str, Any] | None = None,
) -> Path:
    """The packaged artifact copied to ``dest`` with chosen held-out numbers in its metadata
    (the model file is unchanged, so its hash still matches)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / MODEL_FILE
    shutil.copy(artifact.DEFAULT_MODEL_PATH, path)
    meta = artifact.read_meta(artifact.DEFAULT_MODEL_PATH)
    meta.setdefault("metrics", {}).pop("heldout", None)
    if heldout_f1 is not None:
        meta["metrics"]["heldout"] = {"macro_f1": heldout_f1, "data_sha256": heldout_sha}
    if scores is not None:
        meta["retrain"] = {"scores": scores}
    artifact.meta_path(path).write_text(json.dumps(meta), encoding="utf-8")
    return path


def test_best_model_path_prefers_the_retrained_model_when_not_worse(tmp_path: Path) -> None:
    packaged = _copy_model(tmp_path / "packaged", heldout_f1=0.94)
    retrained_dir = tmp_path / "var" / "model"
    assert best_model_path(packaged, retrained_dir) == packaged  # nothing retrained yet

    retrained = _copy_model(retrained_dir, heldout_f1=0.95)
    assert best_model_path(packaged, retrained_dir) == retrained
    _copy_model(retrained_dir, heldout_f1=0.94)
    assert best_model_path(packaged, retrained_dir) == retrained  # a tie keeps the night's work
    _copy_model(retrained_dir, heldout_f1=0.93)
    assert best_model_path(packaged, retrained_dir) == packaged
    # Scores on a different held-out set are not compared: the packaged model wins.
    _copy_model(retrained_dir, heldout_f1=0.99, heldout_sha="x" * 64)
    assert best_model_path(packaged, retrained_dir) == packaged
    # No score recorded at all.
    _copy_model(retrained_dir)
    assert best_model_path(packaged, retrained_dir) == packaged


def test_best_model_path_refuses_a_torn_or_altered_retrained_model(tmp_path: Path) -> None:
    packaged = _copy_model(tmp_path / "packaged", heldout_f1=0.90)
    retrained_dir = tmp_path / "model"
    retrained = _copy_model(retrained_dir, heldout_f1=0.99)
    assert best_model_path(packaged, retrained_dir) == retrained
    with open(retrained, "ab") as fh:  # e.g. read between the two renames of an install
        fh.write(b"\0")
    assert best_model_path(packaged, retrained_dir) == packaged
    artifact.meta_path(retrained).unlink()
    assert best_model_path(packaged, retrained_dir) == packaged


def test_best_model_path_uses_the_score_recorded_at_retrain_time(tmp_path: Path) -> None:
    """The shipped model.json has no held-out score; the retrain recorded one for it."""
    packaged = _copy_model(tmp_path / "packaged")  # no held-out score of its own
    sha = artifact.read_meta(packaged)["artifact_sha256"]
    retrained_dir = tmp_path / "model"
    seen = {"macro_f1": 0.95, "heldout_sha256": HELDOUT_SHA}
    retrained = _copy_model(retrained_dir, heldout_f1=0.96, scores={sha: seen})
    assert best_model_path(packaged, retrained_dir) == retrained
    _copy_model(retrained_dir, heldout_f1=0.94, scores={sha: seen})
    assert best_model_path(packaged, retrained_dir) == packaged
    # Recorded for some other artifact only: not comparable, so the packaged model.
    _copy_model(retrained_dir, heldout_f1=0.96, scores={"0" * 64: seen})
    assert best_model_path(packaged, retrained_dir) == packaged


def test_best_model_path_scores_the_packaged_model_when_asked(tmp_path: Path) -> None:
    """With ``heldout_dir`` and nothing recorded, the packaged model is scored on the spot."""
    packaged = _copy_model(tmp_path / "packaged")
    actual = Classifier.load(packaged)
    from classifiers.evaluate import evaluate

    files = jsonl_files([DEFAULT_HELDOUT])
    f1 = round(evaluate(actual, load_records(files)).macro_f1, 4)
    sha = data_hash(files)
    retrained_dir = tmp_path / "model"
    retrained = _copy_model(retrained_dir, heldout_f1=f1 + 0.001, heldout_sha=sha)
    assert best_model_path(packaged, retrained_dir) == packaged  # not comparable without it
    assert best_model_path(packaged, retrained_dir, DEFAULT_HELDOUT) == retrained
    _copy_model(retrained_dir, heldout_f1=f1 - 0.001, heldout_sha=sha)
    assert best_model_path(packaged, retrained_dir, DEFAULT_HELDOUT) == packaged


def test_best_model_path_falls_back_to_a_usable_retrained_model(tmp_path: Path) -> None:
    retrained_dir = tmp_path / "model"
    retrained = _copy_model(retrained_dir, heldout_f1=0.5)
    assert best_model_path(tmp_path / "gone" / MODEL_FILE, retrained_dir) == retrained
