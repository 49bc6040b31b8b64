"""The deployment files agree with the code they deploy.

No Docker engine, Prometheus or Grafana runs here, so these tests check what can be checked
without them: every metric and label the alert rules and the dashboard query is one that
``triage.metrics.Metrics`` really exposes; the compose file's TRIAGE_* settings validate; the
Dovecot and systemd files pass their own tools; and the image's exact ENTRYPOINT (after
its init) + CMD line works outside the container (one pass, and the daemon answering the
HEALTHCHECK, then stopping cleanly on SIGTERM). tests/test_image.py builds and runs the image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.factories import free_port
from triage.config import MailboxURL, Settings
from triage.metrics import Metrics
from triage.oauth import Credential

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"

# Added by Prometheus itself, not by the exporter.
SCRAPE_LABELS = {"job", "instance"}
BUILTIN_METRICS = {"up"}
METRIC_NAME = re.compile(r"\b((?:triage|process)_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*\"([^\"]*)\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


# ---- what the daemon exposes ------------------------------------------------------------------
def _exposed() -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets it is exposed with. Polls are observed once so the
    mailbox-labelled series exist, as they do in a running daemon."""
    m = Metrics()
    m.observe_poll("helpdesk", 0.2, True)
    m.observe_poll("helpdesk", 0.2, False)
    m.observe_credential(Credential("oauth", "https://login.example.com/token", "app",
                                    "secret", secret_expires=datetime(2027, 6, 30, tzinfo=UTC)))
    m.observe_refresh_token("oauth", datetime(2027, 3, 1, tzinfo=UTC))
    body, _ = m.exposition()
    series: dict[str, list[dict[str, str]]] = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        head = line.rsplit(" ", 1)[0]
        name, _, labels = head.partition("{")
        series.setdefault(name, []).append(dict(
            (k, v) for k, _, v in MATCHER.findall(labels.rstrip("}"))))
    return series


EXPOSED = _exposed()
LABEL_NAMES = {k for sets in EXPOSED.values() for labels in sets for k in labels} | {"le"}


def _check_expr(expr: str, where: str) -> set[str]:
    """Assert every metric, matcher and grouping label in ``expr`` exists; return the names."""
    names = set(METRIC_NAME.findall(expr))
    unknown = names - EXPOSED.keys()
    assert not unknown, f"{where}: metrics not exposed by triage.metrics: {sorted(unknown)}"
    for name, matchers in SELECTOR.findall(expr):
        if name in BUILTIN_METRICS:
            continue
        assert name in EXPOSED, f"{where}: {name} is not exposed"
        for label, op, value in MATCHER.findall(matchers):
            if label in SCRAPE_LABELS:
                continue
            values = {s.get(label) for s in EXPOSED[name]}
            assert label in LABEL_NAMES and values - {None}, f"{where}: {name} has no {label}"
            if op == "=":
                assert value in values, f"{where}: {name}{{{label}={value!r}}} never exposed"
    for group in GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in group.split(","))):
            assert label in LABEL_NAMES | SCRAPE_LABELS, f"{where}: no label {label!r}"
    return names


def test_the_checker_rejects_a_misspelt_metric_or_label_value() -> None:
    with pytest.raises(AssertionError):
        _check_expr("rate(triage_ack_send_failure_total[5m])", "typo")
    with pytest.raises(AssertionError):
        _check_expr('triage_outbox_depth{status="failed"}', "bad value")
    with pytest.raises(AssertionError):
        _check_expr("sum by (type) (triage_work_orders_opened_total)", "bad label")
    assert _check_expr('triage_outbox_depth{job="triage",status="dead"} > 0', "ok") == {
        "triage_outbox_depth"}


# ---- Prometheus rules -------------------------------------------------------------------------
def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alert_rules_query_only_exposed_metrics_and_labels() -> None:
    rules = _rules()
    assert rules
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["annotations"]["summary"]
        assert rule["labels"]["severity"] in {"page", "warn"}
        _check_expr(str(rule["expr"]), rule["alert"])
    assert len({r["alert"] for r in rules}) == len(rules)


