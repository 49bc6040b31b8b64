"""Screened mail on real SQLite and PostgreSQL: what the store keeps about a screening, the
list and its count, "open as work order" (due dates from the original arrival, the
acknowledgment in the outbox, a correction, an audit event, once only) and "reprocess" of
quarantined mail through the same ingestion as fetched mail, once only; then the same
through the pages and the JSON API (login, CSRF, escaping)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from classifiers.types import Decision, EmailInput, Evidence
from tests.factories import Clock
from triage.desk import users
from triage.desk.actions import ActionError, Desk, DeskConfig, NotFound
from triage.desk.screened import (
    REPROCESS_MAILBOX,
    ScreenedFilter,
    Screening,
    awaiting_count,
    screened_page,
)
from triage.ingest import LocalIngest
from triage.messages import RawMessage
from triage.parse import parse
from triage.sla import load_policy
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Correction, Event, Fetch, Message, Outbox, WorkOrder
from triage.web.app import WebDeps, create_web_app
from triage.workorders import Ingest, StoreConfig, WorkOrderStore

FRI_10 = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)  # Friday 10:00 New York
MBOX = "imap://helpdesk@127.0.0.1:1/INBOX"
PASSWORD = "correct horse battery"
XSS = '<script>window.__xss=1</script><img src=x onerror="alert(2)">'

SPAM = Decision(label="not_a_request", confidence=0.71, priority=None, needs_review=False,
                non_request_kind="spam", model_version="m-1",
                evidence=(Evidence("model", "mail stopped", 0.42), Evidence("rule", "act now",
                                                                            0.3)),
                best_request="email_problem", best_request_confidence=0.22)
BOUNCE = Decision(label="not_a_request", confidence=1.0, priority=None, needs_review=False,
                  non_request_kind="bounce", model_version="m-1", screened_by="header",
                  evidence=(Evidence("header", "Content-Type: multipart/report", 1.0),))
REQUEST = Decision(label="email_problem", confidence=0.93, priority="urgent",
                   needs_review=False, model_version="m-1")


def mail(uid: int, subject: str = "mail stopped syncing", body: str = "since 7am, no mail",
         frm: str = "dana@harborview.com", html: str | None = None) -> bytes:
    head = (f"From: Dana <{frm}>\r\nTo: helpdesk@itx.net\r\nSubject: {subject}\r\n"
            f"Message-ID: <s{uid}@harborview.com>\r\nMIME-Version: 1.0\r\n")
    if html is None:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()
    return (head + 'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n--b\r\n"
            f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--b--\r\n").encode()


def raw_of(uid: int, data: bytes, at: datetime) -> RawMessage:
    return RawMessage(MBOX, 7, str(uid), len(data), data, internal_date=at)


class FixedClassifier:
    """Stands in for the model in ``LocalIngest``: every message gets ``decision``."""

    version = "fixed"

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.calls = 0

    def classify_many(self, emails: Sequence[EmailInput]) -> list[Decision]:
        self.calls += 1
        return [self.decision for _ in emails]


class Env:
    def __init__(self, db_url: str, tmp: Path) -> None:
        self.engine = make_engine(db_url)
        upgrade(self.engine)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.reads = make_read_sessionmaker(self.engine)
        self.policy = load_policy()
        self.clock = Clock(FRI_10)
        self.store = WorkOrderStore(self.sessions, self.policy,
                                    StoreConfig("helpdesk@itx.net", 50, tmp / "att", 0.6),
                                    self.clock)
        self.classifier = FixedClassifier(REQUEST)
        self.ingest = LocalIngest(self.store, self.classifier)
        self.acks_refused: list[str] = []  # what the daemon's metric would count
        self.screening = Screening(self.sessions, self.policy, self.store, self.clock,
                                   reprocess=self.ingest.store,
                                   on_ack_refused=self.acks_refused.append)

    def put(self, uid: int, decision: Decision | None, at: datetime, *, data: bytes | None = None,
            error: str | None = None) -> int:
        """Store one message as fetched; its ``messages.id``."""
        data = data if data is not None else mail(uid)
        raw = raw_of(uid, data, at)
        item = (Ingest(raw=raw, error=error) if error else
                Ingest(raw=raw, parsed=parse(data), decision=decision))
        self.store.store_batch([item])
        with self.reads() as s:
            pk = s.scalar(select(Fetch.message_pk).where(Fetch.mailbox == MBOX,
                                                         Fetch.uid == str(uid)))
            assert pk is not None
            return pk

    def message(self, pk: int) -> Message:
        with self.reads() as s:
            m = s.get(Message, pk)
            assert m is not None
            s.expunge(m)
            return m

    def count(self, model: Any, *where: Any) -> int:
        with self.reads() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture
def env(db_url: str, tmp_path: Path):
    e = Env(db_url, tmp_path)
    yield e
    e.engine.dispose()


# ---- what the store keeps -------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False], ids=["bulk", "careful"])
def test_the_store_keeps_who_screened_and_why(env: Env, fast: bool) -> None:
    env.store.fast = fast
    spam = env.put(1, SPAM, FRI_10)
    bounce = env.put(2, BOUNCE, FRI_10)
    own = env.put(3, REQUEST, FRI_10, data=mail(3, frm="helpdesk@itx.net"))
    request = env.put(4, REQUEST, FRI_10)
    m = env.message(spam)
    assert (m.disposition, m.reason, m.screened_by) == ("non_request", "spam", "model")
    assert m.screening is not None
    assert m.screening["confidence"] == 0.71 and m.screening["model_version"] == "m-1"
    assert m.screening["best_request"] == "email_problem"
    assert [e["text"] for e in m.screening["evidence"]] == ["mail stopped", "act now"]
    m = env.message(bounce)
    assert (m.reason, m.screened_by) == ("bounce", "header")
    assert m.screening is not None and m.screening["header"] == "Content-Type: multipart/report"
    m = env.message(own)
    assert (m.reason, m.screened_by) == ("own", "store")
    m = env.message(request)
    assert (m.disposition, m.screened_by, m.screening) == ("work_order", None, None)


# ---- the list --------------------------------------------------------------------------------
def test_the_list_is_newest_first_filtered_and_counted(env: Env) -> None:
    old_spam = env.put(1, SPAM, FRI_10 - timedelta(days=8))
    spam = env.put(2, SPAM, FRI_10 - timedelta(days=2))
    bounce = env.put(3, BOUNCE, FRI_10 - timedelta(days=1))
    broken = env.put(4, None, FRI_10 - timedelta(hours=1), error="unparseable: no headers")
    env.put(5, REQUEST, FRI_10)
    with env.reads() as s:
        page = screened_page(s, ScreenedFilter(), FRI_10)
        assert [r.id for r in page.rows] == [broken, bounce, spam, old_spam]
        assert page.total == 4
        assert page.counts == {"bounce": 1, "quarantined": 1, "spam": 2}
        # The model's screenings and the quarantine of the last 7 days; not the header's.
        assert page.awaiting == awaiting_count(s, FRI_10) == 2
        rows = {r.id: r for r in page.rows}
        assert rows[spam].reason == "text model 71 %: mail stopped, act now"
        assert rows[bounce].reason == "header Content-Type: multipart/report"
        assert rows[broken].reason == "unparseable: no headers"
        assert rows[broken].kind == "quarantined"
        assert [r.id for r in screened_page(s, ScreenedFilter(kind="spam"), FRI_10).rows] == [
            spam, old_spam]
        assert [r.id for r in screened_page(s, ScreenedFilter(by="header"), FRI_10).rows] == [
            bounce]
        assert [r.id for r in screened_page(s, ScreenedFilter(kind="quarantined"),
                                            FRI_10).rows] == [broken]
        two = screened_page(s, ScreenedFilter(page=2, page_size=3), FRI_10)
        assert (two.page, two.pages, [r.id for r in two.rows]) == (2, 2, [old_spam])


# ---- open as work order --------------------------------------------------------------------
def test_open_as_work_order_counts_from_the_original_arrival_acks_and_keeps_a_correction(
        env: Env) -> None:
    arrived = FRI_10 - timedelta(days=3, hours=2)  # Tuesday 08:00 New York
    pk = env.put(1, SPAM, arrived)
    env.clock.t = FRI_10
    opened = env.screening.open_as_work_order(pk, "bob")
    assert opened.created and opened.acked
    with env.reads() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == opened.number))
        assert wo is not None
        # The model's best request type and that type's own priority, by default.
        assert (wo.request_type, wo.priority) == ("email_problem", "urgent")
        due = env.policy.due("email_problem", "urgent", wo.contract, arrived)
        assert wo.received_at == arrived
        assert (wo.callback_due, wo.response_due, wo.fulfil_due) == (
            due.callback_due, due.response_due, due.fulfil_due)
        assert wo.fulfil_due is not None and wo.fulfil_due < FRI_10  # already late, truly
        assert wo.requester == "dana@harborview.com" and not wo.needs_review
        ack = s.scalar(select(Outbox).where(Outbox.work_order_id == wo.id))
        assert ack is not None
        assert (ack.kind, ack.status, ack.to_addr) == ("ack", "pending", "dana@harborview.com")
        assert ack.template == "ack/email_problem"
        assert ack.context["in_reply_to"] == "s1@harborview.com"
        assert ack.message_id.startswith(f"{wo.number}.ack.")
        c = s.scalar(select(Correction).where(Correction.work_order_id == wo.id))
        assert c is not None
        assert (c.old_type, c.new_type, c.new_priority, c.actor) == (
            "not_a_request", "email_problem", "urgent", "bob")
        ev = s.scalar(select(Event).where(Event.work_order_id == wo.id,
                                          Event.action == "opened_from_screened"))
        assert ev is not None and (ev.actor, ev.at) == ("bob", FRI_10)
        assert ev.detail["was"] == "spam" and ev.detail["screened_by"] == "model"
        m = s.get(Message, pk)
        assert m is not None and (m.disposition, m.work_order_id) == ("work_order", wo.id)
    with env.reads() as s:
        assert screened_page(s, ScreenedFilter(), FRI_10).total == 0  # it left the list

    again = env.screening.open_as_work_order(pk, "alice", "printer_setup")
    assert (again.number, again.created) == (opened.number, False)
    assert env.count(WorkOrder) == 1 and env.count(Outbox) == 1 and env.count(Correction) == 1


def test_open_with_a_chosen_type_and_priority_and_the_refusals(env: Env) -> None:
    bounce = env.put(1, BOUNCE, FRI_10)
    request = env.put(2, REQUEST, FRI_10)
    with pytest.raises(ActionError, match="unknown request type"):
        env.screening.open_as_work_order(bounce, "bob", "no_such_type")
    with pytest.raises(ActionError, match="unknown priority"):
        env.screening.open_as_work_order(bounce, "bob", "other", "whenever")
    # A message that opened a work order when it came answers with that work order.
    own = env.screening.open_as_work_order(request, "bob", "other")
    assert not own.created and env.message(request).work_order_id is not None
    answer = mail(3).replace(b"MIME-Version", b"In-Reply-To: <s2@harborview.com>\r\nMIME-Version")
    reply = env.put(3, REQUEST, FRI_10, data=answer)
    assert env.message(reply).disposition == "reply"
    with pytest.raises(ActionError, match="not a screened one"):
        env.screening.open_as_work_order(reply, "bob", "other")
    with pytest.raises(NotFound):
        env.screening.open_as_work_order(999_999, "bob")
    assert env.count(WorkOrder) == 1  # only the request's own
    opened = env.screening.open_as_work_order(bounce, "bob", "server_down", "high")
    with env.reads() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == opened.number))
        assert wo is not None and (wo.request_type, wo.priority) == ("server_down", "high")


def test_open_a_quarantined_message_uses_what_the_quarantine_kept(env: Env) -> None:
    pk = env.put(1, None, FRI_10 - timedelta(hours=3), error="store failed: ValueError")
    opened = env.screening.open_as_work_order(pk, "bob")  # no model decision: "other"
    with env.reads() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == opened.number))
        assert wo is not None and wo.request_type == "other"
        assert wo.received_at == FRI_10 - timedelta(hours=3)
        # The quarantine kept no sender: no acknowledgment, and the work order says why.
        assert wo.needs_review and "no usable sender" in (wo.review_reason or "")
        assert s.scalar(select(Correction)) is None  # nothing the model decided
    assert not opened.acked and env.count(Outbox) == 0
    assert env.acks_refused == ["no_sender"]  # counted like fetched mail's withheld acknowledgments


# ---- reprocess -------------------------------------------------------------------------------
def test_reprocess_runs_the_raw_bytes_through_ingestion_once(env: Env) -> None:
    arrived = FRI_10 - timedelta(hours=5)
    pk = env.put(1, None, arrived, error="parser error: ZeroDivisionError")
    result = env.screening.reprocess(pk, "bob")
    assert result.outcome == "work_order" and result.work_order and not result.repeated
    assert env.classifier.calls == 1
    with env.reads() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == result.work_order))
        assert wo is not None and wo.received_at == arrived  # the original arrival
        assert s.scalar(select(Outbox.kind).where(Outbox.work_order_id == wo.id)) == "ack"
        old = s.get(Message, pk)
        assert old is not None and old.disposition == "reprocessed"
        assert old.screening is not None
        assert old.screening["reprocessed"]["work_order"] == wo.number
        assert old.screening["reprocessed"]["by"] == "bob"
        new = s.get(Message, result.message_id)
        assert new is not None and new.work_order_id == wo.id and new.id != pk
        # The mailbox's fetch row still points at the quarantine record.
        assert s.scalar(select(Fetch.message_pk).where(Fetch.mailbox == MBOX)) == pk
        ev = s.scalar(select(Event).where(Event.action == "reprocessed"))
        assert ev is not None and (ev.actor, ev.work_order_id) == ("bob", wo.id)
        assert ev.detail["quarantine_reason"] == "parser error: ZeroDivisionError"
    again = env.screening.reprocess(pk, "alice")
    assert again.repeated and again.work_order == result.work_order
    assert env.classifier.calls == 1
    assert env.count(WorkOrder) == 1 and env.count(Message, Message.message_id ==
                                                   "s1@harborview.com") == 1
    with pytest.raises(ActionError, match="only quarantined"):
        env.screening.reprocess(result.message_id or 0, "bob")


def test_reprocess_after_a_crash_between_storing_and_marking_stores_nothing_twice(
        env: Env) -> None:
    pk = env.put(1, None, FRI_10, error="parser error: KeyError")
    data = mail(1)
    # The daemon stored the reprocessed message, then died before marking the quarantine.
    env.ingest.store([RawMessage(REPROCESS_MAILBOX, 0, f"q{pk}", len(data), data,
                                 internal_date=FRI_10)])
    assert env.count(WorkOrder) == 1
    result = env.screening.reprocess(pk, "bob")
    assert result.outcome == "work_order" and result.work_order
    assert env.count(WorkOrder) == 1 and env.message(pk).disposition == "reprocessed"


def test_reprocess_that_fails_leaves_the_message_quarantined(env: Env) -> None:
    pk = env.put(1, None, FRI_10, error="parser error: KeyError")

    def broken(batch: list[RawMessage]) -> list[Any]:
        raise RuntimeError("ingest worker: database gone")

    s = Screening(env.sessions, env.policy, env.store, env.clock, reprocess=broken)
    with pytest.raises(ActionError, match="stays quarantined"):
        s.reprocess(pk, "bob")
    assert env.message(pk).disposition == "quarantined"
    without = Screening(env.sessions, env.policy, env.store, env.clock)
    with pytest.raises(ActionError, match="ingestion"):
        without.reprocess(pk, "bob")


def test_reprocess_of_a_message_that_was_stored_since_is_a_duplicate(env: Env) -> None:
    pk = env.put(1, None, FRI_10, error="store failed: OperationalError")
    env.put(2, REQUEST, FRI_10 + timedelta(minutes=5), data=mail(1))  # delivered again
    result = env.screening.reprocess(pk, "bob")
    assert result.outcome == "duplicate"
    assert env.count(WorkOrder) == 1 and env.message(pk).disposition == "reprocessed"


def test_an_oversize_message_cannot_be_reprocessed(env: Env) -> None:
    head = b"From: a@b.example\r\nSubject: huge\r\n\r\n"
    raw = RawMessage(MBOX, 7, "9", 40_000_000, None, head=head, internal_date=FRI_10)
    env.store.store_batch([Ingest(raw=raw, error="oversize: 40000000 bytes")])
    with env.reads() as s:
        pk = s.scalar(select(Message.id))
    assert pk is not None
    with pytest.raises(ActionError, match="size limit"):
        env.screening.reprocess(pk, "bob")


# ---- pages and API ---------------------------------------------------------------------------
@pytest.fixture
def web(env: Env):
    desk = Desk(env.sessions, env.policy, DeskConfig("helpdesk@itx.net"), env.clock)
    with env.sessions.begin() as s:
        users.add_user(s, "alice", PASSWORD, display_name="Alice")
        bob = users.add_user(s, "bob", PASSWORD)
        token = users.issue_api_token(s, bob)
    app = create_web_app(WebDeps(env.sessions, env.reads, env.policy, desk,
                                 env.store._cfg.attachments_dir, env.clock,
                                 screening=env.screening))
    client = TestClient(app, base_url="https://testserver", follow_redirects=False)
    yield client, token
    client.close()


def login(client: TestClient) -> None:
    page = client.get("/login")
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert m
    r = client.post("/login", data={"name": "alice", "password": PASSWORD,
                                    "csrf_token": m.group(1), "next": "/screened"})
    assert r.status_code == 303


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m
    return m.group(1)


def test_screened_pages_escape_client_content_and_show_the_count(env: Env, web) -> None:
    client, _ = web
    pk = env.put(1, SPAM, FRI_10 - timedelta(hours=2), data=mail(
        1, subject=f"Re: {XSS}", body=f"body {XSS}",
        html=f"<p>hi</p>{XSS}<a href=\"javascript:alert(3)\">x</a>"))
    env.put(2, BOUNCE, FRI_10 - timedelta(hours=1))
    assert client.get("/screened").status_code == 303  # login first
    login(client)
    page = client.get("/screened")
    assert page.status_code == 200
    assert "<script>window.__xss" not in page.text
    assert "Re: &lt;script&gt;window.__xss=1&lt;/script&gt;" in page.text
    assert "text model 71 %" in page.text and "header Content-Type: multipart/report" in page.text
    assert 'Screened <b class="nav-count">1</b>' in page.text  # the model's, not the bounce
    assert 'Screened <b class="nav-count">1</b>' in client.get("/queue").text
    assert f'data-message="{pk}"' not in client.get("/screened?kind=bounce").text
    assert client.get("/screened?kind=nonsense").status_code == 422
    detail = client.get(f"/screened/{pk}")
    assert detail.status_code == 200
    assert "<script>window.__xss" not in detail.text and "onerror=\"alert" not in detail.text
    assert "body &lt;script&gt;" in detail.text
    assert "javascript:alert(3)" not in detail.text and "<p>hi</p>" in detail.text
    assert "Message-ID" in detail.text  # the headers
    assert '<option value="email_problem" selected>' in detail.text  # the default type
    assert client.get("/screened/999999").status_code == 404


def test_open_from_the_page_needs_csrf_and_happens_once(env: Env, web) -> None:
    client, _ = web
    pk = env.put(1, SPAM, FRI_10 - timedelta(days=1))
    login(client)
    r = client.post(f"/screened/{pk}/open", data={"csrf_token": "forged",
                                                  "request_type": "email_problem"})
    assert r.status_code == 403 and env.count(WorkOrder) == 0
    token = csrf_of(client.get(f"/screened/{pk}").text)
    form = {"csrf_token": token, "request_type": "email_problem", "priority": ""}
    r = client.post(f"/screened/{pk}/open", data=form)
    assert r.status_code == 303
    target = r.headers["location"]
    assert re.match(r"^/work-orders/ITX-\d{6}\?done=opened\+from\+Screened$", target)
    page = client.get(target)
    assert "Done: opened from Screened." in page.text and "opened from screened" in page.text
    r = client.post(f"/screened/{pk}/open", data=form)
    assert r.headers["location"].split("?")[0] == target.split("?")[0]
    assert "already+opened" in r.headers["location"]
    assert env.count(WorkOrder) == 1 and env.count(Outbox) == 1
    r = client.post(f"/screened/{pk}/open", data={**form, "request_type": "nope"})
    assert r.status_code == 303  # already opened: the type is not looked at again


def test_api_lists_opens_and_reprocesses(env: Env, web) -> None:
    client, token = web
    spam = env.put(1, SPAM, FRI_10 - timedelta(hours=2))
    broken = env.put(2, None, FRI_10 - timedelta(hours=1), data=mail(2),
                     error="parser error: KeyError")
    assert client.get("/api/v1/screened").status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    listing = client.get("/api/v1/screened", headers=bearer).json()
    assert [m["id"] for m in listing["messages"]] == [broken, spam]
    assert listing["awaiting"] == 2 and listing["counts"] == {"quarantined": 1, "spam": 1}
    assert listing["messages"][1]["screened_by"] == "model"
    one = client.get(f"/api/v1/screened/{spam}", headers=bearer).json()
    assert one["screening"]["best_request"] == "email_problem"
    assert one["default_request_type"] == "email_problem" and one["text"] == "since 7am, no mail"
    # A cookie session needs the CSRF header; a bearer token does not.
    login(client)
    assert client.post(f"/api/v1/screened/{spam}/open", json={}).status_code == 403
    fresh = TestClient(client.app, base_url="https://testserver")
    r = fresh.post(f"/api/v1/screened/{spam}/open", json={"request_type": "other"},
                   headers=bearer)
    assert r.status_code == 200, r.text
    assert r.json()["created"] is True and r.json()["acked"] is True
    number = r.json()["work_order"]
    again = fresh.post(f"/api/v1/screened/{spam}/open", json={}, headers=bearer).json()
    assert again == {"work_order": number, "created": False, "acked": False}
    wo = fresh.get(f"/api/v1/work-orders/{number}", headers=bearer).json()
    assert wo["request_type"] == "other"
    assert [e["actor"] for e in wo["events"] if e["action"] == "opened_from_screened"] == ["bob"]
    r = fresh.post(f"/api/v1/screened/{broken}/reprocess", headers=bearer)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "work_order" and r.json()["repeated"] is False
    r = fresh.post(f"/api/v1/screened/{spam}/reprocess", headers=bearer)
    assert r.status_code == 422 and "only quarantined" in r.json()["detail"]
    assert fresh.post("/api/v1/screened/999999/open", json={},
                      headers=bearer).status_code == 404
    paths = set(client.get("/api/openapi.json").json()["paths"])
    assert {"/api/v1/screened", "/api/v1/screened/{message_id}",
            "/api/v1/screened/{message_id}/open",
            "/api/v1/screened/{message_id}/reprocess"} <= paths


def test_pages_say_so_when_actions_are_not_configured(env: Env, web) -> None:
    del web  # for its users
    desk = Desk(env.sessions, env.policy, DeskConfig("helpdesk@itx.net"), env.clock)
    bare = create_web_app(WebDeps(env.sessions, env.reads, env.policy, desk,
                                  env.store._cfg.attachments_dir, env.clock))
    c = TestClient(bare, base_url="https://testserver", follow_redirects=False)
    pk = env.put(1, SPAM, FRI_10)
    login(c)
    token = csrf_of(c.get(f"/screened/{pk}").text)
    assert c.post(f"/screened/{pk}/open", data={"csrf_token": token}).status_code == 503
    assert env.message(pk).disposition == "non_request"


def test_reprocess_goes_through_the_daemons_ingest_worker(tmp_path: Path) -> None:
    """In the daemon the web app runs in the parent, which has no model: reprocessing goes
    to the ingest worker's parse, classify and store, like fetched mail."""
    from classifiers.artifact import DEFAULT_MODEL_PATH
    from triage.config import Settings
    from triage.ingest import IngestWorker

    e = Env(f"sqlite:///{tmp_path / 'w.db'}", tmp_path)
    data = mail(1, subject="Website down", body="Our website is down and shows a 503 error.")
    pk = e.put(1, None, FRI_10 - timedelta(hours=1), data=data, error="parser error: KeyError")
    worker = IngestWorker(Settings(database_url=str(e.engine.url),
                                   attachments_dir=tmp_path / "att"), DEFAULT_MODEL_PATH)
    worker.start()
    try:
        s = Screening(e.sessions, e.policy, e.store, e.clock, reprocess=worker.store)
        result = s.reprocess(pk, "bob")
        assert (result.outcome, result.repeated) == ("work_order", False)
        assert s.reprocess(pk, "bob").repeated
    finally:
        worker.close()
        e.engine.dispose()
    with e.reads() as rs:
        wo = rs.scalar(select(WorkOrder))
        assert wo is not None and wo.number == result.work_order
        assert wo.classifier_version not in ("", "m-1")  # the worker's own model decided
        assert wo.received_at == FRI_10 - timedelta(hours=1)
    assert e.count(WorkOrder) == 1 and e.message(pk).disposition == "reprocessed"


def test_the_daemon_counts_an_acknowledgment_a_staff_open_withheld(make_service: Any) -> None:
    """Wired as in the daemon: the Screened actions report to its metric, as fetched mail
    does (``triage_ack_suppressed_total``)."""
    svc = make_service()
    svc.c.store.store_batch([Ingest(raw=raw_of(1, mail(1), FRI_10), error="store failed: X")])
    with svc.c.sessions() as s:
        pk = s.scalar(select(Fetch.message_pk).where(Fetch.uid == "1"))
    screening = svc.c.screening()
    assert screening is not None and pk is not None
    assert not screening.open_as_work_order(pk, "bob").acked
    assert svc.c.metrics.registry.get_sample_value(
        "triage_ack_suppressed_total", {"reason": "no_sender"}) == 1
