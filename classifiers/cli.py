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
    from classifiers.train import DEFAULT_HELDOUT, OTHER_HELDOUT, train
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
        others = ({n: [p] for n, p in OTHER_HELDOUT.items() if p.exists()}
                  if data is None else None)
        meta = train(data, out, corrections=corrections, heldout=heldout, others=others,
                     progress=progress, keywords_path=keywords)
    except (FileNotFoundError, ValueError) as exc:
        _err(str(exc))
        return 1
    metrics = meta.get("metrics", {}).get("test_split")
    if metrics and not quiet:
        sys.stdout.write(json.dumps({"model_version": meta["model_version"], **metrics}) + "\n")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    """Scores on the named data, or on each held-out set apart (heldout, wild, registers)."""
    from classifiers.evaluate import evaluate, jsonl_files, load_records, plot_confusion
    from classifiers.predict import Classifier
    from classifiers.train import DEFAULT_HELDOUT, OTHER_HELDOUT

    if getattr(ns, "plot", None):  # before the evaluation, not after a minute of it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _err("evaluate: --plot needs matplotlib: pip install 'itx-triage[plot]'")
            return 1
    if getattr(ns, "data", None):
        sets = {"data": [Path(p) for p in ns.data]}
    else:
        sets = {"heldout": [DEFAULT_HELDOUT], **{n: [p] for n, p in OTHER_HELDOUT.items()}}
    try:
        clf = Classifier.load(Path(ns.model) if getattr(ns, "model", None) else None)
        loaded = {name: load_records(jsonl_files(paths)) for name, paths in sets.items()}
    except (ArtifactError, FileNotFoundError) as exc:
        _err(str(exc))
        return 1
    if not any(loaded.values()):
        _err("no labelled records in the given data")
        return 1
    reports = {name: evaluate(clf, records) for name, records in loaded.items() if records}
    if getattr(ns, "plot", None):
        plot_confusion(next(iter(reports.values())), Path(ns.plot))
    if getattr(ns, "json", False):
        out: dict[str, Any] = {"model_version": clf.version}
        if list(reports) == ["data"]:
            out.update(reports["data"].to_json())
        else:
            out.update({name: r.to_json() for name, r in reports.items()})
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(f"model {clf.version}\n")
        for name, r in reports.items():
            if len(reports) > 1:
                sys.stdout.write(f"\n== {name} ==\n")
            sys.stdout.write(f"{r.format_text()}\n")
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
