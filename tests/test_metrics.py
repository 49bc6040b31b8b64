"""Metrics: fixed label sets, the helpers' counts, and outbox gauges from a real SQLite DB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from triage.addresses import ACK_REASONS
from triage.metrics import (
    LOGIN_FAILURES,
    OUTCOMES,
    PRIORITIES,
    SCREENED_KINDS,
    SLA_STATES,
    SLA_TARGETS,
    TYPES,
    Metrics,
)
from triage.screening import SCREENED_BY
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Outbox
from triage.workorders import Outcome

ADDRESS = "alice@example.com"


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = m.exposition()
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


def test_registry_is_fresh_per_instance():
    a, b = Metrics(), Metrics()
    a.observe_send(True)
    assert value(a, "triage_ack_send_attempts_total") == 1
    assert value(b, "triage_ack_send_attempts_total") == 0


def test_observe_outcomes_counts_by_outcome_and_kind():
    m = Metrics()
    m.observe_outcomes([
        Outcome("1", "work_order", "ITX-000001", acked=True),
        Outcome("2", "work_order", "ITX-000002"),
        Outcome("3", "non_request", reason="bounce"),
        Outcome("4", "quarantined", reason=f"parse failed: From {ADDRESS} Subject: Help"),
        Outcome("5", "duplicate", reason="same Message-ID already stored"),
        Outcome("6", "non_request", reason=f"weird kind {ADDRESS}"),
        Outcome("7", f"made-up {ADDRESS}"),
    ])
    assert value(m, "triage_messages_total", outcome="work_order", kind="") == 2
    assert value(m, "triage_messages_total", outcome="non_request", kind="bounce") == 1
    assert value(m, "triage_messages_total", outcome="non_request", kind="other") == 1
    assert value(m, "triage_messages_total", outcome="quarantined", kind="") == 1
    assert value(m, "triage_messages_total", outcome="duplicate", kind="") == 1
    assert value(m, "triage_messages_total", outcome="other", kind="") == 1


def test_no_label_value_outside_the_fixed_sets():
    m = Metrics()
    m.observe_outcomes([Outcome("1", "quarantined", reason=f"From: Bob <{ADDRESS}>"),
                        Outcome("2", "non_request", reason=ADDRESS),
                        Outcome("3", ADDRESS, reason=ADDRESS)])
    m.observe_work_order(f"type {ADDRESS}", ADDRESS, 0.4, True)
    m.observe_work_order("printer_setup", "urgent", 0.93, False)
    m.observe_poll("support", 0.2, True)
    m.observe_suppressed(ADDRESS)
    m.observe_suppressed("role_address")
    m.observe_login_failure(ADDRESS)  # a name typed at the login is never a label
    m.observe_login_failure("delayed")
    m.observe_ack_suppressed(ADDRESS)
    m.observe_ack_suppressed("untrusted_sender")
    body, _ = m.exposition()
    assert b"@" not in body
    allowed = {"outcome": set(OUTCOMES), "kind": {*SCREENED_KINDS, ""}, "by": set(SCREENED_BY),
               "request_type": set(TYPES),
               "priority": set(PRIORITIES), "status": {"pending", "sending", "dead"},
               "mailbox": {"support"}, "target": set(SLA_TARGETS), "state": set(SLA_STATES),
               "reason": {*ACK_REASONS, "other", *LOGIN_FAILURES}}
    seen = set()
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            for k, v in s.labels.items():
                if k == "le":
                    continue
                assert v in allowed[k], (s.name, k, v)
                seen.add(k)
    assert {"outcome", "kind", "by", "request_type", "priority", "mailbox", "status",
            "reason"} <= seen
    assert value(m, "triage_outbox_suppressed_total", reason="other") == 1
    assert value(m, "triage_ack_suppressed_total", reason="other") == 1
    assert value(m, "triage_ack_suppressed_total", reason="untrusted_sender") == 1
    # the send-time counter keeps its own reasons: no sender-only code shows up there
    assert ("triage_outbox_suppressed_total", (("reason", "untrusted_sender"),)) not in samples(m)


def test_screened_messages_are_counted_per_kind_and_decider():
    m = Metrics()
    m.observe_outcomes([
        Outcome("1", "non_request", reason="spam", screened_by="model"),
        Outcome("2", "non_request", reason="spam", screened_by="model"),
        Outcome("3", "non_request", reason="bounce", screened_by="header"),
        Outcome("4", "non_request", reason="own", screened_by="store"),
        Outcome("5", "non_request", reason="thanks", screened_by=f"made-up {ADDRESS}"),
        Outcome("6", "quarantined", reason=f"parse failed: From {ADDRESS}"),
        Outcome("7", "work_order", "ITX-000001"),
    ])
    name = "triage_screened_messages_total"
    assert value(m, name, kind="spam", by="model") == 2
    assert value(m, name, kind="bounce", by="header") == 1
    assert value(m, name, kind="own", by="store") == 1
    assert value(m, name, kind="thanks", by="store") == 1  # an unknown decider is not a label
    assert value(m, name, kind="quarantined", by="store") == 1
    assert value(m, name, kind="auto_reply", by="header") == 0  # every series from the start
    assert sum(v for (n, _), v in samples(m).items() if n == name) == 6


def test_mailbox_id_must_not_be_an_address():
    m = Metrics()
    with pytest.raises(ValueError):
        m.observe_poll(ADDRESS, 0.1, True)
    with pytest.raises(ValueError):
        m.observe_poll("", 0.1, True)


def test_observe_work_order_send_and_poll():
    m = Metrics()
    m.observe_work_order("password_reset", "high", 0.97, False)
    m.observe_work_order("password_reset", "high", 0.55, True)
    m.observe_work_order("server_down", None, 0.8, False)
    m.observe_send(True)
    m.observe_send(False)
    m.observe_send(True)
    m.observe_poll("inbox-1", 0.3, True)
    m.observe_poll("inbox-1", 7.0, False)
    assert value(m, "triage_work_orders_opened_total",
                 request_type="password_reset", priority="high") == 2
    assert value(m, "triage_work_orders_opened_total",
                 request_type="server_down", priority="other") == 1
    assert value(m, "triage_work_orders_needs_review_total") == 1
    assert value(m, "triage_classifier_confidence_count") == 3
    assert value(m, "triage_classifier_confidence_bucket", le="0.6") == 1
    assert value(m, "triage_classifier_confidence_bucket", le="0.9") == 2
    assert value(m, "triage_ack_send_attempts_total") == 3
    assert value(m, "triage_ack_send_successes_total") == 2
    assert value(m, "triage_ack_send_failures_total") == 1
    assert value(m, "triage_mailbox_poll_seconds_count", mailbox="inbox-1") == 2
    assert value(m, "triage_mailbox_poll_seconds_bucket", mailbox="inbox-1", le="0.5") == 1
    assert value(m, "triage_mailbox_poll_failures_total", mailbox="inbox-1") == 1
    assert value(m, "triage_mailbox_last_success_timestamp_seconds", mailbox="inbox-1") > 0


def test_process_collector_reports_rss():
    assert value(Metrics(), "process_resident_memory_bytes") > 0
    assert ("process_resident_memory_bytes", ()) not in samples(Metrics(process=False))


def _row(i: int, status: str, created: datetime) -> Outbox:
    return Outbox(kind="ack", to_addr=f"user{i}@example.com", message_id=f"<m{i}@itx>",
                  template="ack", status=status, created_at=created, next_attempt_at=created)


def test_refresh_from_db_sets_depth_and_oldest_pending_age(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'triage.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    m = Metrics()
    m.refresh_from_db(sessions, now=now)
    assert value(m, "triage_outbox_depth", status="pending") == 0
    assert value(m, "triage_outbox_oldest_pending_age_seconds") == 0
    with sessions.begin() as s:
        s.add_all([
            _row(1, "sent", now - timedelta(days=3)),       # older, but sent: not counted
            _row(2, "pending", now - timedelta(hours=2)),
            _row(3, "pending", now - timedelta(minutes=5)),
            _row(4, "sending", now - timedelta(minutes=1)),
            _row(5, "dead", now - timedelta(days=9)),       # dead: not "pending"
        ])
    m.refresh_from_db(sessions, now=now)
    assert value(m, "triage_outbox_depth", status="pending") == 2
    assert value(m, "triage_outbox_depth", status="sending") == 1
    assert value(m, "triage_outbox_depth", status="dead") == 1
    assert value(m, "triage_outbox_oldest_pending_age_seconds") == 7200
    with sessions.begin() as s:
        s.get(Outbox, 2).status = "sent"  # type: ignore[union-attr]
    m.refresh_from_db(sessions, now=now)
    assert value(m, "triage_outbox_depth", status="pending") == 1
    assert value(m, "triage_outbox_oldest_pending_age_seconds") == 300
    body, _ = m.exposition()
    assert b"@" not in body
    engine.dispose()
