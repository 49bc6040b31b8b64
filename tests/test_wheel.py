"""The wheel is the product: built from this tree, installed into a fresh venv with the pinned
dependencies, and run from an empty folder, with nothing of the source tree importable.

Costs a wheel build and a venv install (pip's cache makes a second run quick).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from triage.sla import DEFAULT_POLICY_PATH, load_policy
from triage.sla_cli import due_json

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "data" / "samples").glob("*.eml"))

pytestmark = [pytest.mark.wheel, pytest.mark.slow]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout, check=False)
    assert r.returncode == 0, f"{argv}: {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(venv bin folder, environment): the wheel of this tree installed in a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("TRIAGE_")}
    # What the Dockerfile copies, so the build's build/ and egg-info stay out of the checkout
    # (symlinks kept: triage/_resources/ points at ../../data and ../../templates).
    src = tmp / "src"
    for name in ("pyproject.toml", "README.md"):
        src.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in ("triage", "classifiers", "data", "templates"):
        shutil.copytree(ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"),
          str(src)], tmp, env)
    (wheel,) = (tmp / "dist").glob("itx_triage-*.whl")
    _run([sys.executable, "-m", "venv", str(tmp / "venv")], tmp, env)
    bin_dir = tmp / "venv" / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "-c",
          str(ROOT / "constraints.txt"), str(wheel)], tmp, env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return bin_dir, env


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_the_installed_package_finds_its_files_in_site_packages(installed, empty) -> None:
    bin_dir, env = installed
    r = _run([str(bin_dir / "python"), "-c",
              "import triage, classifiers.artifact as a; from triage.resources import "
              "DATA_DIR, TEMPLATES_DIR; print(triage.__file__, DATA_DIR, TEMPLATES_DIR, "
              "a.DEFAULT_MODEL_PATH, sep='\\n')"], empty, env)
    venv = bin_dir.parent
    paths = [Path(line) for line in r.stdout.splitlines()]
    assert len(paths) == 4
    for p in paths:
        assert p.is_relative_to(venv) and p.exists(), p
    data, templates = paths[1], paths[2]
    assert sorted(p.name for p in (data / "samples").glob("*.eml")) == [p.name for p in SAMPLES]
    # Every data file of the tree (training, both held-out sets, rules, policy) is shipped.
    tracked = sorted(p.relative_to(ROOT / "data") for p in (ROOT / "data").rglob("*")
                     if p.is_file() and p.parent.name != "corrections")
    assert sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file()) == tracked
    shipped = sorted(p.relative_to(ROOT / "templates") for p in (ROOT / "templates").rglob("*")
                     if p.is_file())
    assert sorted(p.relative_to(templates) for p in templates.rglob("*") if p.is_file()) == (
        shipped)


def test_help_and_sla_due_from_an_empty_folder(installed, empty) -> None:
    bin_dir, env = installed
    r = _run([str(bin_dir / "triage"), "--help"], empty, env)
    assert "sla" in r.stdout and "demo" in r.stdout
    received = "2026-12-23T16:00:00-05:00"
    r = _run([str(bin_dir / "triage"), "sla", "due", "--type", "server_down", "--priority",
              "urgent", "--received", received], empty, env)
    # The same answer as this tree's policy gives: the wheel carries the same policy file.
    policy = load_policy(DEFAULT_POLICY_PATH)
    due = policy.due("server_down", "urgent", "standard", datetime.fromisoformat(received))
    assert json.loads(r.stdout) == due_json(due, policy.calendar("standard").tz)
    assert not list(empty.iterdir())  # a read-only command leaves nothing behind


def test_demo_once_from_an_empty_folder(installed, empty) -> None:
    bin_dir, env = installed
    r = _run([str(bin_dir / "triage"), "demo", "--once"], empty, env)
    assert f"{len(SAMPLES)} sample messages seeded" in r.stdout
    assert "ITX-000001" in r.stdout
    with sqlite3.connect(empty / "var" / "triage.db") as db:
        (messages,) = db.execute("SELECT count(*) FROM messages").fetchone()
        (orders,) = db.execute("SELECT count(*) FROM work_orders").fetchone()
        (sent,) = db.execute("SELECT count(*) FROM outbox WHERE status = 'sent'").fetchone()
    assert messages == len(SAMPLES) and orders >= 1
    assert len(list((empty / "var" / "outbox").glob("*.eml"))) == sent >= orders
    # `triage check` against the demo's own settings (issue 16 asks CI to run it).
    demo_env = {**env, "TRIAGE_MAILBOX_URL": f"maildir://{empty / 'var' / 'inbox'}",
                "TRIAGE_DATABASE_URL": f"sqlite:///{empty / 'var' / 'triage.db'}",
                "TRIAGE_SMTP_URL": f"dir://{empty / 'var' / 'outbox'}"}
    r = _run([str(bin_dir / "triage"), "check"], empty, demo_env)
    assert "FAIL" not in r.stdout and "database" in r.stdout, r.stdout
