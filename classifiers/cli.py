"""``triage train | evaluate | classify`` handlers; the parser lives in ``triage/cli.py``.

Each handler takes the parsed ``argparse.Namespace`` and returns an exit code. Output for
people goes to stdout/stderr here (this is the command line, not library code).
"""

from __future__ import annotations

import argparse
import dataclasses
import email
import email.policy
import json
import logging
import sys
from pathlib import Path
from typing import Any

from classifiers.artifact import ArtifactError
from classifiers.types import EmailInput

log = logging.getLogger(__name__)

MAX_EML_BYTES = 25 * 1024 * 1024


def _err(msg: str) -> None:
    sys.stderr.write(f"triage: {msg}\n")


def cmd_train(ns: argparse.Namespace) -> int:
    from classifiers.train import DEFAULT_HELDOUT, train
    from triage.config import load_settings

    quiet = bool(getattr(ns, "quiet", False))

    def progress(msg: str) -> None:
        if not quiet:
            sys.stderr.write(f"[train] {msg}\n")
            sys.stderr.flush()

    # Options win; then the settings (training_dir, heldout_dir, keywords_path,
    # retrained_model_dir); then the data/ shipped with triage.
    settings = load_settings(getattr(ns, "config", None))
    data = [Path(p) for p in ns.data] if getattr(ns, "data", None) else None
    if data is None and settings.training_dir:
        data = [settings.training_dir]
    if getattr(ns, "out", None):
        out = Path(ns.out)
    else:
        # Not the packaged model, which is part of the installation (root-owned in the
        # image, tracked in a checkout): the retrained-model folder, which the daemon
        # already chooses from at start (classifiers.installed.best_model_path).
        out = settings.retrained_model_dir / "model.skops"
        out.parent.mkdir(parents=True, exist_ok=True)
    keywords = Path(ns.keywords) if getattr(ns, "keywords", None) else settings.keywords_path
    # --corrections DIR (repeatable) adds staff corrections to named or default data.
    corrections = [Path(p) for p in ns.corrections] if getattr(ns, "corrections", None) else None
    # The held-out score goes into the metadata, where retraining compares models by it;
    # by default the held-out set whenever the default training data is used.
    if getattr(ns, "heldout", None):
        heldout: list[Path] | None = [Path(p) for p in ns.heldout]
    elif settings.heldout_dir:
        heldout = [settings.heldout_dir]
    elif not getattr(ns, "data", None) and DEFAULT_HELDOUT.exists():
        heldout = [DEFAULT_HELDOUT]
    else:
        heldout = None
    try:
        meta = train(data, out, corrections=corrections, heldout=heldout, progress=progress,
                     keywords_path=keywords)
    except (FileNotFoundError, ValueError) as exc:
        _err(str(exc))
        return 1
    metrics = meta.get("metrics", {}).get("test_split")
    if metrics and not quiet:
        sys.stdout.write(json.dumps({"model_version": meta["model_version"], **metrics}) + "\n")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from classifiers.evaluate import evaluate, jsonl_files, load_records, plot_confusion
    from classifiers.predict import Classifier

    try:
        clf = Classifier.load(Path(ns.model) if getattr(ns, "model", None) else None)
        records = load_records(jsonl_files(Path(p) for p in ns.data))
    except (ArtifactError, FileNotFoundError) as exc:
        _err(str(exc))
        return 1
    if not records:
        _err("no labelled records in the given data")
        return 1
    report = evaluate(clf, records)
    if getattr(ns, "plot", None):
        plot_confusion(report, Path(ns.plot))
    if getattr(ns, "json", False):
        out = {"model_version": clf.version, **report.to_json()}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(f"model {clf.version}\n{report.format_text()}\n")
    return 0


def _text_of(part: Any) -> str:
    try:
        return str(part.get_content())
    except Exception:  # unknown charset, broken transfer encoding: decode leniently
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", errors="replace")


def eml_to_input(raw: bytes) -> EmailInput:
    """An RFC 5322 message → EmailInput, tolerant of broken MIME and charsets."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    headers: dict[str, str] = {}
    for key, value in msg.items():
        headers.setdefault(key, str(value))
    body = html = ""
    try:
        text_part = msg.get_body(preferencelist=("plain",))
        html_part = msg.get_body(preferencelist=("html",))
    except Exception:
        text_part = html_part = None
    if text_part is not None:
        body = _text_of(text_part)
    if html_part is not None:
        html = _text_of(html_part)
    return EmailInput(
        subject=str(msg.get("subject", "") or ""),
        body=body,
        sender=str(msg.get("from", "") or ""),
        headers=headers,
        html=html or None,
    )


def decision_json(decision: Any) -> dict[str, Any]:
    out = dataclasses.asdict(decision)
    out["evidence"] = [dataclasses.asdict(e) for e in decision.evidence]
    out["cues"] = list(decision.cues)
    return out


def cmd_classify(ns: argparse.Namespace) -> int:
    from classifiers.predict import Classifier

    path = Path(ns.file)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_EML_BYTES)
    except OSError as exc:
        _err(f"cannot read {path}: {exc}")
        return 1
    try:
        clf = Classifier.load(Path(ns.model) if getattr(ns, "model", None) else None)
    except ArtifactError as exc:
        _err(str(exc))
        return 1
    decision = clf.classify(eml_to_input(raw))
    sys.stdout.write(json.dumps(decision_json(decision), indent=2) + "\n")
    return 0
