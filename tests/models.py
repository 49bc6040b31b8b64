"""Small classifier models trained for the tests, on the first records of the shipped
training data (a pytest plugin, loaded by ``tests/conftest.py``; the shipped model itself is
conftest's ``classifier``).

Fixtures (module scope, so each module that asks trains its own once): ``model_path``, a
real but quick model, and ``clf``, that model loaded. Helper: ``train_weak_model``, a model
far below any real candidate, for the retrain tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from classifiers.predict import Classifier
from classifiers.retrain import MODEL_FILE
from classifiers.train import train

TRAINING = Path(__file__).resolve().parents[1] / "data" / "training"


def _subset(tmp: Path, per_file: int = 25) -> Path:
    """The first records of each training file: a real but quick corpus."""
    out = tmp / "data"
    out.mkdir()
    for f in sorted(TRAINING.glob("*.jsonl")):
        lines = [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        (out / f.name).write_text("\n".join(lines[:per_file]) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("model")
    path = tmp / "model.skops"
    train([_subset(tmp)], path, test_size=0.2)
    return path


@pytest.fixture(scope="module")
def clf(model_path: Path) -> Classifier:
    return Classifier.load(model_path)


def train_weak_model(root: Path, types: tuple[str, ...]) -> Path:
    """A model trained on 20 records of each of ``types``: far below any real candidate."""
    lines: list[str] = []
    for name in types:
        src = TRAINING / f"{name}.jsonl"
        lines += src.read_text(encoding="utf-8").splitlines()[:20]
    data = root / "tiny.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = root / MODEL_FILE
    train([data], path, test_size=0)
    return path
