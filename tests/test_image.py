"""The image, built from the real Dockerfile by scripts/image.sh (podman, rootful, on a
stand-in for python:3.11-slim-bookworm made with mmdebstrap: no registry is reachable here)
and run as an operator would: a mounted Maildir, a volume for var/, SMTP to a loopback sink.

Cost: a cold build about 1.5-2 minutes (once per machine for the base, then per change of
pyproject.toml/constraints.txt for the dependency layer); warm, the tests about a minute.
Skipped only where podman is missing and cannot be installed (no root or no apt-get).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import free_port

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "data" / "samples").glob("*.eml"))
UID = 10001

pytestmark = [pytest.mark.image, pytest.mark.slow]


def _cannot_install_podman() -> str | None:
    if shutil.which("podman"):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return ("podman is not installed and cannot be here "
                "(scripts/image.sh installs it with apt-get, as root)")
    return None  # scripts/image.sh installs it


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "podman" / "containers.conf")}


def podman(*args: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["podman", *args], env=_env(), capture_output=True, text=True,
                       timeout=timeout, check=False)
    if check:
        assert r.returncode == 0, f"podman {' '.join(args)}: {r.returncode}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def image() -> str:
    reason = _cannot_install_podman()
    if reason:
        pytest.skip(reason)
    # One tag per checkout: other checkouts on this machine share the image store.
    tag = f"localhost/itx-triage:test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]}"
    r = subprocess.run([str(ROOT / "scripts" / "image.sh"), tag], env=_env(),
                       capture_output=True, text=True, timeout=1800, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return tag


def _owned_dir(path: Path) -> Path:
    """A host folder the container's user (10001) may write."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


def _maildir(root: Path) -> Path:
    for sub in ("new", "cur", "tmp"):
        _owned_dir(root / sub)
    os.chown(root, UID, UID)
    return root


@contextlib.contextmanager
def container(image: str, *args: str, env: dict[str, str], volumes: dict[Path, str],
              healthcheck: bool = False) -> Iterator[str]:
    """A detached container (host network: no bridge here); removed afterwards."""
    name = f"itx-test-{uuid.uuid4().hex[:12]}"
    argv = ["run", "-d", "--name", name, "--network", "host"]
    if not healthcheck:
        argv.append("--no-healthcheck")
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    for host, inside in volumes.items():
        argv += ["-v", f"{host}:{inside}"]
    podman(*argv, image, *args)
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def _logs(name: str) -> str:
    r = podman("logs", name, check=False)
    return (r.stdout + r.stderr)[-4000:]


