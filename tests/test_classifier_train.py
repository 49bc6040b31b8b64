"""Training helpers and scoring: data loading, priorities, split, hash, metrics."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from classifiers.evaluate import Record, jsonl_files, load_records, parse_record, score
from classifiers.train import data_hash, load_priorities, pick_threshold, split
from classifiers.types import Decision, EmailInput


def _rec(label: str, priority: str | None = "normal", body: str = "x") -> Record:
    return Record(EmailInput(body=body), label, priority)


def _dec(label: str, priority: str | None = "normal") -> Decision:
    return Decision(label=label, confidence=0.9, priority=priority, needs_review=False)


def test_load_records_skips_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "a.jsonl"
    good = {
        "subject": "s",
        "body": "b",
        "from": "x@y",
        "headers": {"A": 1},
        "label": "other",
        "priority": "normal",
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "label": "coffee"}),
        json.dumps({**good, "priority": "whenever"}),
        json.dumps({**good, "headers": ["x"]}),
        "",
        json.dumps({**good, "label": "not_a_request", "priority": "urgent"}),
    ]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        recs = load_records([f])
    assert [r.label for r in recs] == ["other", "not_a_request"]
    assert recs[0].email.headers == {"A": "1"}
    assert recs[1].priority is None  # non-requests carry no priority
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 4


def test_parse_record_refuses_non_objects() -> None:
    with pytest.raises(ValueError):
        parse_record(["label", "other"])


def test_jsonl_files_takes_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("")
    single = tmp_path / "single.json"
    single.write_text("")
    assert [p.name for p in jsonl_files([tmp_path, single])] == [
        "a.jsonl",
        "b.jsonl",
        "single.json",
    ]
    with pytest.raises(FileNotFoundError):
        jsonl_files([tmp_path / "missing"])


def test_data_hash_follows_content(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_text("one\n")
    h1 = data_hash([a])
    a.write_text("two\n")
    assert data_hash([a]) != h1
    b = tmp_path / "b.jsonl"
    b.write_text("")
    assert data_hash([a, b]) != data_hash([a])


def test_priorities_come_from_the_sla_policy(tmp_path: Path) -> None:
    policy = tmp_path / "sla.toml"
    policy.write_text(
        '[types.printer_setup]\npriority = "high"\n'
        '[types.unknown_type]\npriority = "urgent"\n'
        '[types.server_down]\npriority = "sometime"\n'
    )
    table = load_priorities(policy)
    assert table["printer_setup"] == "high"
    assert table["server_down"] == "urgent"  # invalid value: built-in default kept
    assert "unknown_type" not in table
    fallback = load_priorities(tmp_path / "missing.toml")
    assert fallback["password_reset"] == "urgent"
    assert fallback["quickbooks_print"] == "high"
    assert fallback["other"] == "normal"


def test_split_is_stratified_and_keeps_rare_labels_in_training() -> None:
    records = (
        [_rec("a", body=str(i)) for i in range(50)]
        + [_rec("b", body=str(i)) for i in range(50)]
        + [_rec("c")]
    )
    train, test = split(records, 0.2, seed=1)
    assert len(train) + len(test) == len(records)
    assert Counter(r.label for r in test) == {"a": 10, "b": 10}
    assert any(r.label == "c" for r in train)
    assert split(records, 0.0, seed=1) == (records, [])


def test_score_counts_labels_and_priorities() -> None:
    records = [
        _rec("password_reset", "urgent"),
        _rec("password_reset", "high"),
        _rec("printer_setup", "normal"),
        _rec("not_a_request", None),
    ]
    decisions = [
        _dec("password_reset", "urgent"),
        _dec("password_reset", "urgent"),  # right type, missed the workaround
        _dec("password_reset", "urgent"),  # wrong type
        _dec("not_a_request", None),
    ]
    report = score(records, decisions)
    assert report.accuracy == pytest.approx(0.75)
    assert report.priority_accuracy == pytest.approx(1 / 3)
    assert report.per_class["printer_setup"].recall == 0.0
    assert report.per_class["password_reset"].precision == pytest.approx(2 / 3)
    assert report.macro_f1 == pytest.approx((0.8 + 0.0 + 1.0) / 3)
    assert report.confusion.tolist() == [[2, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert report.labels == ["password_reset", "printer_setup", "not_a_request"]


class _Fixed:
    """Stands in for a Classifier: returns prepared decisions in order."""

    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = decisions

    def classify_many(self, emails: list[EmailInput]) -> list[Decision]:
        return self.decisions[: len(emails)]


def test_review_threshold_is_where_accuracy_reaches_target() -> None:
    confs = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    right = [True, True, True, True, True, False, False, False]
    records = [_rec("other") for _ in confs]
    decisions = [
        Decision("other" if ok else "printer_setup", c, "normal", False)
        for c, ok in zip(confs, right, strict=True)
    ]
    assert pick_threshold(_Fixed(decisions), records, target=0.95) == pytest.approx(0.7)
