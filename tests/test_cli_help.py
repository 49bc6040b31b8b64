"""What the command line tells a new operator: help that names the settings and request
types, ``client set`` explained, ``train`` that leaves the tracked model alone, and
``evaluate --plot`` without matplotlib as one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from classifiers.types import REQUEST_TYPES
from triage.config import Settings

REPO = Path(__file__).resolve().parents[1]


def triage(*args: str, env: dict[str, str] | None = None,
           cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "triage", *args], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=300)


def test_run_help_names_every_setting() -> None:
    r = triage("run", "--help")
    assert r.returncode == 0, r.stderr
    for name in Settings.model_fields:
        assert f"TRIAGE_{name.upper()}" in r.stdout, name
    assert "TRIAGE_DATABASE_URL=sqlite:///var/triage.db" in r.stdout  # with its default
    assert "triage check" in r.stdout


def test_sla_due_help_lists_the_request_types() -> None:
    r = triage("sla", "due", "--help")
    assert r.returncode == 0, r.stderr
    for request_type in REQUEST_TYPES:
        assert f"  {request_type} " in r.stdout, request_type
    assert "website_down           urgent  client website down" in r.stdout


def test_client_set_help_explains_the_contract() -> None:
    r = triage("client", "set", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "before its mail arrives" in text and "always-open calendar" in text
    assert "triage client set harborviewdental.com --contract 24x7" in text


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_train_writes_to_the_retrained_model_folder_not_the_tracked_model(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("password_reset", "website_down", "other"):  # small: a few seconds
        lines = (REPO / "data" / "training" / f"{name}.jsonl").read_text().splitlines()[:30]
        (data / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    packaged = REPO / "classifiers" / "model"
    before = _digests(packaged)
    model_dir = tmp_path / "model"
    r = triage("train", "--quiet", "--data", str(data), env={
        "TRIAGE_RETRAINED_MODEL_DIR": str(model_dir)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (model_dir / "model.skops").is_file()
    assert json.loads((model_dir / "model.json").read_text())["model_version"]
    assert _digests(packaged) == before
    assert f"writing {model_dir / 'model.skops'}" in r.stderr


def test_evaluate_plot_without_matplotlib_is_one_line(tmp_path: Path) -> None:
    png = tmp_path / "confusion.png"
    # matplotlib is installed here for the test extra; None in sys.modules makes its import
    # fail as it does after the Quick start's plain install.
    code = ("import sys; sys.modules['matplotlib'] = None; from triage.cli import main; "
            f"sys.exit(main(['evaluate', '--data', 'data/heldout/other.jsonl', "
            f"'--plot', {str(png)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "triage: evaluate: --plot needs matplotlib: pip install 'itx-triage[plot]'"]
    assert not png.exists() and "Traceback" not in r.stderr