def _wait_healthz(name: str, port: int, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while True:
        state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
        assert state == "running", f"container {state}:\n{_logs(name)}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                assert r.status == 200
                return
        except OSError:
            assert time.monotonic() < deadline, f"no /healthz after {limit} s:\n{_logs(name)}"
            time.sleep(0.2)


def _stop(name: str) -> int:
    """``podman stop`` with 5 s grace, then the container's exit code: 137 (SIGKILL) when it
    did not stop by itself in those 5 s."""
    podman("stop", "-t", "5", name, timeout=60)
    return int(podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip())


def _alembic_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "triage" / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head
    return head


def test_daemon_in_the_image_triages_a_mounted_maildir_and_stops_on_sigterm(
        image, tmp_path, smtp_sink) -> None:
    inbox = _maildir(tmp_path / "inbox")
    var = _owned_dir(tmp_path / "var")
    requests = [s for s in SAMPLES if s.name.startswith(("01-", "08-"))]
    for i, sample in enumerate(requests):
        shutil.copy(sample, inbox / "new" / f"{i}.imagetest:2,")
        os.chown(inbox / "new" / f"{i}.imagetest:2,", UID, UID)
    port = free_port()
    env = {"TRIAGE_MAILBOX_URL": "maildir:///mail/inbox",
           "TRIAGE_SMTP_URL": f"smtp+plain://127.0.0.1:{smtp_sink.port}",
           "TRIAGE_OPS_PORT": str(port), "TRIAGE_POLL_INTERVAL": "1",
           "TRIAGE_OUTBOX_INTERVAL": "1"}
    with container(image, env=env, volumes={inbox: "/mail/inbox", var: "/app/var"},
                   healthcheck=True) as name:
        _wait_healthz(name, port)
        # The image's HEALTHCHECK, run by hand (no systemd here to run it on a timer).
        r = podman("healthcheck", "run", name, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        health = json.loads(podman("inspect", name, "--format",
                                   "{{json .State.Health}}").stdout)
        assert health["Status"] == "healthy"
        assert health["Log"][-1]["Output"].startswith(f"healthy: http://127.0.0.1:{port}/")
        # Every process runs as the image's user: tini, the daemon, its ingest worker.
        top = podman("top", name, "huser", "args").stdout.splitlines()[1:]
        assert len(top) >= 3, top
        assert {line.split()[0] for line in top} == {str(UID)}, top
        # The mail is triaged and acknowledged through the loopback SMTP server.
        deadline = time.monotonic() + 120
        while len(smtp_sink.received) < len(requests):
            assert time.monotonic() < deadline, _logs(name)
            time.sleep(0.2)
        code = _stop(name)
        assert code == 0, _logs(name)
        assert '"stopped; counters' in _logs(name)
    with sqlite3.connect(var / "triage.db") as db:
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        (orders,) = db.execute("SELECT count(*) FROM work_orders").fetchone()
        sent = db.execute("SELECT to_addr FROM outbox WHERE status = 'sent'").fetchall()
    assert version == _alembic_head()
    assert orders == len(requests) == len(sent)
    assert sorted(r.rcpt_tos[0] for r in smtp_sink.received) == sorted(a for (a,) in sent)
    assert all(b"[ITX-" in r.data for r in smtp_sink.received)
    # Marked in the mailbox: moved to the .Triaged folder (in the mounted Maildir, as 10001).
    assert os.listdir(inbox / "new") == [] and os.listdir(inbox / "cur") == []
    moved = list((inbox / ".Triaged" / "cur").iterdir())
    assert len(moved) == len(requests)


@pytest.mark.parametrize("after", [0.0, 0.3, 1.0, 2.5])
def test_sigterm_at_any_moment_of_start_up_is_a_clean_exit(image, tmp_path, after) -> None:
    """Early in start-up (imports), during migrations and the worker's start, and in the
    running loop."""
    inbox = _maildir(tmp_path / "inbox")
    var = _owned_dir(tmp_path / "var")
    env = {"TRIAGE_MAILBOX_URL": "maildir:///mail/inbox", "TRIAGE_OPS_PORT": str(free_port())}
    with container(image, env=env, volumes={inbox: "/mail/inbox", var: "/app/var"}) as name:
        time.sleep(after)
        assert _stop(name) == 0, _logs(name)


def test_sigterm_before_python_has_a_signal_handler_is_a_clean_exit(image, tmp_path) -> None:
    """The first instant of start-up, made 3 s long: a sitecustomize that sleeps runs before
    any triage code. With triage as PID 1 the kernel dropped this SIGTERM (no handler yet)
    and podman killed the container 5 s later (exit 137)."""
    slow = tmp_path / "slowstart"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(3)\n")
    inbox = _maildir(tmp_path / "inbox")
    var = _owned_dir(tmp_path / "var")
    env = {"TRIAGE_MAILBOX_URL": "maildir:///mail/inbox", "TRIAGE_OPS_PORT": "0",
           "PYTHONPATH": "/slowstart"}
    with container(image, env=env, volumes={inbox: "/mail/inbox", var: "/app/var",
                                            slow: "/slowstart:ro"}) as name:
        time.sleep(1)
        assert _stop(name) == 0, _logs(name)


def test_healthcheck_with_the_ops_listener_off_reports_why(image, tmp_path) -> None:
    inbox = _maildir(tmp_path / "inbox")
    var = _owned_dir(tmp_path / "var")
    env = {"TRIAGE_MAILBOX_URL": "maildir:///mail/inbox", "TRIAGE_OPS_PORT": "0"}
    with container(image, env=env, volumes={inbox: "/mail/inbox", var: "/app/var"},
                   healthcheck=True) as name:
        r = podman("healthcheck", "run", name, check=False)
        assert r.returncode != 0
        health = json.loads(podman("inspect", name, "--format",
                                   "{{json .State.Health}}").stdout)
        assert "TRIAGE_OPS_PORT=0 turns off /healthz" in health["Log"][-1]["Output"]
        assert _stop(name) == 0, _logs(name)


def test_one_off_commands_and_train_in_the_image(image, tmp_path) -> None:
    """``triage train`` writes its model to the var volume (the installation is read-only
    to the image's user); ``sla due`` and ``--help`` need no setup at all."""
    var = _owned_dir(tmp_path / "var")
    base = ["run", "--rm", "--network", "host", "--no-healthcheck"]
    r = podman(*base, image, "--help")
    assert "usage: triage" in r.stdout
    r = podman(*base, image, "sla", "due", "--type", "password_reset", "--received",
               "2026-12-23T16:00:00-05:00")
    assert json.loads(r.stdout)["response_due"].startswith("2026-12-")
    podman(*base, "-v", f"{var}:/app/var", image, "train", "--quiet", timeout=900)
    meta = json.loads((var / "model" / "model.json").read_text())
    assert meta["metrics"]["heldout"]["n"] > 0  # the shipped held-out set was found
    assert (var / "model" / "model.skops").stat().st_uid == UID
