"""Hostile input end to end (issue 7): the generated corpus (tests/hostile_corpus.py) goes
into a real Dovecot, ``python -m triage run --once`` runs as users run it, and we check that
every message was recorded, nothing was left unmarked, no acknowledgment carries injected
headers, markup or client text beyond the cleaned subject, and no log line carries a body."""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import random
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.daemons import daemon_env, unmarked
from tests.hostile_corpus import (
    ANCHOR_MID,
    ANCHOR_TAG,
    BIG_ATTACHMENT,
    BODY_MARKER,
    FRONT_DOOR,
    NAME_MARKER,
    OLE2_MSG,
    Hostile,
    corpus,
    front_door,
)
from triage.storage.models import AttachmentRow, Fetch, Message, Outbox, WorkOrder

pytestmark = [pytest.mark.imap, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
FINAL = {"work_order", "reply", "non_request", "quarantined"}
ACK_HEADERS = {"from", "to", "subject", "date", "message-id", "in-reply-to", "references",
               "auto-submitted", "x-auto-response-suppress", "x-itx-work-order",
               "mime-version", "content-type", "content-transfer-encoding"}
SUBJECT_LIMIT = 200
# What templates/email/layout.html.j2 and the ack templates use; anything else came in.
TEMPLATE_TAGS = {"html", "head", "meta", "title", "body", "p", "strong", "br", "ul", "li",
                 "a", "em", "b", "i", "span", "div", "table", "tr", "td", "hr"}


class _Tags(HTMLParser):
    """Collects the tags of an HTML part and any attribute a client could have planted."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)
        self.attrs += [(k, v) for k, v in attrs
                       if k.startswith("on") or "javascript:" in (v or "").lower()]


def inbox_count(dovecot) -> int:
    with dovecot.imap() as conn:
        typ, data = conn.select("INBOX", readonly=True)
        assert typ == "OK"
        return int(data[0])


def check_ack(raw: bytes) -> str:
    """Everything an acknowledgment must not carry; returns its cleaned-subject part."""
    head, _, _ = raw.partition(b"\r\n\r\n")
    unfolded = re.sub(rb"\r\n[ \t]", b" ", head)
    names = [line.split(b":", 1)[0].decode("ascii").lower() for line in unfolded.split(b"\r\n")]
    assert set(names) <= ACK_HEADERS, names  # no Bcc:, no second Subject: from an injection
    assert len(names) == len(set(names)), names
    assert BODY_MARKER.encode() not in raw and NAME_MARKER.encode() not in raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            tags = _Tags()
            tags.feed(part.get_content())
            assert tags.seen <= TEMPLATE_TAGS, tags.seen - TEMPLATE_TAGS  # no <script>, <img>
            assert not tags.attrs, tags.attrs  # no onerror=, no href=javascript:
        if not part.is_multipart():
            text = part.get_content()
            assert BODY_MARKER not in text and NAME_MARKER not in text
    subject = str(msg["Subject"])
    assert "\r" not in subject and "\n" not in subject
    number = str(msg["X-ITX-Work-Order"])
    client_part = subject.removeprefix("Re: ").replace(f"[{number}]", "").strip()
    assert len(client_part) <= SUBJECT_LIMIT, len(client_part)
    return client_part


def run_once_on_maildir(inbox: Path, smtp_sink, db_url: str, tmp_path: Path
                        ) -> subprocess.CompletedProcess[str]:
    """``triage run --once`` in a child process on a Maildir, the sink and ``db_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | {
        "TRIAGE_MAILBOX_URL": f"maildir://{inbox}",
        "TRIAGE_SMTP_URL": smtp_sink.url,
        "TRIAGE_DATABASE_URL": db_url,
        "TRIAGE_ATTACHMENTS_DIR": str(tmp_path / "att"),
    }
    r = subprocess.run([sys.executable, "-m", "triage", "run", "--once"], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def run_hostile(msgs: list[Hostile], dovecot, sink, db_url: str, tmp_path: Path,
                **extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    dovecot.deliver_files([h.raw for h in msgs])
    env = daemon_env(dovecot, sink, db_url, tmp_path, **extra)
    r = subprocess.run([sys.executable, "-m", "triage", "run", "--once"], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=170)
    assert r.returncode == 0, r.stderr[-3000:]

    engine = create_engine(db_url)
    try:
        with Session(engine) as s:
            fetches = list(s.scalars(select(Fetch)))
            inbound = select(Message).where(Message.direction == "in")
            messages = {m.id: m for m in s.scalars(inbound)}
            wos = {w.id: w for w in s.scalars(select(WorkOrder))}
            atts = list(s.scalars(select(AttachmentRow)))
            outbox = list(s.scalars(select(Outbox)))
    finally:
        engine.dispose()

    # Every delivered message is accounted for, once, in a final disposition.
    assert len(fetches) == len(msgs) and not any(f.duplicate for f in fetches)
    assert len(messages) == len(msgs)
    by_uid = {int(f.uid): messages[f.message_pk] for f in fetches}
    assert sorted(by_uid) == list(range(1, len(msgs) + 1))  # deliver_files keeps the order
    dispositions = Counter(m.disposition for m in messages.values())
    assert set(dispositions) <= FINAL, dispositions
    for m in messages.values():
        if m.disposition == "quarantined":
            assert m.reason, m.id
    assert unmarked(dovecot) == [] and inbox_count(dovecot) == len(msgs)

    # Per-kind promises.
    anchor_wo = next(w for w in wos.values() if w.root_message_id == ANCHOR_MID)
    att_by_msg: dict[int, list[AttachmentRow]] = {}
    for a in atts:
        att_by_msg.setdefault(a.message_pk, []).append(a)
    for uid, h in enumerate(msgs, start=1):
        m = by_uid[uid]
        if h.kind == "forged_tag":
            assert m.work_order_id != anchor_wo.id, (uid, m.disposition)
            if m.disposition == "work_order" and ANCHOR_TAG in h.raw.decode(errors="replace"):
                wo = wos[m.work_order_id]
                assert wo.needs_review and "another client" in (wo.review_reason or "")
        if h.kind == "forged_auto_submitted":  # RFC 3834: anything but "no" is automatic
            value = str(email.message_from_bytes(h.raw)["Auto-Submitted"] or "")
            screened = value.strip().lower() not in ("", "no")
            assert ((m.disposition, m.reason) == ("non_request", "auto_reply")) == screened, (
                uid, value, m.disposition, m.reason)
        if h.kind in ("zip_bomb", "big_attachment"):
            assert m.disposition != "quarantined", (uid, m.reason)
            stored = [a for a in att_by_msg.get(m.id, []) if a.content_type != "text/plain"]
            assert len(stored) == 1, (uid, stored)
            path = Path(stored[0].path)
            assert path.stat().st_size == stored[0].size
            if h.kind == "zip_bomb":  # stored as received, never expanded
                assert stored[0].size < 1_000_000
                assert hashlib.sha256(path.read_bytes()).hexdigest() == stored[0].sha256
            else:
                assert stored[0].size >= BIG_ATTACHMENT
        # Issue 14: readable odd mail is read, header-less data is not, an ambiguous From
        # is neither acknowledged nor threaded.
        if h.kind in ("front_door", "huge_headers"):
            assert m.disposition != "quarantined", (uid, m.reason)
        if h.kind == "headerless":
            assert m.disposition == "quarantined", (uid, m.disposition)
            assert (m.reason or "").startswith("unparseable: "), (uid, m.reason)
        if h.kind == "ambiguous_from":
            assert m.work_order_id != anchor_wo.id, uid
            if m.disposition == "work_order":
                wo = wos[m.work_order_id]
                assert wo.needs_review and re.search(
                    "untrusted|no usable sender", wo.review_reason or ""), (uid, wo.review_reason)
                assert not [o for o in outbox if o.work_order_id == wo.id and o.kind == "ack"]

    # Acknowledgments: one per queued row, each clean.
    sent = [o for o in outbox if o.status == "sent"]
    assert len(sink.received) == len(sent) > 0
    assert len({r.data for r in sink.received}) == len(sink.received)
    for rec in sink.received:
        check_ack(rec.data)

    # No log line carries a message body.
    log_lines = (r.stdout + r.stderr).splitlines()
    leaks = [line[:200] for line in log_lines if BODY_MARKER in line]
    assert not leaks, leaks
    stats = dict(dispositions) | {"acks": len(sink.received), "log_lines": len(log_lines)}
    return r, stats


def test_hostile_corpus_sqlite(dovecot, smtp_sink, tmp_path: Path) -> None:
    """266 messages incl. one 30 MB attachment; the size limit is raised so it is parsed."""
    msgs = corpus()
    assert len(msgs) >= 260 and len({h.kind for h in msgs}) >= 22
    _, stats = run_hostile(msgs, dovecot, smtp_sink, f"sqlite:///{tmp_path / 'h.db'}",
                           tmp_path, TRIAGE_MAX_MESSAGE_SIZE=str(64 * 1024 * 1024))
    print("hostile sqlite:", stats)  # shown with -s; the report quotes it


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_hostile_subset_postgresql(dovecot, smtp_sink, tmp_path: Path, db_url: str) -> None:
    """A smaller subset (every kind, 3 of each, no 30 MB message) on PostgreSQL."""
    _, stats = run_hostile(corpus(per_kind=3, big=0), dovecot, smtp_sink, db_url, tmp_path)
    print("hostile postgresql:", stats)


NUL_HTML = (b"From: Nora <nora@nulhtml.test>\r\nTo: helpdesk@itx.net\r\n"
            b"Subject: Website down\r\nMessage-ID: <nul-html-1@nulhtml.test>\r\n"
            b"Date: Wed, 25 Nov 2026 14:00:00 -0500\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"\r\n<p>Our website\x00 is down and shows a 503 error, clients cannot reach the "
            b"portal. " + BODY_MARKER.encode() + b"9999</p>\r\n")


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_nul_in_html_part_maildir(db_url: str, smtp_sink, tmp_path: Path) -> None:
    """Dovecot turns NUL into 0x80 on FETCH, so only a Maildir (or another IMAP server)
    hands the parser a NUL byte: the same mail must give the same result on both backends
    (PostgreSQL refuses NUL in text columns; a failed insert once quarantined it and logged
    the SQL parameters, body included)."""
    inbox = tmp_path / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True)
    (inbox / "new" / "1.nul.test").write_bytes(NUL_HTML)
    r = run_once_on_maildir(inbox, smtp_sink, db_url, tmp_path)
    engine = create_engine(db_url)
    try:
        with Session(engine) as s:
            (m,) = s.scalars(select(Message).where(Message.direction == "in"))
            disposition, reason = m.disposition, m.reason
    finally:
        engine.dispose()
    assert (disposition, reason) == ("work_order", None)
    assert BODY_MARKER not in r.stdout + r.stderr
    assert len(smtp_sink.received) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_front_door_mail_via_maildir_becomes_work_orders(db_url: str, smtp_sink,
                                                         tmp_path: Path) -> None:
    """A BOM, an mbox From line, white space before a colon (and all three): read from a
    Maildir, byte for byte as written, each becomes an acknowledged work order; data with no
    header stays quarantined. (Through Dovecot: test_hostile_corpus_sqlite.)"""
    inbox = tmp_path / "inbox"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True)
    rnd = random.Random(3)
    odd = []
    for n, which in enumerate(FRONT_DOOR, start=1):
        while True:  # front_door picks its variant at random: draw until it is this one
            raw, _ = front_door(n, rnd)
            if _variant(raw) == which:
                break
        odd.append(raw)
    for i, data in enumerate([*odd, OLE2_MSG, b"Hello, the printer is broken.\r\n"], start=1):
        (inbox / "new" / f"{i:02d}.odd.test").write_bytes(data)
    run_once_on_maildir(inbox, smtp_sink, db_url, tmp_path)
    engine = create_engine(db_url)
    try:
        with Session(engine) as s:
            rows = list(s.scalars(select(Message).where(Message.direction == "in")))
            got = [(m.subject or "", m.disposition, m.reason, list(m.defects or []))
                   for m in rows]
    finally:
        engine.dispose()
    assert len(rows) == len(odd) + 2
    quarantined = sorted(r or "" for _, d, r, _ in got if d == "quarantined")
    assert quarantined == ["unparseable: an Outlook .msg file (OLE2 compound document), not a "
                           "mail message", "unparseable: no header could be read"]
    read = [g for g in got if g[1] != "quarantined"]
    assert len(read) == len(odd) and all(d == "work_order" for _, d, _, _ in read), read
    assert all(subject.startswith("help needed ") for subject, *_ in read)  # Subject : read
    defects = [d for *_, ds in read for d in ds]
    assert defects.count("byte-order mark before the headers") == 2
    assert defects.count("mbox From line before the headers") == 3
    assert defects.count("white space before the colon of Subject (obsolete syntax)") == 2
    assert len(smtp_sink.received) == len(odd)


def _variant(raw: bytes) -> str:
    bom, text = raw.startswith(b"\xef\xbb\xbf"), raw.decode("utf-8-sig")
    mbox, obsolete = text.startswith("From "), "Subject :" in text
    if bom and mbox and obsolete:
        return "bom-mbox-obsolete"
    if mbox:
        return "mbox" if "\r\n" in text else "lf-mbox"
    return "bom" if bom else "obsolete-colon"
