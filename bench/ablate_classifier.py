"""The shipped model with one decision setting changed at a time, on both held-out sets.

    python bench/ablate_classifier.py

Each line shows what one mechanism of ``classifiers.predict._decide`` buys: the screen
threshold, the temperature, the closing-note rule, the open-set fallback. Figures are in
bench/results.md (issue 13).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import classifiers.predict as predict  # noqa: E402
from classifiers.evaluate import jsonl_files, load_records, score  # noqa: E402
from classifiers.predict import Classifier  # noqa: E402

SETS = {"heldout": ROOT / "data" / "heldout", "wild": ROOT / "data" / "heldout-wild",
        "registers": ROOT / "data" / "heldout-registers"}


def run(name: str, clf: Classifier, records: dict, closing: bool = True) -> None:
    original = predict.closing_note
    if not closing:
        predict.closing_note = lambda email: None
    try:
        parts = [name]
        for set_name, rs in records.items():
            s = score(rs, clf.classify_many([r.email for r in rs])).summary()
            parts.append(f"{set_name}: F1 {s['macro_f1']:.3f}, prio {s['priority_accuracy']:.3f},"
                         f" screened out {s['requests_screened_out']},"
                         f" opened {s['non_requests_opened']}, review {s['needs_review_rate']:.3f}")
        print(" | ".join(parts))
    finally:
        predict.closing_note = original


def main() -> int:
    base = Classifier.load()
    records = {n: load_records(jsonl_files([p])) for n, p in SETS.items()}

    def variant(**meta: float) -> Classifier:
        return Classifier(None, {**base.meta, **meta}, scorer=base.scorer, path=base._path)

    run("as shipped", base, records)
    run("screen threshold 0 (any not_a_request screens)", variant(screen_threshold=0.0), records)
    run("temperature 1", variant(temperature=1.0), records)
    run("no closing-note rule", base, records, closing=False)
    run("open set at 0.5", variant(open_set_threshold=0.5), records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
