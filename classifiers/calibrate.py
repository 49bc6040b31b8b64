"""The decision thresholds, each chosen from a measurement on data the model was not fitted on.

``train`` holds out a stratified split; on the model's probabilities for it this module fits
one temperature (``predict.Classifier.calibrated``) and reads three thresholds off the
calibrated figures:

* ``screen_threshold``: the lowest confidence at which a ``not_a_request`` prediction is at
  least ``SCREEN_PRECISION`` precise on the split (never below ``SCREEN_FLOOR``). Below it
  the message opens a work order for review: losing a request is far worse than a click.
* ``open_set_threshold``: a specific type below it becomes ``other`` for review; chosen
  where that gains the most right answers on the split (``open_set_threshold``).
* ``review_threshold``: ``train.pick_threshold``, on the calibrated confidences.

The split is written by the same authors as the training data, so its figures flatter the
model; the targets here are stricter than the product's (0.98 precision) to leave room, and
``bench/bench_classifier.py`` checks them on held-out sets written apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from classifiers.types import NOT_A_REQUEST

DEFAULT_REVIEW_THRESHOLD = 0.5

if TYPE_CHECKING:
    from classifiers.evaluate import Record
    from classifiers.predict import Classifier

SCREEN_PRECISION = 0.98
SCREEN_FLOOR = 0.7
MIN_OPEN_SET_GAIN = 3
TEMPERATURES = np.round(np.arange(0.2, 4.01, 0.05), 2)


def scaled(proba: np.ndarray, t: float) -> np.ndarray:
    """Temperature scaling of probabilities (one row or many): softmax(z / t), computed from
    softmax(z) as softmax(log p / t)."""
    logp = np.log(np.clip(proba, 1e-300, None)) / t
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of the true labels."""
    if len(y) == 0:
        return 1.0
    rows = np.arange(len(y))
    nll = [-np.log(np.clip(scaled(proba, float(t))[rows, y], 1e-12, None)).mean()
           for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


def screen_threshold(conf_nr: np.ndarray, truly_nr: np.ndarray,
                     precision: float = SCREEN_PRECISION, floor: float = SCREEN_FLOOR) -> float:
    """Lowest confidence whose not_a_request predictions at or above it reach ``precision``.

    Scanned from the most confident down; a threshold is kept only while the running
    precision holds, so one confident mistake raises it past that mistake."""
    order = np.argsort(-conf_nr)
    best = 1.0
    correct = 0
    for n, i in enumerate(order, 1):
        correct += bool(truly_nr[i])
        if correct / n >= precision:
            best = float(conf_nr[i])
    return max(best, floor)


def open_set_threshold(conf: np.ndarray, correct: np.ndarray, truly_other: np.ndarray) -> float:
    """The confidence below which sending a specific-type prediction to ``other`` gains most.

    Moving prediction i to ``other`` wins one right answer when it truly is ``other`` and
    loses one when its specific type was right; the threshold is where the running gain,
    from the least confident up, peaks (0.0, off, when it never gains)."""
    order = np.argsort(conf)
    gain = best_gain = 0
    best = 0.0
    for i in order:
        gain += int(bool(truly_other[i])) - int(bool(correct[i]))
        if gain > best_gain:
            best_gain, best = gain, float(np.nextafter(conf[i], 1.0))  # conf[i] itself moves
    # A gain of one or two answers on a few hundred is noise, and a threshold chosen on
    # noise cost up to 0.01 macro-F1 on both held-out sets (bench/results.md).
    return best if best_gain >= max(MIN_OPEN_SET_GAIN, 0.01 * len(conf)) else 0.0


def pick_threshold(clf: Classifier, records: Sequence[Record], target: float = 0.97) -> float:
    """Lowest confidence above which the test split's accuracy is at least ``target``.

    Decisions below it are flagged ``needs_review``; with no test split, the default.
    """
    if not records:
        return DEFAULT_REVIEW_THRESHOLD
    decisions = clf.classify_many([r.email for r in records])
    pairs = sorted(
        (
            (d.confidence, d.label == r.label)
            for d, r in zip(decisions, records, strict=True)
            if d.screened_by is None
        ),
        reverse=True,
    )
    best = DEFAULT_REVIEW_THRESHOLD
    correct = 0
    for n, (conf, ok) in enumerate(pairs, 1):
        correct += ok
        if correct / n >= target:
            best = conf
    return float(min(max(best, 0.2), 0.9))


def calibrate(clf: Classifier, records: Sequence[Record]) -> dict[str, Any]:
    """The settings ``Classifier`` reads from its metadata, fitted on ``records``."""
    if not records:
        return {}
    proba, screened = clf.probabilities([r.email for r in records])
    keep = [i for i, s in enumerate(screened) if not s]
    classes = list(clf.classes)
    known = [i for i in keep if records[i].label in classes]
    y = np.array([classes.index(records[i].label) for i in known], dtype=int)
    p = proba[known]
    t = fit_temperature(p, y)
    cal = scaled(p, t)
    pred = cal.argmax(axis=1)
    nr = classes.index(NOT_A_REQUEST) if NOT_A_REQUEST in classes else -1
    is_nr_pred = pred == nr
    screen = screen_threshold(cal[is_nr_pred, nr], (y == nr)[is_nr_pred])
    specific = [j for j, c in enumerate(classes) if c not in (NOT_A_REQUEST, "other")]
    spec_mask = np.isin(pred, specific)
    other = classes.index("other") if "other" in classes else -1
    open_set = open_set_threshold(cal[spec_mask].max(axis=1), (pred == y)[spec_mask],
                                  (y == other)[spec_mask])
    out = {"temperature": t, "screen_threshold": round(screen, 4),
           "open_set_threshold": round(open_set, 4)}
    meta = {**clf.meta, **out}
    from classifiers.predict import Classifier as _Classifier

    tuned = _Classifier(clf._pipe, meta, scorer=clf.scorer, path=clf._path)
    out["review_threshold"] = pick_threshold(tuned, records)
    return out
