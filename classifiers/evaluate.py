"""Labelled JSONL → the service's own decisions → per-class and overall scores.

Also home of the record loader, which training shares: both read the same format.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from classifiers.types import LABELS, NOT_A_REQUEST, Decision, EmailInput

if TYPE_CHECKING:
    from classifiers.predict import Classifier

log = logging.getLogger(__name__)

PRIORITIES = ("urgent", "high", "normal")


@dataclass(frozen=True)
class Record:
    email: EmailInput
    label: str
    priority: str | None


def jsonl_files(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, and the ``*.jsonl`` files of folders, in a stable order."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(p.glob("*.jsonl")))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such data file or folder: {p}")
    return out


def parse_record(obj: Any) -> Record:
    """A JSON object → Record; raises ValueError on anything unusable."""
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    label = obj.get("label")
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}")
    headers = obj.get("headers") or {}
    if not isinstance(headers, dict):
        raise ValueError("headers is not an object")
    priority = obj.get("priority")
    if priority not in (*PRIORITIES, None):
        raise ValueError(f"unknown priority {priority!r}")
    html = obj.get("html")
    email = EmailInput(
        subject=str(obj.get("subject") or ""),
        body=str(obj.get("body") or ""),
        sender=str(obj.get("from") or ""),
        headers={str(k): str(v) for k, v in headers.items()},
        html=html if isinstance(html, str) else None,
    )
    return Record(email, label, None if label == NOT_A_REQUEST else priority)


def load_records(files: Sequence[Path]) -> list[Record]:
    """All usable records of ``files``; bad lines are logged and skipped."""
    records: list[Record] = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    records.append(parse_record(json.loads(line)))
                except ValueError as exc:
                    log.warning("%s:%d skipped: %s", path, n, exc)
    return records


@dataclass(frozen=True)
class ClassScore:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Bin:
    """One row of a reliability table: decisions whose confidence fell in [lo, hi)."""

    lo: float
    hi: float
    n: int
    accuracy: float
    mean_confidence: float


RELIABILITY_EDGES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001)


def reliability_table(confidences: Sequence[float], correct: Sequence[bool],
                      edges: Sequence[float] = RELIABILITY_EDGES) -> tuple[Bin, ...]:
    """Accuracy per confidence bin: calibrated confidence has accuracy close to the bin's mean
    confidence. The review threshold is read off it (``classifiers.train.pick_threshold``)."""
    out: list[Bin] = []
    conf = np.asarray(confidences, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    for lo, hi in itertools.pairwise(edges):
        mask = (conf >= lo) & (conf < hi)
        n = int(mask.sum())
        out.append(Bin(lo, min(hi, 1.0), n, float(ok[mask].mean()) if n else 0.0,
                       float(conf[mask].mean()) if n else 0.0))
    return tuple(out)


@dataclass(frozen=True)
class Report:
    n: int
    accuracy: float
    macro_f1: float
    priority_accuracy: float
    needs_review_rate: float
    per_class: dict[str, ClassScore]
    labels: list[str]  # row/column order of ``confusion``
    confusion: np.ndarray  # rows: true label, columns: predicted label
    # The two mistakes that cost unequally: a request screened out is a client nobody
    # answers; a non-request opened costs staff one click.
    requests_screened_out: int = 0
    non_requests_opened: int = 0
    non_request_precision: float = 1.0  # of the records screened out, the share truly not one
    reliability: tuple[Bin, ...] = ()

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the numbers a benchmark or the artifact metadata keeps."""
        return {
            "n": self.n,
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "priority_accuracy": round(self.priority_accuracy, 4),
            "needs_review_rate": round(self.needs_review_rate, 4),
            "requests_screened_out": self.requests_screened_out,
            "non_requests_opened": self.non_requests_opened,
            "non_request_precision": round(self.non_request_precision, 4),
            "reliability": [
                {"confidence": f"{b.lo:.2f}-{b.hi:.2f}", "n": b.n,
                 "accuracy": round(b.accuracy, 4), "mean_confidence": round(b.mean_confidence, 4)}
                for b in self.reliability if b.n
            ],
            "per_class": {
                k: {
                    "precision": round(v.precision, 4),
                    "recall": round(v.recall, 4),
                    "f1": round(v.f1, 4),
                    "support": v.support,
                }
                for k, v in self.per_class.items()
            },
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "confusion": {"labels": self.labels, "matrix": self.confusion.tolist()},
        }

    def format_text(self) -> str:
        width = max(len(label) for label in self.labels) if self.labels else 10
        lines = [f"{'label':<{width}}  precision  recall     f1  support"]
        for label, s in self.per_class.items():
            scores = f"{s.precision:9.3f}  {s.recall:6.3f}  {s.f1:5.3f}  {s.support:7d}"
            lines.append(f"{label:<{width}}  {scores}")
        lines += [
            "",
            f"records            {self.n}",
            f"accuracy           {self.accuracy:.4f}",
            f"macro-F1           {self.macro_f1:.4f}",
            f"priority accuracy  {self.priority_accuracy:.4f}",
            f"needs review       {self.needs_review_rate:.4f}",
            f"requests screened out  {self.requests_screened_out}",
            f"non-requests opened    {self.non_requests_opened}",
            f"non-request precision  {self.non_request_precision:.4f}",
            "",
            "reliability (confidence bin: decisions, accuracy, mean confidence)",
            *(f"  {b.lo:.2f}-{b.hi:.2f}  {b.n:5d}  {b.accuracy:.3f}  {b.mean_confidence:.3f}"
              for b in self.reliability if b.n),
            "",
            "confusion matrix (rows: true, columns: predicted)",
        ]
        abbrev = [label[:6] for label in self.labels]
        lines.append(" " * (width + 1) + " ".join(f"{a:>6}" for a in abbrev))
        for label, row in zip(self.labels, self.confusion, strict=True):
            lines.append(f"{label:<{width}} " + " ".join(f"{int(v):6d}" for v in row))
        return "\n".join(lines)


