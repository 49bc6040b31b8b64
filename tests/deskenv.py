"""The staff desk on a real database, as the desk, page and web tests meet it (a pytest
plugin, loaded by ``tests/conftest.py``).

Fixtures: ``env`` (store, desk, sessions, policy and a settable clock at ``FRI_10`` on SQLite
and PostgreSQL, with the staff user bob) and ``web`` (the staff app over an ASGI test client
on SQLite, with two urgent work orders, one of them hostile, and alice and bob). A module
that needs another setup defines a fixture of the same name, built from ``desk_parts`` or
``staff_web``: pytest takes the module's own.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from classifiers.types import Decision
from tests.factories import FRI_10, MBOX, NOW, Clock, req
from triage.desk import users
from triage.desk.actions import Desk, DeskConfig
from triage.messages import RawMessage
from triage.metrics import Metrics
from triage.parse import parse
from triage.sla import SlaPolicy, load_policy
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Event, User, WorkOrder
from triage.web.app import WebDeps, create_web_app
from triage.web.ops import create_ops_app
from triage.workorders import Ingest, Outcome, StoreConfig, WorkOrderStore

PASSWORD = "correct horse battery"
XSS = '<script>window.__xss=1;alert(1)</script><img src=x onerror="alert(2)">'


# ---- the desk on a database --------------------------------------------------------------------
@dataclass
class DeskParts:
    """A migrated database with the store and the desk on it, sharing one settable clock."""

    engine: Engine
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]
    policy: SlaPolicy
    clock: Clock
    store: WorkOrderStore
    desk: Desk


@contextlib.contextmanager
def desk_parts(url: str, tmp_path: Path, now: datetime = FRI_10) -> Iterator[DeskParts]:
    """The store and the desk on the database at ``url`` (migrated here; its engine disposed
    at the end), attachments under ``tmp_path / "att"``, the clock at ``now``."""
    engine = make_engine(url)
    try:
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        policy = load_policy()
        clock = Clock(now)
        store = WorkOrderStore(sessions, policy,
                               StoreConfig("helpdesk@itx.net", 50, tmp_path / "att", 0.6), clock)
        desk = Desk(sessions, policy, DeskConfig("helpdesk@itx.net", 0.75), clock)
        yield DeskParts(engine, sessions, make_read_sessionmaker(engine), policy, clock, store,
                        desk)
    finally:
        engine.dispose()


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[tuple[Any, ...]]:
    """``(store, desk, sessions, policy, clock)`` on each backend; staff: bob."""
    with desk_parts(db_url, tmp_path) as d:
        with d.sessions.begin() as s:
            users.add_user(s, "bob", "long enough password", display_name="Bob B",
                           email="bob@itx.net")
        yield d.store, d.desk, d.sessions, d.policy, d.clock


def store_mail(store: WorkOrderStore, uid: int, data: bytes, decision: Decision, *,
               uidvalidity: int = 7, at: datetime | None = None) -> Outcome:
    """``data`` as fetched from ``MBOX`` (arrived ``at``, else at the store's now), stored
    with ``decision``."""
    raw = RawMessage(MBOX, uidvalidity, str(uid), len(data), data,
                     internal_date=at if at is not None else store._clock())
    return store.store_batch([Ingest(raw=raw, parsed=parse(data), decision=decision)])[0]


def open_wo(store: WorkOrderStore, uid: int, label: str = "email_problem",
            priority: str = "normal", subject: str = "help", frm: str = "dana@harborview.com",
            conf: float = 0.9) -> str:
    """A client's request stored as a new work order; its number."""
    data = (f"From: Dana <{frm}>\r\nTo: helpdesk@itx.net\r\nSubject: {subject}\r\n"
            f"Message-ID: <m{uid}@harborview.com>\r\n\r\nOutlook is broken\r\n").encode()
    out = store_mail(store, uid, data, req(label, priority, conf))
    assert out.work_order
    return out.work_order


def get(sessions: sessionmaker[Session], number: str) -> WorkOrder:
    with sessions() as s:
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number))
        assert wo is not None
        return wo


def events(sessions: sessionmaker[Session], number: str) -> list[Event]:
    with sessions() as s:
        wo_id = s.scalar(select(WorkOrder.id).where(WorkOrder.number == number))
        return list(s.scalars(select(Event).where(Event.work_order_id == wo_id)
                              .order_by(Event.id)))


