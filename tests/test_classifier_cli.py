"""``triage train | evaluate | classify`` end to end, through the real argument parser."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from classifiers.artifact import meta_path
from triage.cli import main

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ROOT / "data" / "training"


def _subset(src: Path, dst: Path, per_file: int, skip: int = 0) -> Path:
    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.jsonl")):
        lines = [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        (dst / f.name).write_text("\n".join(lines[skip : skip + per_file]) + "\n")
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    train_dir = _subset(TRAINING, tmp / "train", per_file=20)
    eval_dir = _subset(TRAINING, tmp / "eval", per_file=5, skip=40)
    model = tmp / "out" / "model.skops"
    assert main(["train", "--data", str(train_dir), "--out", str(model), "--quiet"]) == 0
    return model, eval_dir


def test_train_writes_versioned_artifact(trained: tuple[Path, Path]) -> None:
    model, _ = trained
    meta = json.loads(meta_path(model).read_text())
    for key in ("format_version", "sklearn_version", "training_data_sha256", "model_version"):
        assert meta[key]
    assert meta["metrics"]["test_split"]["n"] > 0
    assert 0.0 <= meta["metrics"]["test_split"]["macro_f1"] <= 1.0
    assert meta["priorities"]["password_reset"] == "urgent"
    assert meta["n_train"] + meta["n_test"] == meta["n_records"]


def test_train_without_data_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "m.skops")]) == 1
    assert "no training data" in capsys.readouterr().err


def test_evaluate_json_and_plot(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, eval_dir = trained
    files = sorted(eval_dir.glob("*.jsonl"))
    argv = ["evaluate", "--model", str(model), "--json", "--plot", str(tmp_path / "cm.png")]
    for f in files:
        argv += ["--data", str(f)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("macro_f1", "accuracy", "priority_accuracy", "per_class"):
        assert key in out
    assert out["n"] == 5 * len(files)
    assert sum(c["support"] for c in out["per_class"].values()) == out["n"]
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_text_report(trained: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    model, eval_dir = trained
    f = sorted(eval_dir.glob("*.jsonl"))[0]
    assert main(["evaluate", "--model", str(model), "--data", str(f)]) == 0
    text = capsys.readouterr().out
    assert "macro-F1" in text and "priority accuracy" in text and "confusion matrix" in text


def _classify(model: Path, eml: Path, capsys: pytest.CaptureFixture) -> dict:
    assert main(["classify", str(eml), "--model", str(model)]) == 0
    return json.loads(capsys.readouterr().out)


def test_classify_eml(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    model, _ = trained
    msg = EmailMessage()
    msg["From"] = "Ann <ann@example.com>"
    msg["To"] = "helpdesk@itx.net"
    msg["Subject"] = "Locked out"
    msg.set_content("I'm locked out, please reset my password.\n\n-- \nAnn\n")
    eml = tmp_path / "a.eml"
    eml.write_bytes(bytes(msg))
    out = _classify(model, eml, capsys)
    assert out["label"] == "password_reset"
    assert out["priority"] == "urgent"
    assert isinstance(out["evidence"], list) and out["evidence"]


def test_classify_auto_reply_eml(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    model, _ = trained
    eml = tmp_path / "ooo.eml"
    eml.write_bytes(
        b"From: bob@example.com\r\nAuto-Submitted: auto-replied\r\nSubject: Out of office\r\n"
        b"\r\nI am out of the office.\r\n"
    )
    out = _classify(model, eml, capsys)
    assert out["label"] == "not_a_request"
    assert out["non_request_kind"] == "auto_reply"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"no headers at all, just text about a printer",
        b"Subject: =?x-unknown?b?////?=\r\nContent-Type: text/plain; charset=x-nope\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64\xff\xfe",
        b"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><p>Our <b>website</b> is down</p></body></html>",
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nbroken",
    ],
)
def test_classify_bad_eml_gives_a_decision(
    trained: tuple[Path, Path], tmp_path: Path, capsys, raw: bytes
) -> None:
    model, _ = trained
    eml = tmp_path / "bad.eml"
    eml.write_bytes(raw)
    out = _classify(model, eml, capsys)
    assert 0.0 <= out["confidence"] <= 1.0


def test_classify_missing_model_fails_cleanly(tmp_path: Path, capsys) -> None:
    eml = tmp_path / "a.eml"
    eml.write_bytes(b"Subject: x\r\n\r\ny")
    assert main(["classify", str(eml), "--model", str(tmp_path / "none.skops")]) == 1
    assert "missing" in capsys.readouterr().err
