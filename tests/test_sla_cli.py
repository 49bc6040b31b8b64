"""``triage sla due``: the JSON it prints and its one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from triage.cli import main
from triage.sla import DEFAULT_POLICY_PATH

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["sla", "due", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_friday_evening_email_problem(capsys):
    code, out, err = run(capsys, "--type", "email_problem", "--received", "2026-11-28T00:30:00Z")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "clock_start": "2026-11-27T19:30:00-05:00",
        "callback_due": "2026-11-30T08:30:00-05:00",
        "response_due": "2026-11-30T19:30:00-05:00",
        "fulfil_due": "2026-11-28T19:30:00-05:00",
        "milestones": [],
    }
    assert out.count("\n") == 1


def test_milestones_and_null_callback(capsys):
    code, out, _ = run(
        capsys, "--type", "physical_server_setup", "--received", "2026-11-25T10:00:00-05:00"
    )
    assert code == 0
    data = json.loads(out)
    assert data["callback_due"] is None
    assert data["fulfil_due"] == "2026-12-10T20:00:00-05:00"
    assert data["milestones"] == [
        {"name": "hardware", "due": "2026-12-03T20:00:00-05:00"},
        {"name": "configured", "due": "2026-12-10T20:00:00-05:00"},
    ]


def test_summer_offsets_and_24x7_contract(capsys):
    # Saturday 23:00 EST before spring forward; restore 4 h lands at 04:00 EDT.
    code, out, _ = run(
        capsys,
        "--type", "website_down", "--contract", "24x7", "--received", "2026-03-07T23:00:00-05:00",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert data["clock_start"] == "2026-03-07T23:00:00-05:00"
    assert data["fulfil_due"] == "2026-03-08T04:00:00-04:00"


def test_priority_lowered_to_high(capsys):
    code, out, _ = run(
        capsys,
        "--type", "website_down", "--priority", "high", "--received", "2026-11-30T17:00:00-05:00",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["fulfil_due"] == "2026-12-02T17:00:00-05:00"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--type", "nope", "--received", "2026-11-30T09:00:00Z"], "unknown request type 'nope'"),
        (["--type", "other", "--received", "yesterday"], "not an ISO 8601 instant"),
        (["--type", "other", "--received", "2026-11-30T09:00:00"], "needs a UTC offset"),
        (["--type", "other", "--received", "2026-13-30T09:00:00Z"], "not an ISO 8601 instant"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    assert needle in err
    assert err.count("\n") == 1 and err.endswith("\n")


def test_bad_priority_is_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sla", "due", "--type", "other", "--priority", "low", "--received", "2026-11-30Z"])
    assert info.value.code == 2
    _, err = capsys.readouterr()
    assert "invalid choice: 'low'" in err
    assert err.count("\n") == 1


def test_bad_policy_file_names_the_line(capsys, tmp_path):
    bad = tmp_path / "sla.toml"
    text = DEFAULT_POLICY_PATH.read_text().replace(
        "restore = { hours = 4 }", "restore = { hourz = 4 }"
    )
    bad.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "hourz" in s)
    code, out, err = run(
        capsys, "--type", "other", "--received", "2026-11-30T09:00:00Z", "--policy", str(bad)
    )
    assert (code, out) == (2, "")
    assert f"{bad}:{line}: types.website_down.restore: unknown unit 'hourz'" in err
    assert err.count("\n") == 1


def test_real_command_line():
    """The way a user runs it: a separate interpreter, ``python -m triage``."""
    proc = subprocess.run(
        [sys.executable, "-m", "triage", "sla", "due", "--type", "email_problem",
         "--received", "2026-11-26T10:00:00-05:00"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["clock_start"] == "2026-11-27T08:00:00-05:00"  # Thanksgiving is closed
    proc = subprocess.run(
        [sys.executable, "-m", "triage", "sla", "due", "--type", "bogus", "--received", "x"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1