def user_id(sessions: sessionmaker[Session], name: str) -> int:
    with sessions() as s:
        uid = s.scalar(select(User.id).where(User.name == name))
        assert uid is not None
        return uid


# ---- the staff web app -------------------------------------------------------------------------
@dataclass
class StaffWeb:
    """The staff app on a fresh SQLite database, its test client, and bob's API token."""

    parts: DeskParts
    app: FastAPI
    client: TestClient
    api_token: str


@contextlib.contextmanager
def staff_web(tmp_path: Path, *, extra_routes: list[Any] | None = None,
              **deps: Any) -> Iterator[StaffWeb]:
    """The staff app (``WebDeps`` options in ``deps``) over an ASGI test client on HTTPS,
    the clock at ``NOW``; staff alice (display name with markup) and bob (an API token)."""
    with desk_parts(f"sqlite:///{tmp_path / 'web.db'}", tmp_path, NOW) as d:
        with d.sessions.begin() as s:
            users.add_user(s, "alice", PASSWORD, display_name="Alice <A>")
            bob = users.add_user(s, "bob", PASSWORD)
            s.flush()
            api_token = users.issue_api_token(s, bob)
        app = create_web_app(WebDeps(d.sessions, d.reads, d.policy, d.desk, tmp_path / "att",
                                     d.clock, **deps), extra_routes=extra_routes)
        client = TestClient(app, base_url="https://testserver", follow_redirects=False)
        try:
            yield StaffWeb(d, app, client, api_token)
        finally:
            client.close()


def mime_mail(uid: int, subject: str, body: str, *, name: str = "Dana",
              html: str | None = None, attachment: tuple[str, bytes] | None = None) -> bytes:
    """Dana's mail, plain text, or multipart with an HTML part and/or a PDF attachment."""
    head = (f'From: "{name}" <dana@harborview.com>\r\nTo: helpdesk@itx.net\r\n'
            f"Subject: {subject}\r\nMessage-ID: <w{uid}@harborview.com>\r\nMIME-Version: 1.0\r\n")
    if html is None and attachment is None:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()
    parts = [f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"]
    if html is not None:
        parts.append(f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n")
    if attachment is not None:
        fname, payload = attachment
        parts.append("Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
                     f'Content-Disposition: attachment; filename="{fname}"\r\n\r\n'
                     + base64.b64encode(payload).decode() + "\r\n")
    out = head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    for p in parts:
        out += "--b\r\n" + p
    return (out + "--b--\r\n").encode()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[TestClient, FastAPI, dict[str, Any]]]:
    """``(client, app, data)``: the staff app with the ops routes (/metrics behind the token
    "scrape-secret"); ``data``: the work orders "plain" and "hostile" (script in its subject,
    sender, body, HTML and attachment name), bob's API "token", "sessions" and "clock"."""
    ops = create_ops_app(Metrics(process=False), {}, metrics_token="scrape-secret")
    with staff_web(tmp_path, cookie_secure=True, extra_routes=list(ops.routes)) as w:
        store = w.parts.store

        def add(uid: int, label: str, priority: str, data: bytes) -> str:
            out = store_mail(store, uid, data, req(label, priority, 0.91), uidvalidity=1, at=NOW)
            assert out.work_order
            return out.work_order

        plain = add(1, "email_problem", "urgent", mime_mail(1, "Outlook disconnected", "no mail"))
        hostile = add(2, "website_down", "urgent", mime_mail(
            2, f"Site down {XSS}", f"body {XSS}", name="<b>Evil</b> \"x\"",
            html=f"<p>hello</p>{XSS}<a href=\"javascript:alert(3)\">click</a>"
                 "<img src=\"https://tracker.example/p.gif\">",
            attachment=('inv"oice<script>.pdf', b"%PDF-1.4 fake")))
        yield w.client, w.app, {"plain": plain, "hostile": hostile, "token": w.api_token,
                                "sessions": w.parts.sessions, "clock": w.parts.clock}


def login(client: TestClient, name: str = "alice", password: str = PASSWORD,
          next_: str = "/queue") -> tuple[int, str | None]:
    """Through the login form; the status and where it redirects."""
    page = client.get("/login")
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert m
    r = client.post("/login", data={"name": name, "password": password,
                                    "csrf_token": m.group(1), "next": next_})
    return r.status_code, r.headers.get("location")


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m
    return m.group(1)