def test_alert_rules_cover_down_stuck_outbox_unpolled_mailbox_and_dead_letters() -> None:
    exprs = {r["alert"]: " ".join(str(r["expr"]).split()) for r in _rules()}
    assert 'up{job="triage"} == 0' in exprs["TriageDown"]
    assert "triage_outbox_oldest_pending_age_seconds >" in exprs["TriageOutboxStuck"]
    assert "time() - triage_mailbox_last_success_timestamp_seconds >" in exprs[
        "TriageMailboxNotPolled"]
    assert 'triage_outbox_depth{status="dead"}' in exprs["TriageOutboxDeadLetters"]
    assert ("triage_oauth_credential_expiry_timestamp_seconds - time() < 14 * 86400"
            in exprs["TriageOAuthCredentialExpiring"])
    assert 'triage_oauth_token_requests_total{outcome="rejected"}' in exprs[
        "TriageOAuthTokenRejected"]


# ---- Grafana dashboard ------------------------------------------------------------------------
def test_dashboard_panels_query_only_exposed_metrics_and_cover_the_brief() -> None:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used: set[str] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used |= _check_expr(t["expr"], p["title"])
    assert {
        "triage_messages_total", "triage_work_orders_opened_total",
        "triage_classifier_confidence_bucket", "triage_outbox_depth",
        "triage_outbox_oldest_pending_age_seconds", "triage_ack_send_failures_total",
        "triage_mailbox_poll_seconds_bucket", "process_resident_memory_bytes",
    } <= used


# ---- compose ----------------------------------------------------------------------------------
def test_compose_names_the_services_and_its_triage_settings_validate() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert {"postgres", "dovecot", "triage"} <= services.keys()
    triage = services["triage"]
    assert (DEPLOY / triage["build"]["context"] / triage["build"]["dockerfile"]).resolve() == (
        DOCKERFILE)
    env = {k: str(v) for k, v in triage["environment"].items()}
    assert all(k.startswith("TRIAGE_") for k in env)
    # extra="forbid" makes a misspelt variable an error here, not a silently ignored default.
    settings = Settings(**{k.removeprefix("TRIAGE_").lower(): v for k, v in env.items()})
    assert settings.database_url.startswith("postgresql://")
    assert settings.ops_host == "0.0.0.0" and settings.ops_port == 9108
    # plaintext IMAP is accepted only because triage shares dovecot's loopback.
    assert MailboxURL.parse(settings.mailbox_url).host == "127.0.0.1"
    assert triage["network_mode"] == "service:dovecot"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), source


