"""The desk as technicians use it all day (issue 19), on real SQLite and PostgreSQL: the
collision guard, full-text search, canned replies, bulk actions and the client's history,
through the desk's functions and through the web app's forms (ASGI test client). The
Chromium checks are in test_browser_desk.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from classifiers.types import Decision
from tests.factories import Clock
from triage.desk import users
from triage.desk.actions import Conflict, Desk, DeskConfig
from triage.messages import RawMessage
from triage.parse import parse
from triage.sla import load_policy
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Event, Outbox, WorkOrder
from triage.web.app import WebDeps, create_web_app
from triage.workorders import Ingest, StoreConfig, WorkOrderStore

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)  # Friday 10:00 New York
MBOX = "imap://helpdesk@127.0.0.1:1/INBOX"
PASSWORD = "correct horse battery"


class Env:
    def __init__(self, db_url: str, tmp: Path) -> None:
        self.engine = make_engine(db_url)
        upgrade(self.engine)
        self.sessions = make_sessionmaker(self.engine)
        self.reads = make_read_sessionmaker(self.engine)
        self.policy = load_policy()
        self.clock = Clock(NOW)
        self.store = WorkOrderStore(self.sessions, self.policy,
                                    StoreConfig("helpdesk@itx.net", 50, tmp / "att", 0.6),
                                    self.clock)
        self.desk = Desk(self.sessions, self.policy, DeskConfig("helpdesk@itx.net"), self.clock)
        self.uid = 0
        with self.sessions.begin() as s:
            users.add_user(s, "alice", PASSWORD, display_name="Alice A")
            users.add_user(s, "bob", PASSWORD, display_name="Bob B")
        self.app = create_web_app(WebDeps(self.sessions, self.reads, self.policy, self.desk,
                                          tmp / "att", self.clock, cookie_secure=True))

    def mail(self, subject: str, body: str, *, frm: str = "dana@harborview.com",
             name: str = "Dana Reyes", label: str = "email_problem",
             priority: str = "normal", reply_to: str | None = None) -> str | None:
        self.uid += 1
        head = (f'From: "{name}" <{frm}>\r\nTo: helpdesk@itx.net\r\nSubject: {subject}\r\n'
                f"Message-ID: <d{self.uid}@{frm.split('@')[1]}>\r\n")
        if reply_to:
            head += f"In-Reply-To: <{reply_to}>\r\n"
        data = (head + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                + body + "\r\n").encode()
        raw = RawMessage(MBOX, 1, str(self.uid), len(data), data, internal_date=self.clock())
        d = Decision(label=label, confidence=0.93, priority=priority, needs_review=False,
                     model_version="test")
        out = self.store.store_batch([Ingest(raw=raw, parsed=parse(data), decision=d)])
        return out[0].work_order

    def open(self, subject: str = "Outlook will not send", body: str = "Outlook is broken",
             **kw: str) -> str:
        n = self.mail(subject, body, **kw)
        assert n
        return n

    def wo(self, number: str) -> WorkOrder:
        with self.reads() as s:
            wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number))
            assert wo is not None
            return wo

    def client(self, name: str = "alice") -> TestClient:
        c = TestClient(self.app, base_url="https://testserver", follow_redirects=False)
        page = c.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        r = c.post("/login", data={"name": name, "password": PASSWORD,
                                   "csrf_token": token.group(1), "next": "/queue"})
        assert r.status_code == 303, r.text
        return c


@pytest.fixture
def env(db_url: str, tmp_path: Path):
    e = Env(db_url, tmp_path)
    yield e
    e.engine.dispose()


def form_values(html: str, action: str) -> dict[str, str]:
    """The hidden inputs of the form posting to ``action`` (CSRF token, page version)."""
    m = re.search(r'<form[^>]*action="' + re.escape(action) + r'"[^>]*>(.*?)</form>', html,
                  re.S)
    assert m, f"no form for {action}"
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', m.group(1)))


# ---- collision guard ----------------------------------------------------------------------------
def test_each_action_raises_the_version_once_and_tags_its_events(env: Env) -> None:
    n = env.open()
    assert env.wo(n).version == 1
    env.desk.assign(n, "alice", "bob", version=1)
    assert env.wo(n).version == 2
    # A reply that also waits on the client writes two events: one version for both.
    env.desk.reply(n, "alice", "Please restart Outlook.", wait_for_client=True, version=2)
    assert env.wo(n).version == 3
    with env.reads() as s:
        tagged = [(e.action, e.wo_version) for e in s.scalars(
            select(Event).where(Event.work_order_id == env.wo(n).id).order_by(Event.id))]
    assert tagged == [("created", None), ("assigned", 2), ("replied", 3), ("status", 3)]


def test_an_action_from_an_older_page_is_refused_with_what_changed(env: Env) -> None:
    n = env.open()
    env.desk.assign(n, "bob", "bob", version=1)
    env.desk.note(n, "bob", "Called Dana, will remote in", version=2)
    with pytest.raises(Conflict) as refused:
        env.desk.reply(n, "alice", "Have you tried turning it off?", version=1)
    c = refused.value
    assert (c.seen, c.current) == (1, 3)
    assert [(x.actor, x.action, x.version) for x in c.changes] == [
        ("bob", "assigned", 2), ("bob", "note", 3)]
    assert c.changes[1].detail["text"] == "Called Dana, will remote in"
    assert "bob assigned, bob note" in str(c)
    # Nothing of the refused reply was written.
    wo = env.wo(n)
    assert wo.version == 3 and wo.first_response_at is None
    with env.reads() as s:
        assert s.scalar(select(Outbox.id).where(Outbox.work_order_id == wo.id,
                                                Outbox.kind == "reply")) is None
    # The same reply from the current page goes through; no version means no guard (API).
    env.desk.reply(n, "alice", "Have you tried turning it off?", version=3)
    env.desk.note(n, "script", "from the API")
    assert env.wo(n).version == 5


def test_a_client_reply_moves_the_version_and_is_listed_as_a_change(env: Env) -> None:
    n = env.open()
    env.desk.reply(n, "alice", "Which Outlook version?", version=1)
    with env.reads() as s:
        mid = s.scalar(select(Outbox.message_id).where(Outbox.kind == "reply"))
    assert env.mail("Re: Outlook", "Outlook 2021, still broken", reply_to=mid) == n
    assert env.wo(n).version == 3
    with pytest.raises(Conflict) as refused:
        env.desk.resolve(n, "alice", version=2)
    assert [(x.actor, x.action) for x in refused.value.changes] == [("system", "client_reply")]
    assert env.wo(n).status == "open"


def test_the_page_refuses_a_stale_form_shows_the_changes_and_keeps_the_draft(
        env: Env) -> None:
    n = env.open()
    alice, bob = env.client("alice"), env.client("bob")
    page_a = alice.get(f"/work-orders/{n}").text
    page_b = bob.get(f"/work-orders/{n}").text
    assert form_values(page_a, f"/work-orders/{n}/reply")["version"] == "1"
    r = bob.post(f"/work-orders/{n}/note", data={
        **form_values(page_b, f"/work-orders/{n}/note"), "text": "Dana <b>prefers</b> phone"})
    assert r.status_code == 303
    draft = "Hi Dana, <script>x()</script> please restart."
    r = alice.post(f"/work-orders/{n}/reply", data={
        **form_values(page_a, f"/work-orders/{n}/reply"), "body": draft})
    assert r.status_code == 409
    assert "changed since this page was loaded" in r.text
    assert 'data-action="note"' in r.text
    assert "Dana &lt;b&gt;prefers&lt;/b&gt; phone" in r.text  # the change, escaped
    assert ("Hi Dana, &lt;script&gt;x()&lt;/script&gt; please restart.</textarea>"
            in r.text)  # the draft kept, escaped
    # The refusal page carries the current version: sending again from it works.
    assert form_values(r.text, f"/work-orders/{n}/reply")["version"] == "2"
    r = alice.post(f"/work-orders/{n}/reply", data={
        **form_values(r.text, f"/work-orders/{n}/reply"), "body": draft})
    assert r.status_code == 303 and "done=reply" in r.headers["location"]
    assert env.wo(n).version == 3
    # Every form on the work-order page carries the version.
    page = alice.get(f"/work-orders/{n}").text
    forms = re.findall(r'<form method="post" action="/work-orders/[^"]+"[^>]*>.*?</form>',
                       page, re.S)
    assert forms and all('name="version" value="3"' in f for f in forms)


# ---- full-text search ---------------------------------------------------------------------------
def search(env: Env, q: str, **kw: object):  # type: ignore[no-untyped-def]
    from triage.desk.queue import QueueFilter, queue_page

    with env.reads() as s:
        return queue_page(s, env.policy, QueueFilter(q=q, **kw), env.clock())  # type: ignore[arg-type]


def test_search_finds_words_in_subjects_and_bodies_ranked_and_stemmed(env: Env) -> None:
    in_subject = env.open("Printer jammed on the second floor", "It makes a noise.")
    in_body = env.open("Office question", "Also the printer in reception jammed again.")
    env.open("Outlook will not start", "Nothing to do with paper.")
    page = search(env, "printer")
    assert [r.wo.number for r in page.rows] == [in_subject, in_body]  # subject ranks first
    assert page.ranked and page.total == 2
    # Stemming on both databases: "jam" finds "jammed".
    assert {r.wo.number for r in search(env, "jam").rows} == {in_subject, in_body}
    # Every word is required.
    assert [r.wo.number for r in search(env, "printer reception").rows] == [in_body]
    assert search(env, "printer zebra").total == 0


def test_search_reads_client_replies_and_keeps_the_queue_filters(env: Env) -> None:
    n = env.open("VPN drops", "The VPN drops every hour.")
    env.desk.reply(n, "alice", "Which client?", version=1)
    with env.reads() as s:
        mid = s.scalar(select(Outbox.message_id).where(Outbox.kind == "reply"))
    env.mail("Re: VPN drops", "We use FortiClient 7.2 on Windows.", reply_to=mid)
    assert [r.wo.number for r in search(env, "forticlient").rows] == [n]
    env.desk.resolve(n, "alice")
    assert search(env, "forticlient").total == 0  # the queue shows active work only
    assert search(env, "forticlient", status="all").total == 1
    assert search(env, "forticlient", status="all", request_type="printer_setup").total == 0


def test_search_input_is_words_not_query_syntax(env: Env) -> None:
    n = env.open("Scanner offline", "The scanner NEAR the door is offline.")
    for q in ('scanner" OR *', "NEAR(scanner door)", "scanner AND -door", "'; DROP TABLE x;--",
              "scanner:*", "\"\"\"", "scanner\x02door"):
        page = search(env, q)  # no error from FTS5 or tsquery syntax
        assert all(r.wo.number == n for r in page.rows)
    # Operators are words like any other, and every word is required (PostgreSQL drops
    # English stop words such as "or" from a query; FTS5 has none).
    assert search(env, 'scanner" *').total == 1
    assert search(env, "NEAR(scanner door)").total == 1
    assert search(env, 'scanner" NOT printer').total == 0


def test_search_highlights_matched_words_and_escapes_the_rest(env: Env) -> None:
    n = env.open("Toner <b>empty</b>", "Please <script>alert(1)</script> order toner \x02now\x03.")
    page = search(env, "toner")
    snippet = str(page.snippets[env.wo(n).id])
    assert "<mark>Toner</mark> &lt;b&gt;empty&lt;/b&gt;" in snippet
    assert "alert(1)" in snippet and "order <mark>toner</mark>" in snippet
    if env.engine.dialect.name == "sqlite":  # ts_headline leaves out what looks like a tag
        assert "&lt;script&gt;alert(1)&lt;/script&gt; order <mark>toner</mark> now" in snippet
    assert "<script>" not in snippet and "\x02" not in snippet
    html = env.client().get("/queue", params={"q": "toner"}).text
    assert "<mark>toner</mark>" in html and "best match first" in html
    assert "<script>alert(1)" not in html


def test_a_number_search_still_goes_straight_to_the_work_order(env: Env) -> None:
    n = env.open("Printer", "printer")
    env.open("Printer too", "printer")
    page = search(env, n.lower())
    assert [r.wo.number for r in page.rows] == [n] and not page.ranked


def test_a_search_matching_more_than_the_candidates_ranks_the_newest_and_says_so(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from triage.desk import search as search_module

    numbers = [env.open(f"Backup {i}", "The backup failed again.") for i in range(5)]
    assert not search(env, "backup").capped
    monkeypatch.setattr(search_module, "CANDIDATES", 3)
    page = search(env, "backup")
    assert page.capped == 3 and page.total == 3
    assert {r.wo.number for r in page.rows} == set(numbers[-3:])
    html = env.client().get("/queue", params={"q": "backup"}).text
    assert "More mail matches than the newest 3 messages" in html
