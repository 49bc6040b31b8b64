"""Which model artifact to load: the packaged one or the last retrained one.

Kept apart from ``classifiers.retrain`` and light (JSON metadata and a file hash, no
scikit-learn): the daemon's main process chooses the model without importing the libraries
that only its ingest worker needs (triage.ingest).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from classifiers import artifact
from classifiers.artifact import ArtifactError

log = logging.getLogger(__name__)

MODEL_FILE = "model.skops"


def _heldout_f1(meta: dict[str, Any], heldout_sha: str | None = None) -> float | None:
    """The recorded held-out macro-F1, if it was measured on the set with ``heldout_sha``."""
    held = meta.get("metrics", {}).get("heldout")
    if not isinstance(held, dict) or not isinstance(held.get("macro_f1"), int | float):
        return None
    if heldout_sha and held.get("data_sha256") not in (None, heldout_sha):
        return None
    return float(held["macro_f1"])


def _checked_meta(path: Path) -> dict[str, Any] | None:
    """Metadata of an artifact whose file matches it (format and hash), without loading the
    model; None when missing or torn (e.g. read between the two renames of an install)."""
    try:
        meta = artifact.read_meta(path)
        blob = path.read_bytes()
    except (ArtifactError, OSError):
        return None
    if meta.get("format_version") != artifact.FORMAT_VERSION:
        return None
    if hashlib.sha256(blob).hexdigest() != meta.get("artifact_sha256"):
        return None
    return meta


def best_model_path(
    packaged: Path | None,
    retrained_dir: Path,
    heldout_dir: Path | Sequence[Path] | None = None,
) -> Path:
    """The model to load at start-up: the retrained one when it is intact and its recorded
    held-out macro-F1 is not below the packaged model's, else the packaged one.

    The packaged score comes from its own metadata (same held-out set), else from the
    scores the retrain recorded for that exact artifact; failing both, and only when
    ``heldout_dir`` is given, from scoring the packaged model now (a fraction of a second).
    When the two cannot be compared the packaged model wins: a new release's model is
    trusted over an old night's, and the next retrain compares them properly.
    """
    packaged = Path(packaged) if packaged else artifact.DEFAULT_MODEL_PATH
    retrained = Path(retrained_dir) / MODEL_FILE
    if not retrained.exists():
        return packaged
    rmeta = _checked_meta(retrained)
    if rmeta is None:
        log.warning("retrained model %s is incomplete or altered; using %s", retrained, packaged)
        return packaged
    held = rmeta.get("metrics", {}).get("heldout", {})
    heldout_sha = held.get("data_sha256") if isinstance(held, dict) else None
    r_f1 = _heldout_f1(rmeta)
    if r_f1 is None:
        log.warning("retrained model %s has no held-out score; using %s", retrained, packaged)
        return packaged
    pmeta = _checked_meta(packaged)
    if pmeta is None:
        log.warning("packaged model %s unusable; using the retrained %s", packaged, retrained)
        return retrained
    p_f1 = _heldout_f1(pmeta, heldout_sha)
    if p_f1 is None:
        seen = rmeta.get("retrain", {}).get("scores", {}).get(pmeta.get("artifact_sha256"))
        if (
            isinstance(seen, dict)
            and isinstance(seen.get("macro_f1"), int | float)
            and (seen.get("heldout_sha256") in (None, heldout_sha))
        ):
            p_f1 = float(seen["macro_f1"])
    if p_f1 is None and heldout_dir is not None:
        # Only here is scikit-learn needed: scoring the packaged model now.
        from classifiers.evaluate import jsonl_files
        from classifiers.predict import Classifier
        from classifiers.train import data_hash, heldout_summary

        files = jsonl_files([heldout_dir] if isinstance(heldout_dir, str | Path) else heldout_dir)
        if data_hash(files) == heldout_sha:
            with contextlib.suppress(ArtifactError):
                summary = heldout_summary(Classifier.load(packaged), files)
                p_f1 = None if summary is None else float(summary["macro_f1"])
    if p_f1 is None:
        log.info(
            "cannot compare retrained %s with packaged %s; using the packaged model",
            rmeta.get("model_version"),
            pmeta.get("model_version"),
        )
        return packaged
    if r_f1 >= p_f1:
        log.info(
            "using retrained model %s (held-out macro-F1 %.4f, packaged %.4f)",
            rmeta.get("model_version"),
            r_f1,
            p_f1,
        )
        return retrained
    log.info(
        "using packaged model %s (held-out macro-F1 %.4f, retrained %.4f)",
        pmeta.get("model_version"),
        p_f1,
        r_f1,
    )
    return packaged
