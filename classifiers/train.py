"""Train the classifier from labelled JSONL and write a versioned artifact.

Records: one JSON object per line, ``{"subject", "body", "from", "headers", "label",
"priority"}``. Default data: ``data/training/*.jsonl`` plus staff corrections in
``data/corrections/*.jsonl`` when that folder exists. Corrections always go to the fitted
part, never to the test split: each is a deliberate fix, and there are too few to spare.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sklearn
import skops
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from classifiers import artifact
from classifiers.calibrate import calibrate, pick_threshold  # noqa: F401 (re-exported)
from classifiers.evaluate import PRIORITIES, Record, evaluate, jsonl_files, load_records
from classifiers.features import load_keywords, prepare
from classifiers.pipeline import build_pipeline
from classifiers.predict import DEFAULT_PRIORITIES, DEFAULT_REVIEW_THRESHOLD, Classifier
from classifiers.types import LABELS, NOT_A_REQUEST
from triage.resources import DATA_DIR

log = logging.getLogger(__name__)

# The original corpus, and one written apart from it in the registers it lacks (terse
# ticket forms, relayed requests, non-native English, mobile one-liners, forwards, scams,
# closing notes); see data/README.md.
DEFAULT_TRAINING = (DATA_DIR / "training", DATA_DIR / "training-registers")
DEFAULT_CORRECTIONS = DATA_DIR / "corrections"
DEFAULT_HELDOUT = DATA_DIR / "heldout"
# Written apart from the training data, each by an author of its own, in registers the
# training data lacks; never trained on. Reported beside DEFAULT_HELDOUT, each on its own
# (the model's metadata, ``triage evaluate``, bench/bench_classifier.py); see data/README.md.
DEFAULT_WILD = DATA_DIR / "heldout-wild"
DEFAULT_REGISTERS = DATA_DIR / "heldout-registers"
OTHER_HELDOUT = {"wild": DEFAULT_WILD, "registers": DEFAULT_REGISTERS}
SLA_POLICY = DATA_DIR / "sla_policy.toml"


Progress = Callable[[str], None]


def data_hash(files: Sequence[Path]) -> str:
    """SHA-256 over the training files' bytes, in order; names excluded so moves don't count."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def load_priorities(path: Path = SLA_POLICY) -> dict[str, str]:
    """Default priority per type from the SLA policy, else the built-in table."""
    table = {t: "normal" for t in LABELS if t != NOT_A_REQUEST} | DEFAULT_PRIORITIES
    try:
        with open(path, "rb") as fh:
            policy = tomllib.load(fh)
    except FileNotFoundError:
        log.info("no SLA policy at %s; using built-in priorities", path)
        return table
    for name, spec in policy.get("types", {}).items():
        if name in table and isinstance(spec, dict) and spec.get("priority") in PRIORITIES:
            table[name] = spec["priority"]
    return table


def fit(
    records: Sequence[Record],
    keywords: dict[str, Any],
    **model_options: Any,
) -> Pipeline:
    pipe = build_pipeline(keywords, **model_options)
    pipe.fit([prepare(r.email) for r in records], [r.label for r in records])
    return pipe


