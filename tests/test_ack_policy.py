"""Issue 14 items 4 and 5 at enqueue time: no acknowledgment is queued for a sender the address
policy refuses, and the rate limits count the normalised address, the domain (not free
mail) and all acknowledgments of the hour. Generated messages, on real SQLite and
PostgreSQL through the store; the daemon test runs them through the real Dovecot, the
real classifier and an aiosmtpd sink and checks what the sink received."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from tests.factories import NOW, ingest, mail, msg, received, req
from triage.parse import parse
from triage.sla import load_policy
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Event, Outbox, WorkOrder
from triage.workorders import Outcome, StoreConfig, WorkOrderStore

# Issue 14 item 4: whom no acknowledgment may reach, and the reason code recorded.
REFUSED = {
    "noreply@bank.example": "role_address",
    "no-reply@bank.example": "role_address",
    "MAILER-DAEMON@relay.example": "role_address",
    # staff and our domains may write in (a work order), but are never acknowledged
    "helpdesk-lead@itx.net": "own_address",
    "anyone@mail.itx.net": "own_address",
    # triage.sender reads a quoted list as no one sender before the policy sees it
    '"v1@a.test,v2@b.test"@x.test': "untrusted_sender",
    "user@[192.0.2.1]": "ip_literal",
    "user@192.0.2.1": "ip_literal",
    "user@localhost": "dotless_domain",
}
# The helpdesk's own mailbox in other spellings: its mail come back is ours (store rule 4).
HELPDESK_SPELLINGS = ["helpdesk+x@itx.net", "helpdesk@itx.net.", '"helpdesk"@itx.net',
                      "HelpDesk@ITX.net", "help.desk@itx.net"]
# Issue 14 item 5: one mailbox in other spellings, each after the cap was reached.
VICTIM = "victim@corp.test"
SPELLINGS = ["victim+1@corp.test", "victim+2@corp.test", '"victim"@corp.test',
             "victim@corp.test.", "vic.tim@corp.test", "VICTIM@Corp.Test"]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def make_store(db: Engine, tmp_path: Path) -> Callable[..., WorkOrderStore]:
    upgrade(db)

    def make(clock: Callable[[], datetime] = lambda: NOW, **limits: Any) -> WorkOrderStore:
        cfg = StoreConfig("helpdesk@itx.net", limits.pop("per_address", 2), tmp_path / "att",
                          0.6, own_addresses=("helpdesk-lead@itx.net",), **limits)
        return WorkOrderStore(make_sessionmaker(db), load_policy(), cfg, clock)

    return make


def batch(senders: list[str], first_uid: int) -> list:
    """One request from each sender, each its own message (own Message-ID and body)."""
    return [ingest(mail(first_uid + i, frm=s, body=f"Outlook is broken ({first_uid + i})"),
                   req()) for i, s in enumerate(senders)]


def refusals(db: Engine) -> list[tuple[str, str]]:
    """(requester, reason) of every ack_suppressed event, in order."""
    with make_sessionmaker(db)() as s:
        return [(wo.requester, e.detail["reason"]) for e, wo in s.execute(
            select(Event, WorkOrder).join(WorkOrder, WorkOrder.id == Event.work_order_id)
            .where(Event.action == "ack_suppressed").order_by(Event.id))]


def acked_to(db: Engine) -> list[str]:
    with make_sessionmaker(db)() as s:
        return list(s.scalars(select(Outbox.to_addr).where(Outbox.kind == "ack")
                              .order_by(Outbox.id)))


def refused(outcomes: list[Outcome]) -> list[str | None]:
    return [o.ack_refused for o in outcomes]


def test_no_ack_to_role_own_listed_ip_or_dotless_senders(make_store, db: Engine) -> None:
    senders = ["dana@harborview.com", *REFUSED]
    outs = make_store().store_batch(batch(senders, 1))
    assert [o.disposition for o in outs] == ["work_order"] * len(senders)
    assert refused(outs) == [None, *REFUSED.values()]
    assert [o.acked for o in outs] == [True] + [False] * len(REFUSED)
    assert acked_to(db) == ["dana@harborview.com"]
    # The requester of the quoted list is nobody: the field names no one sender.
    requesters = [parse(mail(1, frm=s).data or b"").from_addr for s in REFUSED]
    assert refusals(db) == list(zip(requesters, REFUSED.values(), strict=True))
    with make_sessionmaker(db)() as s:
        why = s.scalars(select(Event.detail).where(Event.action == "ack_suppressed")).all()
    assert all(w["why"] for w in why)  # the words beside the code


def test_mail_from_the_helpdesk_in_any_spelling_is_our_own(make_store, db: Engine) -> None:
    outs = make_store().store_batch(batch(HELPDESK_SPELLINGS, 1))
    assert [(o.disposition, o.reason) for o in outs] == [("non_request", "own")] * len(
        HELPDESK_SPELLINGS)
    assert acked_to(db) == []
    with make_sessionmaker(db)() as s:
        assert s.scalar(select(func.count()).select_from(WorkOrder)) == 0


def test_one_mailbox_in_any_spelling_counts_once_across_batches(make_store, db: Engine) -> None:
    clock = Clock(NOW)
    st = make_store(clock)
    assert refused(st.store_batch(batch([VICTIM, VICTIM], 1))) == [None, None]
    outs = st.store_batch(batch(SPELLINGS, 10))  # counted from the stored rows' to_key
    assert refused(outs) == ["rate_address"] * len(SPELLINGS)
    assert acked_to(db) == [VICTIM, VICTIM]
    assert refusals(db) == [(parse(mail(1, frm=s).data or b"").from_addr, "rate_address")
                            for s in SPELLINGS]
    with make_sessionmaker(db)() as s:
        assert set(s.execute(select(Outbox.to_key, Outbox.to_domain))) == {
            ("victim@corp.test", "corp.test")}
    clock.now = NOW + timedelta(hours=1, minutes=1)  # the hour has passed
    assert refused(st.store_batch(batch(["victim+3@corp.test"], 30))) == [None]


def test_one_mailbox_in_any_spelling_counts_once_within_a_batch(make_store, db: Engine) -> None:
    outs = make_store().store_batch(batch([VICTIM, *SPELLINGS], 1))
    assert refused(outs) == [None, None] + ["rate_address"] * (len(SPELLINGS) - 1)
    assert acked_to(db) == [VICTIM, SPELLINGS[0]]


def test_per_domain_and_global_limits_and_free_mail(make_store, db: Engine) -> None:
    st = make_store(per_address=5, ack_rate_per_domain_per_hour=3, ack_rate_global_per_hour=6)
    first = st.store_batch(batch(["a@corp.test", "b@corp.test", "c@corp.test",
                                  "x1@gmail.com"], 1))
    assert refused(first) == [None] * 4
    second = st.store_batch(batch(["d@corp.test", "D@Corp.Test.", "x2@gmail.com",
                                   "x3@gmail.com", "e@other.test"], 10))
    # corp.test is full; gmail.com is free mail (no per-domain limit) until all six are used
    assert refused(second) == ["rate_domain", "rate_domain", None, None, "rate_global"]
    assert acked_to(db) == ["a@corp.test", "b@corp.test", "c@corp.test", "x1@gmail.com",
                            "x2@gmail.com", "x3@gmail.com"]
    # within one batch the same limits hold
    st2 = make_store(per_address=5, ack_rate_per_domain_per_hour=1, ack_rate_global_per_hour=2,
                     clock=lambda: NOW + timedelta(hours=2))
    outs = st2.store_batch(batch(["f@one.test", "g@one.test", "h@two.test", "i@three.test"],
                                 20))
    assert refused(outs) == [None, "rate_domain", None, "rate_global"]


def test_staff_opening_a_stored_message_meets_the_same_policy(make_store, db: Engine) -> None:
    st = make_store()
    sessions = make_sessionmaker(db)
    with sessions.begin() as s:
        opened = st.open_work_order(s, parse(mail(1, frm="noreply@bank.example").data or b""),
                                    req(), NOW, actor="ann")
    assert not opened.acked and acked_to(db) == []
    assert refusals(db) == [("noreply@bank.example", "role_address")]


def test_old_outbox_rows_get_their_keys_in_the_migration(db: Engine, tmp_path: Path) -> None:
    upgrade(db, "0008")
    rows = [("Victim+1@Corp.Test", "victim@corp.test", "corp.test"),
            ('"vic.tim"@corp.test.', "victim@corp.test", "corp.test"),
            ("raj@patelcpa.com", "raj@patelcpa.com", "patelcpa.com"),
            ("not an address", None, None)]
    with db.begin() as conn:
        for i, (to_addr, _, _) in enumerate(rows):
            conn.execute(text(
                "INSERT INTO outbox (kind, to_addr, message_id, template, context, status, "
                "attempts, next_attempt_at, created_at) VALUES ('ack', :to, :mid, 'ack/x', "
                "'{}', 'sent', 1, :at, :at)"),
                {"to": to_addr, "mid": f"old{i}@itx.net", "at": NOW - timedelta(minutes=10)})
    upgrade(db)
    with db.connect() as conn:
        got = conn.execute(text("SELECT to_addr, to_key, to_domain FROM outbox ORDER BY id"))
        assert [tuple(r) for r in got] == rows
    # and the old rows count: two acknowledgments to the victim in the last hour already
    st = WorkOrderStore(make_sessionmaker(db), load_policy(),
                        StoreConfig("helpdesk@itx.net", 2, tmp_path / "att", 0.6), lambda: NOW)
    assert refused(st.store_batch(batch([VICTIM], 1))) == ["rate_address"]


# ---- through the daemon: real Dovecot, real classifier, aiosmtpd ------------------------------
BODIES = [
    "Hi, I typed my password wrong too many times and now Outlook says my account is locked. "
    "Can you reset my password please?",
    "The office printer does not print anything since this morning, please set it up again.",
    "Our website is down and shows a 503 error, clients cannot reach the upload portal.",
]


def request(n: int, frm: str) -> bytes:
    return msg(n, frm, f"Help needed {n}", BODIES[n % len(BODIES)], mid=f"<p{n}@client.test>")


@pytest.mark.imap
async def test_policy_and_limits_through_the_daemon(make_service, dovecot,
                                                     smtp_sink) -> None:
    # per address 2, per domain 4, 10 in all; the lead's address is ours (Settings default)
    overrides = dict(ack_rate_per_hour=2, ack_rate_per_domain_per_hour=4,
                     ack_rate_global_per_hour=10)
    dovecot.append(request(1, VICTIM))
    dovecot.append(request(2, f"Victim <{VICTIM}>"))
    svc = make_service(**overrides)
    assert await svc.run_once() == 2
    later: list[tuple[str, str | None]] = [
        *((s, "rate_address") for s in SPELLINGS),      # counted from the stored rows
        # (the header screen takes MAILER-DAEMON's mail for a bounce: no work order at all)
        *((s, why) for s, why in REFUSED.items() if not s.startswith("MAILER-DAEMON")),
        ("ann@corp.test", None), ("bob@corp.test", None),  # corp.test: 4 with the victim's
        ("cy@corp.test", "rate_domain"),
        ("a@gmail.com", None), ("b@gmail.com", None), ("c@gmail.com", None),  # free mail
        ("d1@one.test", None), ("d2@two.test", None),
        ("d3@three.test", None),  # the 10th acknowledgment of the hour
        ("e@four.test", "rate_global"),
    ]
    for n, (frm, _) in enumerate(later, 3):
        dovecot.append(request(n, frm))
    svc = make_service(**overrides)  # the daemon run again, on the same database
    assert await svc.run_once() == len(later)

    with svc.c.sessions() as s:
        wos = list(s.scalars(select(WorkOrder).order_by(WorkOrder.id)))
    assert len(wos) == 2 + len(later)  # every one is a work order: nothing else is lost
    acked = [VICTIM, VICTIM, *(f for f, why in later if why is None)]
    assert sorted(a["To"] for a in received(smtp_sink)) == sorted(acked)
    assert [r.rcpt_tos for r in smtp_sink.received] == [(a,) for a in acked]
    want = [(parse(mail(1, frm=f).data or b"").from_addr, why) for f, why in later if why]
    assert refusals(svc.c.engine) == want
    with svc.c.sessions() as s:  # nothing was queued only to be stopped at send time
        assert s.scalar(select(Outbox).where(Outbox.status != "sent")) is None
    metrics = svc.c.metrics.registry
    for reason in {why for _, why in want}:
        assert metrics.get_sample_value("triage_ack_suppressed_total", {"reason": reason}) == (
            sum(1 for _, w in want if w == reason)), reason
    assert metrics.get_sample_value("triage_outbox_suppressed_total",
                                    {"reason": "own_address"}) == 0
