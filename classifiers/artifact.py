"""Model artifact: ``model.skops`` (the fitted pipeline) beside ``model.json`` (its metadata).

Loading never runs pickle: skops rebuilds only types on an explicit allow-list, and the
metadata is checked first (format version, file hash) so a mismatched or tampered file
is refused before any of it is deserialised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # skops and scikit-learn load only with a model (classifiers.installed)
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "model" / "model.skops"

# Our own classes and the few stdlib/numpy types skops does not trust by default.
# Anything else in a file is refused.
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "classifiers.features.KeywordFeatures",
        "classifiers.pipeline.CompactTfidfVectorizer",
        # the calibrated LinearSVC option of pipeline.build_pipeline
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "builtins.float",
        "builtins.int",
        "builtins.str",
    }
)


class ArtifactError(Exception):
    """The artifact is missing, incompatible (format version) or not what its metadata says."""


def meta_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; the artifact ships and is read by others
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(pipe: Pipeline, meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write the pipeline and its metadata; returns the metadata as written."""
    import skops.io as sio

    from classifiers import scorer

    blob = sio.dumps(pipe)
    meta = {
        **meta,
        "format_version": FORMAT_VERSION,
        "artifact_sha256": hashlib.sha256(blob).hexdigest(),
    }
    meta.pop("scorer_sha256", None)
    compiled = scorer.Scorer.from_pipeline(pipe)
    if compiled is not None:  # prediction then needs numpy alone (classifiers.scorer)
        meta["scorer_sha256"] = scorer.save(compiled, path)
    else:
        scorer.scorer_path(path).unlink(missing_ok=True)
    _atomic_write(path, blob)
    # Metadata last: a reader that sees it can trust the model file beside it is complete.
    _atomic_write(meta_path(path), json.dumps(meta, indent=2, sort_keys=True).encode())
    log.info("saved model %s to %s (%d bytes)", meta.get("model_version"), path, len(blob))
    return meta


def add_scorer(path: Path) -> dict[str, Any]:
    """Compile the scorer of an artifact saved without one (the model is not changed; its
    metadata gains ``scorer_sha256``); returns the metadata as written."""
    from classifiers import scorer

    pipe, meta = load(path)
    compiled = scorer.Scorer.from_pipeline(pipe)
    if compiled is None:
        raise ArtifactError(f"model {path} has no compiled form (not a logistic regression?)")
    meta = {**meta, "scorer_sha256": scorer.save(compiled, path)}
    _atomic_write(meta_path(path), json.dumps(meta, indent=2, sort_keys=True).encode())
    return meta


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"model metadata {meta_path(path)} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"model metadata {meta_path(path)} is unreadable: {exc}") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"model metadata {meta_path(path)} is not an object")
    return meta


def load(path: Path | None = None) -> tuple[Pipeline, dict[str, Any]]:
    """The fitted pipeline and metadata at ``path`` (default: the packaged model)."""
    import skops.io as sio
    from sklearn.pipeline import Pipeline

    path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    meta = read_meta(path)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"model {path} has format version {version!r}; this code reads {FORMAT_VERSION}"
        )
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"model file {path} is unreadable: {exc}") from exc
    if hashlib.sha256(blob).hexdigest() != meta.get("artifact_sha256"):
        raise ArtifactError(f"model file {path} does not match its metadata (sha256)")
    try:
        untrusted = set(sio.get_untrusted_types(data=blob))
    except Exception as exc:
        raise ArtifactError(f"model file {path} is not a skops file: {exc}") from exc
    refused = untrusted - TRUSTED_TYPES
    if refused:
        raise ArtifactError(
            f"model file {path} holds types not on the allow-list: {sorted(refused)}"
        )
    pipe = sio.loads(blob, trusted=sorted(untrusted))
    if not isinstance(pipe, Pipeline):
        raise ArtifactError(f"model file {path} holds {type(pipe).__name__}, not a Pipeline")
    return pipe, meta
