"""Full-text search over the mail of work orders (subjects and bodies), for the queue's
search box: SQLite FTS5 (``message_search``) and PostgreSQL ``tsvector`` with a GIN index
(``messages.search_vector``), both made by migration 0013.

What the user types is never handed to a query language: it is cut into words (``\\w+``),
which are quoted for FTS5 (a phrase each, all required) or given to ``plainto_tsquery``.
A work order ranks by its best-matching message (BM25 on SQLite, ``ts_rank`` on
PostgreSQL; subject matches weigh more than body matches on both) among the newest
``CANDIDATES`` matching messages. The queue's filters apply as they do without a search.

Highlights are computed for the page's rows only. The database marks matched words with
the control characters \\x02 and \\x03 (removed from the indexed text, so only the
database's marks are left); ``marked`` escapes everything else and turns each marked run
into ``<mark>``, so client text never reaches the page as HTML.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import Float, Integer, Select, bindparam, func, select, text
from sqlalchemy.orm import Session, joinedload

from triage.sla import SlaPolicy
from triage.slamarks import sla_state
from triage.storage.models import Message, WorkOrder

MAX_TERMS = 12
# A word found in most mail (say "printer" at a printer company) would otherwise mean
# scoring most of the table for every search; only the newest CANDIDATES matching messages
# are ranked, and the page says so when more matched (bench/bench_search.py).
CANDIDATES = 2000
MAX_TERM = 64
SUBJECT_WEIGHT = 4.0  # FTS5 bm25 column weight; PostgreSQL: setweight A over B
# Database objects of migration 0013 that the models do not describe (one dialect's each).
SEARCH_OBJECTS = frozenset({"message_search", "search_vector", "ix_messages_search"})
_START, _STOP = "\x02", "\x03"
_MARKED = re.compile("\x02([^\x02\x03]*)\x03")
_STRAY = re.compile("[\x02\x03]")
_PG_SUBJECT_OPTS = f"HighlightAll=true, StartSel={_START}, StopSel={_STOP}"
_PG_BODY_OPTS = (f"StartSel={_START}, StopSel={_STOP}, MaxWords=24, MinWords=8, "
                 "MaxFragments=2, FragmentDelimiter=\" … \"")


def is_search_object(name: str | None) -> bool:
    """True for migration 0013's objects, including FTS5's shadow tables."""
    return bool(name) and (name in SEARCH_OBJECTS or str(name).startswith("message_search_"))


def terms(q: str) -> list[str]:
    """The words of a search, lower-cased, at most ``MAX_TERMS`` of ``MAX_TERM`` chars."""
    return [w[:MAX_TERM] for w in re.findall(r"\w+", q.lower())][:MAX_TERMS]


def is_text_search(q: str | None) -> bool:
    """A search by words, not by work-order number."""
    return q is not None and not q.strip().upper().startswith("ITX-") and bool(terms(q))


def marked(snippet: str) -> Markup:
    """A snippet with the database's marks, as HTML: escaped text, ``<mark>`` runs."""
    out: list[str] = []
    pos = 0
    for m in _MARKED.finditer(snippet):
        out.append(escape(_STRAY.sub("", snippet[pos:m.start()])))
        out.append(Markup("<mark>") + escape(m.group(1)) + Markup("</mark>"))
        pos = m.end()
    out.append(escape(_STRAY.sub("", snippet[pos:])))
    return Markup("").join(out)


def hits(s: Session, words: list[str]) -> Any:
    """A subquery of (wid, score): the work orders among the newest ``CANDIDATES`` matching
    messages, each with its best message's score (lower is better)."""
    if s.get_bind().dialect.name == "sqlite":
        # bm25() works only in a query on the FTS table itself; newest first by rowid is
        # FTS5's own order, so the inner query stops after the candidates.
        return (text("SELECT m.work_order_id AS wid, min(c.score) AS score FROM ("
                     "SELECT rowid AS mid, "
                     f"bm25(message_search, {SUBJECT_WEIGHT}, 1.0) AS score "
                     "FROM message_search WHERE message_search MATCH :match "
                     "ORDER BY rowid DESC LIMIT :cap) AS c "
                     "JOIN messages m ON m.id = c.mid GROUP BY m.work_order_id")
                .bindparams(match=_fts_query(words), cap=CANDIDATES)
                .columns(wid=Integer, score=Float).subquery("hits"))
    return (text("SELECT c.work_order_id AS wid, -max(ts_rank(c.search_vector, c.q)) AS score "
                 "FROM (SELECT work_order_id, search_vector, q "
                 "FROM messages, plainto_tsquery('english', :words) AS q "
                 "WHERE search_vector @@ q AND work_order_id IS NOT NULL "
                 "ORDER BY id DESC LIMIT :cap) AS c GROUP BY c.work_order_id")
            .bindparams(words=" ".join(words), cap=CANDIDATES)
            .columns(wid=Integer, score=Float).subquery("hits"))