@pytest.mark.skipif(shutil.which("doveconf") is None, reason="doveconf not installed")
def test_dovecot_trial_config_parses() -> None:
    r = subprocess.run(["doveconf", "-n", "-c", str(DEPLOY / "dovecot" / "dovecot.conf")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "passwd-file" in r.stdout


# ---- systemd ----------------------------------------------------------------------------------
def _unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_has_the_needed_keys() -> None:
    unit = _unit((DEPLOY / "triage.service").read_text())
    svc = unit["Service"]
    assert svc["User"] == ["triage"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["EnvironmentFile"] == ["/etc/triage/env"]
    assert svc["KillSignal"] == ["SIGTERM"]
    assert svc["TimeoutStopSec"] == ["45"]
    assert shlex.split(svc["ExecStartPre"][0])[1:] == ["db", "upgrade"]
    assert shlex.split(svc["ExecStart"][0])[1:] == ["run"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("triage") is None,
                    reason="systemd-analyze or the triage script not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = (DEPLOY / "triage.service").read_text()
    text = text.replace("/opt/triage/venv/bin/triage", str(shutil.which("triage")))
    unit = tmp_path / "triage.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


# ---- Dockerfile -------------------------------------------------------------------------------
def _instruction(name: str) -> str:
    """One Dockerfile instruction's arguments, continuation lines joined (last one wins)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = [line.split(None, 1)[1] for line in text.splitlines()
             if line.split(None, 1)[:1] == [name]]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def _exec_form(name: str) -> list[str]:
    value = json.loads(_instruction(name))
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _triage_entrypoint() -> list[str]:
    """The ENTRYPOINT after its init (tini, PID 1 in the container): what it runs."""
    init, _, command = " ".join(_exec_form("ENTRYPOINT")).partition(" -- ")
    assert init == "tini -e 143" and command
    return command.split()


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build expected"
    assert "python:3.11-slim" in text
    assert _instruction("USER").split(":")[0] not in {"root", "0"}
    assert _instruction("EXPOSE") == "9108"
    assert "TRIAGE_OPS_HOST=0.0.0.0" in text
    assert _instruction("HEALTHCHECK").endswith('CMD ["python", "-m", "triage.healthcheck"]')
    assert not text.startswith("# syntax=")  # BuildKit would pull it from a registry
    assert "pip install -e" not in text  # the wheel, not an editable tree
    assert "-c constraints.txt" in text
    # the files the code reads beside the package are copied to where it looks
    for path in ("triage", "classifiers", "data", "templates"):
        assert re.search(rf"^COPY {path} \./{path}$", text, re.MULTILINE), path
    assert (ROOT / "classifiers" / "model" / "model.skops").is_file()


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_dockerfile_passes_hadolint() -> None:
    r = subprocess.run(["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _container_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The process environment the image gives triage, with servers swapped for local files."""
    inbox = tmp_path / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    if shutil.which("triage") is None:  # the repo importable but not pip-installed
        script = shim / "triage"
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m triage "$@"\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update({
        "PATH": f"{shim}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "TRIAGE_MAILBOX_URL": f"maildir://{inbox}",
        "TRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'triage.db'}",
        "TRIAGE_SMTP_URL": f"dir://{tmp_path / 'outbox'}",
        "TRIAGE_ATTACHMENTS_DIR": str(tmp_path / "attachments"),
        "TRIAGE_LOG_FORMAT": "json",
        "TRIAGE_OPS_PORT": "0",
        **extra,
    })
    return env


def test_entrypoint_once_outside_the_container(tmp_path: Path) -> None:
    """``docker run itx-triage run --once``: migrations, one pass, acknowledgments, exit 0."""
    samples = sorted((ROOT / "data" / "samples").glob("*.eml"))[:3]
    env = _container_env(tmp_path)
    for i, sample in enumerate(samples):
        shutil.copy(sample, tmp_path / "inbox" / "new" / f"{i}.deploytest:2,")
    argv = [*_triage_entrypoint(), "run", "--once"]
    assert _exec_form("CMD") == ["run"]
    r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    with sqlite3.connect(tmp_path / "triage.db") as db:
        (messages,) = db.execute("SELECT count(*) FROM messages").fetchone()
        (orders,) = db.execute("SELECT count(*) FROM work_orders").fetchone()
        (unsent,) = db.execute(
            "SELECT count(*) FROM outbox WHERE status != 'sent'").fetchone()
    assert messages == 3 and orders >= 1 and unsent == 0
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == orders


def test_entrypoint_daemon_answers_healthcheck_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The default CMD: the HEALTHCHECK command passes against it, and SIGTERM to the
    process the entrypoint starts (triage itself; in the image tini passes it on) stops it
    with exit 0."""
    port = free_port()
    env = _container_env(tmp_path, TRIAGE_OPS_HOST="127.0.0.1", TRIAGE_OPS_PORT=str(port),
                         TRIAGE_POLL_INTERVAL="1")
    argv = [*_triage_entrypoint(), *_exec_form("CMD")]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    try:
        check = json.loads(_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
        r = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30,
                           check=False)
        assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert proc.returncode == 0, out[-3000:]
    assert '"stopped; counters' in out, out[-3000:]


def _healthcheck(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    check = json.loads(_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    return subprocess.run(check, env=_container_env(tmp_path, **extra), capture_output=True,
                          text=True, timeout=30, check=False)


def test_healthcheck_with_the_ops_listener_off_says_why_it_fails(tmp_path: Path) -> None:
    r = _healthcheck(tmp_path, TRIAGE_OPS_PORT="0")
    assert r.returncode == 1
    assert r.stdout.startswith("unhealthy: TRIAGE_OPS_PORT=0 turns off /healthz"), r.stdout


def test_healthcheck_fails_when_nothing_answers(tmp_path: Path) -> None:
    port = free_port()  # bound and released: nothing listens there now
    r = _healthcheck(tmp_path, TRIAGE_OPS_PORT=str(port))
    assert r.returncode == 1
    assert r.stdout.startswith(f"unhealthy: http://127.0.0.1:{port}/healthz"), r.stdout


def test_healthcheck_asks_a_wildcard_listener_on_loopback() -> None:
    from triage.healthcheck import healthz_url

    assert healthz_url("0.0.0.0", 9108) == "http://127.0.0.1:9108/healthz"
    assert healthz_url("::", 8080) == "http://[::1]:8080/healthz"
    assert healthz_url("10.1.2.3", 9108) == "http://10.1.2.3:9108/healthz"