def split(
    records: Sequence[Record], test_size: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Stratified split; labels too rare to stratify all go to training."""
    counts = Counter(r.label for r in records)
    rare = [r for r in records if counts[r.label] < 2]
    common = [r for r in records if counts[r.label] >= 2]
    if test_size <= 0 or len(common) < 4:
        return list(records), []
    train, test = train_test_split(
        common, test_size=test_size, random_state=seed, stratify=[r.label for r in common]
    )
    return [*train, *rare], list(test)


def training_files(
    data: Sequence[Path] | None = None, corrections: Sequence[Path] | None = None
) -> tuple[list[Path], list[Path]]:
    """The data files and correction files ``train`` reads, in the order it hashes them.

    With no ``data``, the defaults: ``data/training`` and, when it exists, ``data/corrections``.
    Named paths must exist. Empty correction files are left out, so an export with nothing
    in it leaves the data hash (and so the "nothing new" check of retraining) unchanged.
    """
    if corrections is None:
        corrections = [DEFAULT_CORRECTIONS] if not data and DEFAULT_CORRECTIONS.exists() else []
    data_files = jsonl_files(list(data) if data else DEFAULT_TRAINING)
    correction_files = [f for f in jsonl_files(corrections) if f.stat().st_size > 0]
    return data_files, [f for f in correction_files if f not in data_files]


def keywords_hash(keywords: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(keywords, sort_keys=True).encode()).hexdigest()


def heldout_summary(clf: Classifier, files: Sequence[Path]) -> dict[str, Any] | None:
    """Scores on a held-out set, with the set's hash so numbers are compared only like with like."""
    records = load_records(files)
    if not records:
        return None
    return {**evaluate(clf, records).summary(), "data_sha256": data_hash(files)}


def train(
    data: Sequence[Path] | None = None,
    out: Path | None = None,
    *,
    corrections: Sequence[Path] | None = None,
    heldout: Sequence[Path] | None = None,
    others: Mapping[str, Sequence[Path]] | None = None,
    keywords_path: Path | None = None,
    test_size: float = 0.2,
    seed: int = 13,
    progress: Progress | None = None,
    **model_options: Any,
) -> dict[str, Any]:
    """Train, report on a held-out stratified split, write the artifact; returns its metadata.

    ``corrections`` (files or folders) are always fitted on, never split off for testing.
    ``heldout`` (files or folders) is scored after fitting and kept in the metadata as
    ``metrics.heldout``; retraining compares models by that number. ``others`` (name to
    files or folders) are scored into ``metrics.<name>`` beside it.
    """
    say = progress or (lambda msg: log.info("%s", msg))
    started = time.perf_counter()
    data_files, correction_files = training_files(data, corrections)
    files = [*data_files, *correction_files]
    if not data_files:
        raise FileNotFoundError("no training data (*.jsonl) found")
    say(f"reading {len(files)} file(s)")
    base = load_records(data_files)
    fixes = load_records(correction_files)
    records = [*base, *fixes]
    labels = Counter(r.label for r in records)
    if len(labels) < 2:
        raise ValueError(f"need at least two labels to train, found {sorted(labels)}")
    keywords = load_keywords(keywords_path)
    keywords_digest = keywords_hash(keywords)
    train_set, test_set = split(base, test_size, seed)
    train_set += fixes
    say(
        f"{len(records)} records ({len(fixes)} corrections), {len(labels)} labels; "
        f"training on {len(train_set)}, testing on {len(test_set)}"
    )

    t0 = time.perf_counter()
    pipe = fit(train_set, keywords, **model_options)
    fit_seconds = time.perf_counter() - t0
    say(f"fitted in {fit_seconds:.1f}s")

    priorities = load_priorities()
    digest = data_hash(files)
    stamp = datetime.now(UTC)
    meta: dict[str, Any] = {
        "model_version": f"{stamp:%Y%m%d%H%M%S}-{digest[:8]}",
        "created_at": stamp.isoformat(timespec="seconds"),
        "sklearn_version": sklearn.__version__,
        "skops_version": skops.__version__,
        "python_version": platform.python_version(),
        "training_data_sha256": digest,
        "training_files": [f"{f.parent.name}/{f.name}" for f in files],
        "test_split": {"size": test_size, "seed": seed, "stratified": True},
        "keywords_sha256": keywords_digest,
        "n_records": len(records),
        "n_corrections": len(fixes),
        "n_train": len(train_set),
        "n_test": len(test_set),
        "label_counts": dict(sorted(labels.items())),
        "labels": [str(c) for c in pipe.classes_],
        "priorities": priorities,
        "model": {"name": type(pipe.named_steps["model"]).__name__, **model_options},
        "fit_seconds": round(fit_seconds, 2),
        "review_threshold": DEFAULT_REVIEW_THRESHOLD,
    }
    clf = Classifier(pipe, meta)
    if test_set:
        meta.update(calibrate(clf, test_set))
        clf = Classifier(pipe, meta)
        say(f"calibrated: temperature {meta['temperature']}, screen at "
            f"{meta['screen_threshold']}, open set below {meta['open_set_threshold']}, "
            f"review below {meta['review_threshold']}")
        report = evaluate(clf, test_set)
        meta["metrics"] = {"test_split": report.summary()}
        say(
            f"test split: macro-F1 {report.macro_f1:.3f}, accuracy {report.accuracy:.3f}, "
            f"priority accuracy {report.priority_accuracy:.3f}"
        )
    heldout_files = jsonl_files(heldout) if heldout else []
    summary = heldout_summary(clf, heldout_files) if heldout_files else None
    if summary is not None:
        meta.setdefault("metrics", {})["heldout"] = summary
        say(f"held-out set: macro-F1 {summary['macro_f1']:.3f} on {summary['n']} records")
    for name, paths in (others or {}).items():
        other = heldout_summary(clf, jsonl_files(paths))
        if other is not None:
            meta.setdefault("metrics", {})[name] = other
            say(f"held-out set {name}: macro-F1 {other['macro_f1']:.3f} on {other['n']} "
                f"records, {other['requests_screened_out']} requests screened out")
    out = Path(out) if out is not None else artifact.DEFAULT_MODEL_PATH
    meta = artifact.save(pipe, meta, out)
    say(f"wrote {out} ({meta['model_version']}) in {time.perf_counter() - started:.1f}s")
    return meta