def capped(s: Session, words: list[str]) -> bool:
    """Whether more messages match than ``CANDIDATES`` (then older ones are left out)."""
    if s.get_bind().dialect.name == "sqlite":
        sql = ("SELECT count(*) FROM (SELECT rowid FROM message_search "
               "WHERE message_search MATCH :match LIMIT :over)")
        params: dict[str, Any] = {"match": _fts_query(words)}
    else:
        sql = ("SELECT count(*) FROM (SELECT 1 FROM messages "
               "WHERE search_vector @@ plainto_tsquery('english', :words) "
               "AND work_order_id IS NOT NULL LIMIT :over) AS c")
        params = {"words": " ".join(words)}
    return (s.scalar(text(sql), {**params, "over": CANDIDATES + 1}) or 0) > CANDIDATES


def _fts_query(words: list[str]) -> str:
    return " ".join(f'"{w}"' for w in words)


def search_page(s: Session, policy: SlaPolicy, f: Any, now: datetime) -> Any:
    """``queue_page`` for a search by words: the filtered work orders that match, best
    first, with a highlighted snippet per row."""
    from triage.desk.queue import (
        _NUMBERED,
        QueuePage,
        QueueRow,
        _where,
        client_label,
        client_replied,
        nearest_clock,
        queue_counts,
    )

    words = terms(f.q or "")
    h = hits(s, words)
    plain = replace(f, q=None)

    def filtered(stmt: Select[Any]) -> Select[Any]:
        return _where(stmt.join(h, h.c.wid == WorkOrder.id), plain, now).where(_NUMBERED)

    total = s.scalar(filtered(select(func.count()).select_from(WorkOrder))) or 0
    pages = max(1, -(-total // f.page_size))
    page = min(max(1, f.page), pages)
    found = list(s.scalars(
        filtered(select(WorkOrder)).options(joinedload(WorkOrder.client),
                                            joinedload(WorkOrder.assignee))
        .order_by(h.c.score, WorkOrder.id)
        .offset((page - 1) * f.page_size).limit(f.page_size)))
    replied = client_replied(s, found)
    rows = [QueueRow(wo, client_label(wo), wo.assignee.name if wo.assignee else None,
                     sla_state(wo, now), nearest_clock(wo, policy, now), wo.id in replied)
            for wo in found]
    return QueuePage(rows, total, page, pages, queue_counts(s, now),
                     snippets=snippets(s, words, [wo.id for wo in found]), ranked=True,
                     capped=CANDIDATES if capped(s, words) else 0)


def snippets(s: Session, words: list[str], wo_ids: list[int]) -> dict[int, Markup]:
    """Per work order, its best-matching message's subject (when it matched) and a body
    excerpt, matched words marked."""
    if not wo_ids or not words:
        return {}
    best: dict[int, tuple[float, str, str]] = {}
    rows: Any
    if s.get_bind().dialect.name == "sqlite":
        # One look-up per message by rowid: FTS5 takes ``rowid = ?`` as its own constraint,
        # whereas ``rowid IN (...)`` would filter the whole match set. No bm25() here: it
        # counts each word's documents afresh per statement; the message whose subject
        # matched (else the earliest) stands for its work order instead.
        one = text("SELECT highlight(message_search, 0, char(2), char(3)), "
                   "snippet(message_search, 1, char(2), char(3), ' … ', 20) "
                   "FROM message_search WHERE message_search MATCH :match AND rowid = :mid")
        match = _fts_query(words)
        rows = []
        for mid, wo_id in s.execute(select(Message.id, Message.work_order_id)
                                    .where(Message.work_order_id.in_(wo_ids))
                                    .order_by(Message.id)).all():
            for subject, body in s.execute(one, {"match": match, "mid": mid}):
                rows.append((wo_id, subject, body, 0.0 if _START in subject else 1.0))
    else:
        rows = s.execute(text(
            "SELECT work_order_id, "
            "ts_headline('english', translate(subject, E'\\x02\\x03', ''), q, :sopts), "
            "ts_headline('english', translate(left(body_text, 20000), E'\\x02\\x03', ''), q, "
            ":bopts), -ts_rank(search_vector, q) "
            "FROM messages, plainto_tsquery('english', :words) AS q "
            "WHERE work_order_id IN :ids AND search_vector @@ q")
            .bindparams(words=" ".join(words), sopts=_PG_SUBJECT_OPTS, bopts=_PG_BODY_OPTS)
            .bindparams(bindparam("ids", wo_ids, expanding=True)))
    for wo_id, subject, body, score in rows:
        if wo_id not in best or score < best[wo_id][0]:
            best[wo_id] = (score, subject or "", body or "")
    out: dict[int, Markup] = {}
    for wo_id, (_, subject, body) in best.items():
        parts = [marked(subject)] if _START in subject else []
        parts.append(marked(body.strip()))
        out[wo_id] = Markup(" — ").join(p for p in parts if p)
    return out


__all__ = ["SEARCH_OBJECTS", "hits", "is_search_object", "is_text_search", "marked",
           "search_page", "snippets", "terms"]