def score(records: Sequence[Record], decisions: Sequence[Decision]) -> Report:
    """Scores of ``decisions`` against the records' labels and priorities."""
    y_true = [r.label for r in records]
    y_pred = [d.label for d in decisions]
    present = set(y_true) | set(y_pred)
    labels = [label for label in LABELS if label in present]
    if not records:
        return Report(0, 0.0, 0.0, 0.0, 0.0, {}, [], np.zeros((0, 0), dtype=int))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {
        label: ClassScore(float(p[i]), float(r[i]), float(f[i]), int(s[i]))
        for i, label in enumerate(labels)
    }
    with_priority = [
        (rec.priority, d.priority)
        for rec, d in zip(records, decisions, strict=True)
        if rec.priority is not None
    ]
    prio_acc = sum(t == q for t, q in with_priority) / len(with_priority) if with_priority else 1.0
    screened = [t for t, q in zip(y_true, y_pred, strict=True) if q == NOT_A_REQUEST]
    return Report(
        n=len(records),
        accuracy=float(np.mean([t == q for t, q in zip(y_true, y_pred, strict=True)])),
        macro_f1=float(np.mean(f)),
        priority_accuracy=float(prio_acc),
        needs_review_rate=float(np.mean([d.needs_review for d in decisions])),
        per_class=per_class,
        labels=labels,
        confusion=_confusion(y_true, y_pred, labels),
        requests_screened_out=sum(t != NOT_A_REQUEST for t in screened),
        non_requests_opened=sum(t == NOT_A_REQUEST and q != NOT_A_REQUEST
                                for t, q in zip(y_true, y_pred, strict=True)),
        non_request_precision=(sum(t == NOT_A_REQUEST for t in screened) / len(screened)
                               if screened else 1.0),
        reliability=reliability_table([d.confidence for d in decisions],
                                      [t == q for t, q in zip(y_true, y_pred, strict=True)]),
    )


def _confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: list[str]) -> np.ndarray:
    """Counts, rows true and columns predicted (scikit-learn's warns on a single label)."""
    pos = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        out[pos[t], pos[p]] += 1
    return out


def evaluate(clf: Classifier, records: Sequence[Record]) -> Report:
    """The service's decision (header screen included) on every record, scored."""
    return score(records, clf.classify_many([r.email for r in records]))


def plot_confusion(report: Report, path: Path) -> None:
    """Write the confusion matrix as a PNG (needs matplotlib, the ``plot`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(report.labels)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 1.5 + 0.6 * n))
    try:
        ax.imshow(report.confusion, cmap="Blues")
        ax.set_xticks(range(n), report.labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), report.labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"macro-F1 {report.macro_f1:.3f}, accuracy {report.accuracy:.3f}")
        top = report.confusion.max() if report.confusion.size else 0
        for i in range(n):
            for j in range(n):
                v = int(report.confusion[i, j])
                if v:
                    ax.text(
                        j,
                        i,
                        str(v),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > top / 2 else "black",
                    )
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
