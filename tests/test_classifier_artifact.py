"""Artifact: versioned metadata, no pickle, refuse what does not match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sklearn
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from classifiers import artifact
from classifiers.artifact import ArtifactError
from classifiers.features import load_keywords
from classifiers.pipeline import build_pipeline

TEXTS = [
    "please reset my password locked out",
    "forgot my password again",
    "our website is down error 503",
    "site down since this morning",
    "new printer in the back office",
    "set up the new printer please",
]
LABELS = ["password_reset"] * 2 + ["website_down"] * 2 + ["printer_setup"] * 2


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    pipe = build_pipeline(load_keywords()).set_params(
        features__words__min_df=1, features__chars__min_df=1
    )
    pipe.fit(TEXTS, LABELS)
    path = tmp_path / "m" / "model.skops"
    artifact.save(pipe, {"model_version": "t1", "sklearn_version": sklearn.__version__}, path)
    return path


def test_round_trip_keeps_predictions_and_metadata(saved: Path) -> None:
    pipe, meta = artifact.load(saved)
    assert meta["format_version"] == artifact.FORMAT_VERSION
    assert meta["model_version"] == "t1"
    assert list(pipe.predict(["my password is locked out"])) == ["password_reset"]
    assert saved.stat().st_mode & 0o044  # readable by others: it ships in the package


def test_incompatible_format_version_is_refused(saved: Path) -> None:
    meta_file = artifact.meta_path(saved)
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = artifact.FORMAT_VERSION + 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format version"):
        artifact.load(saved)


def test_model_file_not_matching_its_metadata_is_refused(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        artifact.load(saved)


def test_missing_metadata_is_refused(saved: Path) -> None:
    artifact.meta_path(saved).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        artifact.load(saved)


def test_types_off_the_allow_list_are_refused(tmp_path: Path) -> None:
    # A function reference is exactly what a hostile file would smuggle in; skops can
    # store it, and load must refuse rather than import and call it.
    pipe = Pipeline([("f", FunctionTransformer(func=print))])
    path = tmp_path / "model.skops"
    artifact.save(pipe, {"model_version": "evil"}, path)
    with pytest.raises(ArtifactError, match="allow-list"):
        artifact.load(path)


def test_not_a_skops_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(b"\x80\x04not a zip")
    import hashlib

    meta = {
        "format_version": artifact.FORMAT_VERSION,
        "artifact_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    artifact.meta_path(path).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="skops"):
        artifact.load(path)
