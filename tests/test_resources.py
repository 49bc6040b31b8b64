"""Where the shipped files are found, and the settings and options that replace each of them.

tests/test_wheel.py checks the same lookup in an installed wheel.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import pytest

from classifiers.artifact import DEFAULT_MODEL_PATH
from tests.factories import ack_view
from triage.ack import make_env, render_ack
from triage.cli import main
from triage.config import Settings
from triage.resources import DATA_DIR, TEMPLATES_DIR
from triage.web.app import make_templates

ROOT = Path(__file__).resolve().parents[1]


def test_the_checkout_is_found_through_the_package_links() -> None:
    assert (ROOT / "data").resolve() == DATA_DIR
    assert (ROOT / "templates").resolve() == TEMPLATES_DIR
    link = files("triage") / "_resources" / "data"
    assert isinstance(link, Path) and link.is_symlink()
    assert (link / "sla_policy.toml").read_bytes() == (ROOT / "data" / "sla_policy.toml"
                                                       ).read_bytes()


@pytest.fixture
def own_templates(tmp_path: Path) -> Path:
    """A copy of the shipped templates with a marker in the generic acknowledgment."""
    own = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, own)
    other = own / "email" / "ack" / "other.txt.j2"
    other.write_text("OWN-TEMPLATE-MARKER\n" + other.read_text())
    return own


def _ack_text(templates: Path | None) -> str:
    v = replace(ack_view("printer"), request_type="no_template_of_its_own")
    msg = render_ack(make_env(templates), v, from_address="helpdesk@itx.net",
                     from_name="ITX Helpdesk", phone="800")
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_templates_dir_setting_replaces_the_acknowledgments(own_templates: Path) -> None:
    settings = Settings(templates_dir=own_templates)
    assert "OWN-TEMPLATE-MARKER" in _ack_text(settings.templates_dir)
    assert "OWN-TEMPLATE-MARKER" not in _ack_text(Settings().templates_dir)


def test_templates_dir_replaces_the_staff_pages(own_templates: Path) -> None:
    page = make_templates(own_templates).get_template("web/login.html.j2")
    assert page.filename is not None and Path(page.filename).is_relative_to(own_templates)
    shipped = make_templates().get_template("web/login.html.j2")
    assert shipped.filename is not None and Path(shipped.filename).is_relative_to(TEMPLATES_DIR)


def test_demo_seeds_from_the_samples_option(tmp_path: Path, capsys) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    for src in sorted((DATA_DIR / "samples").glob("*.eml"))[:2]:
        shutil.copy(src, samples / src.name)
    var = tmp_path / "var"
    assert main(["demo", "--once", "--var", str(var), "--samples", str(samples)]) == 0
    assert "demo: 2 sample messages seeded" in capsys.readouterr().out


def test_train_writes_to_the_retrained_model_dir_unless_told(tmp_path: Path, monkeypatch
                                                              ) -> None:
    """Never over the packaged model: part of the installation (read-only in the image)."""
    data = tmp_path / "train"
    data.mkdir()
    for f in sorted((DATA_DIR / "training").glob("*.jsonl")):
        lines = [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        (data / f.name).write_text("\n".join(lines[:15]) + "\n")
    packaged = hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest()
    models = tmp_path / "models"
    monkeypatch.setenv("TRIAGE_RETRAINED_MODEL_DIR", str(models))
    assert main(["train", "--data", str(data), "--quiet"]) == 0
    assert (models / "model.skops").is_file() and (models / "model.json").is_file()
    assert hashlib.sha256(DEFAULT_MODEL_PATH.read_bytes()).hexdigest() == packaged
