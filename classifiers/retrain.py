"""Staff corrections → training data → a candidate model that replaces the running one only
when it scores no worse on the held-out set.

The nightly job (``nightly``) exports the corrections table to ``corrections_dir`` as JSONL
in the training format, trains a candidate on the training data plus those corrections,
scores candidate and current model on ``data/heldout`` and installs the candidate into
``retrained_dir`` (never into the packaged ``classifiers/model/``, which may be read-only).
``classifiers.installed.best_model_path`` picks, at start-up, the retrained model when its
recorded held-out score is not worse than the packaged one's, so a restart keeps what the
night learned.

``classifiers`` never imports ``triage``: the two tables are read through lightweight
SQLAlchemy table clauses naming only the columns used (tests run the export against the
real migrated schema, so a renamed column fails there).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.utils import formataddr
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, column, select, table
from sqlalchemy.orm import Session, sessionmaker

from classifiers import artifact
from classifiers.artifact import ArtifactError
from classifiers.evaluate import PRIORITIES, jsonl_files, load_records
from classifiers.features import load_keywords
from classifiers.installed import MODEL_FILE, _checked_meta, _heldout_f1
from classifiers.predict import Classifier
from classifiers.scorer import scorer_path
from classifiers.train import (
    DEFAULT_HELDOUT,
    DEFAULT_TRAINING,
    Progress,
    data_hash,
    heldout_summary,
    keywords_hash,
    train,
    training_files,
)
from classifiers.types import LABELS, NOT_A_REQUEST

log = logging.getLogger(__name__)

EXPORT_FILE = "corrections.jsonl"
LOCK_FILE = ".retrain.lock"

# Trace and signature headers: kilobytes per message, and nothing the classifier reads.
_DROP_HEADERS = frozenset(
    {"received", "dkim-signature", "authentication-results", "received-spf", "x-received"}
)
_DROP_PREFIXES = ("arc-", "x-ms-exchange-", "x-google-", "x-forefront-", "x-microsoft-")

_corrections = table(
    "corrections",
    column("id"),
    column("work_order_id"),
    column("new_type"),
    column("new_priority"),
    column("at"),
)
_messages = table(
    "messages",
    column("id"),
    column("work_order_id"),
    column("disposition"),
    column("subject"),
    column("body_text"),
    column("from_name"),
    column("from_addr"),
    column("headers", JSON),
)


# --------------------------------------------------------------------------- export


def _headers(pairs: Any) -> dict[str, str]:
    """The stored ``[[name, value], ...]`` → the training format's mapping (first value wins)."""
    out: dict[str, str] = {}
    for pair in pairs if isinstance(pairs, list) else []:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            continue
        name, value = str(pair[0]), str(pair[1])
        low = name.lower()
        if low in _DROP_HEADERS or low.startswith(_DROP_PREFIXES):
            continue
        out.setdefault(name, value)
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_corrections(sessions: sessionmaker[Session], out_dir: Path) -> Path:
    """Write ``out_dir/corrections.jsonl``: one training record per corrected work order.

    The latest correction of a work order wins (by time, then id); the text is that of the
    message that opened it. Records are ordered by work order, so an unchanged table gives
    a byte-identical file and retraining can tell that nothing is new.
    """
    latest = select(
        _corrections.c.work_order_id,
        _corrections.c.new_type,
        _corrections.c.new_priority,
    ).order_by(_corrections.c.work_order_id, _corrections.c.at, _corrections.c.id)
    opening = (
        select(
            _messages.c.work_order_id,
            _messages.c.subject,
            _messages.c.body_text,
            _messages.c.from_name,
            _messages.c.from_addr,
            _messages.c.headers,
        )
        .where(_messages.c.disposition == "work_order")
        .where(_messages.c.work_order_id.in_(select(_corrections.c.work_order_id)))
        .order_by(_messages.c.work_order_id, _messages.c.id)
    )
    with sessions() as s:
        fixes: dict[int, tuple[str, str | None]] = {}
        for wo, new_type, new_priority in s.execute(latest):
            fixes[wo] = (new_type, new_priority)  # later rows overwrite earlier ones
        texts: dict[int, Any] = {}
        for row in s.execute(opening):
            texts.setdefault(row.work_order_id, row)

    lines: list[str] = []
    skipped = 0
    for wo in sorted(fixes):
        label, priority = fixes[wo]
        msg = texts.get(wo)
        if msg is None or label not in LABELS:
            skipped += 1
            log.warning(
                "correction of work order %s not exported: %s",
                wo,
                "no opening message" if msg is None else f"unknown type {label!r}",
            )
            continue
        record = {
            "subject": msg.subject or "",
            "body": msg.body_text or "",
            "from": formataddr((msg.from_name, msg.from_addr))
            if msg.from_name
            else (msg.from_addr or ""),
            "headers": _headers(msg.headers),
            "label": label,
            "priority": priority if label != NOT_A_REQUEST and priority in PRIORITIES else None,
            "work_order_id": wo,  # not read by training; says where a record came from
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    path = Path(out_dir) / EXPORT_FILE
    _atomic_write_text(path, "".join(lines))
    log.info("exported %d correction(s) to %s (%d skipped)", len(lines), path, skipped)
    return path


# --------------------------------------------------------------------------- retrain


@dataclass(frozen=True)
class RetrainResult:
    """What one retrain did. ``model_path`` is the model the service should run now: the
    installed candidate when ``swapped``, else the current model."""

    swapped: bool
    old_macro_f1: float | None
    new_macro_f1: float | None
    model_path: Path
    reason: str
    model_version: str | None = None  # the candidate's, when one was trained
    corrections: int = 0  # correction records the candidate was trained with
    seconds: float = 0.0


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """A non-blocking lock file: two processes sharing ``retrained_dir`` never train at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retrain(
    current_model_path: Path | None,
    retrained_dir: Path,
    heldout: Path | Sequence[Path] = DEFAULT_HELDOUT,
    *,
    corrections_dir: Path | None = None,
    training: Sequence[Path] | None = None,
    packaged_model_path: Path | None = None,
    keywords_path: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    **train_options: Any,
) -> RetrainResult:
    """Train a candidate on ``training`` (default data/training) plus ``corrections_dir`` and
    install it into ``retrained_dir`` only if its held-out macro-F1 is not below the current
    model's. Blocking (seconds of CPU): run it in a worker thread.

    Skipped without training when there are no corrections, or when the training data and
    keyword rules are byte-for-byte those the current model was trained on (``force``
    trains anyway). ``train_options`` go to ``classifiers.train.train`` (test_size, seed,
    model options).
    """
    started = time.perf_counter()
    retrained_dir = Path(retrained_dir)
    current_path = Path(current_model_path) if current_model_path else artifact.DEFAULT_MODEL_PATH
    packaged = Path(packaged_model_path) if packaged_model_path else artifact.DEFAULT_MODEL_PATH
    heldout_files = jsonl_files([heldout] if isinstance(heldout, str | Path) else heldout)
    data = list(training) if training else list(DEFAULT_TRAINING)
    fix_dirs = [Path(corrections_dir)] if corrections_dir is not None else []

    def result(swapped: bool, reason: str, **kw: Any) -> RetrainResult:
        kw.setdefault("old_macro_f1", None)
        kw.setdefault("new_macro_f1", None)
        log.info("retrain: %s", reason)
        return RetrainResult(
            swapped=swapped,
            reason=reason,
            model_path=kw.pop("model_path", current_path),
            seconds=round(time.perf_counter() - started, 2),
            **kw,
        )

    with _exclusive(retrained_dir / LOCK_FILE) as mine:
        if not mine:
            return result(False, "another retrain holds the lock")
        data_files, fix_files = training_files(data, fix_dirs)
        n_fixes = len(load_records(fix_files))
        current_meta = _checked_meta(current_path)
        if not force and n_fixes == 0:
            return result(False, "no corrections to learn from")
        if (
            not force
            and current_meta is not None
            and current_meta.get("training_data_sha256") == data_hash([*data_files, *fix_files])
            and current_meta.get("keywords_sha256") == keywords_hash(load_keywords(keywords_path))
        ):
            return result(
                False, "training data unchanged since the current model", corrections=n_fixes
            )

        # Score the current (and packaged) model first: their numbers go into the candidate's
        # metadata, so best_model_path can compare without loading anything.
        heldout_sha = data_hash(heldout_files)
        scores: dict[str, dict[str, Any]] = {}
        old_f1: float | None = None
        for role, path in (("current", current_path), ("packaged", packaged)):
            meta = _checked_meta(path)
            if meta is None:
                log.warning("retrain: %s model %s is missing or altered", role, path)
                continue
            sha = str(meta["artifact_sha256"])
            if sha not in scores:
                try:
                    clf = Classifier.load(path)
                except ArtifactError as exc:
                    log.warning("retrain: %s model %s unusable: %s", role, path, exc)
                    continue
                summary = heldout_summary(clf, heldout_files)
                scores[sha] = {
                    "model_version": clf.version,
                    "macro_f1": None if summary is None else float(summary["macro_f1"]),
                    "heldout_sha256": heldout_sha,
                }
            if role == "current":
                old_f1 = scores[sha]["macro_f1"]

        # A candidate folder left by a killed run (we hold the lock, so none is in use).
        for stale in retrained_dir.glob(".candidate-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(dir=retrained_dir, prefix=".candidate-"))
        try:
            candidate = work / MODEL_FILE
            meta = train(
                data,
                candidate,
                corrections=fix_dirs,
                heldout=heldout_files,
                keywords_path=keywords_path,
                progress=progress,
                **train_options,
            )
            try:  # what will be installed must load (allow-list, hash)
                Classifier.load(candidate)
            except ArtifactError as exc:
                return result(False, f"candidate unusable: {exc}", old_macro_f1=old_f1)
            new_f1 = _heldout_f1(meta, heldout_sha)
            common: dict[str, Any] = {
                "old_macro_f1": old_f1,
                "new_macro_f1": new_f1,
                "model_version": meta["model_version"],
                "corrections": n_fixes,
            }
            if new_f1 is None:
                return result(False, "no held-out records to score the candidate on", **common)
            if old_f1 is not None and new_f1 < old_f1:
                return result(
                    False,
                    f"candidate {meta['model_version']} held-out macro-F1 {new_f1:.4f} "
                    f"< current {old_f1:.4f}; kept the current model",
                    **common,
                )
            meta["retrain"] = {
                "replaced": str(current_path),
                "scores": scores,  # artifact sha256 → held-out score of the models compared
                "corrections": n_fixes,
            }
            # Same blob, so artifact_sha256 still holds; the metadata gains the comparison.
            _atomic_write_text(
                artifact.meta_path(candidate), json.dumps(meta, indent=2, sort_keys=True)
            )
            target = retrained_dir / MODEL_FILE
            # Model first, metadata last (as artifact.save does). A reader between the two
            # renames sees a hash mismatch and refuses the pair, never a wrong model.
            os.replace(candidate, target)
            if scorer_path(candidate).exists():
                os.replace(scorer_path(candidate), scorer_path(target))
            else:
                scorer_path(target).unlink(missing_ok=True)
            os.replace(artifact.meta_path(candidate), artifact.meta_path(target))
            was = "none" if old_f1 is None else f"{old_f1:.4f}"
            return result(
                True,
                f"installed {meta['model_version']}: held-out macro-F1 {new_f1:.4f} "
                f"(current {was})",
                model_path=target,
                **common,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)


def nightly(
    sessions: sessionmaker[Session],
    corrections_dir: Path,
    retrained_dir: Path,
    current_model_path: Path | None,
    heldout_dir: Path | Sequence[Path] = DEFAULT_HELDOUT,
    **retrain_options: Any,
) -> RetrainResult:
    """Export the corrections, then retrain. Synchronous; the caller swaps the running
    classifier for ``Classifier.load(result.model_path)`` when ``result.swapped``."""
    export_corrections(sessions, Path(corrections_dir))
    return retrain(
        current_model_path,
        retrained_dir,
        heldout_dir,
        corrections_dir=Path(corrections_dir),
        **retrain_options,
    )
