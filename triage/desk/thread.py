"""The order of a work order's thread, and whether the client has the last word.

Each item stands at the time it happened on our side: a client's message when it reached the
mailbox (its arrival, never later than when it was stored), our mail when it was written (an
acknowledgment when the daemon queued it, a reply when staff sent it: the clock of the notes
and the audit trail, while a relay outage may hold the delivery back), a note when added.

Those are not one clock. An arrival is the mail server's INTERNALDATE (whole seconds, and
whatever an IMAP APPEND said) or a Maildir file's time, and a backlog (the demo's seeded
inbox, a daemon that was down) is acknowledged long after it arrived, while the client's
reply to that acknowledgment arrived with it. So cause goes before effect: a message that
answers one of ours (its In-Reply-To or References name it), or that carries this work
order's tag (the number reaches a client only in our mail), stands no earlier than the mail
it answers (for a tag alone, the first of ours); our mail stands no earlier than the client
message it answers. Equal times keep a cause before its effects, then the kind, then the id.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from triage.workorders import TAG_RE

# in: a client's message; ack and reply: our mail; note and call: staff records
_RANK = {"in": 0, "ack": 1, "reply": 2, "note": 3, "call": 3}
OURS = ("ack", "reply")


@dataclass(frozen=True)
class Entry:
    """One thread item as ordering sees it: ``ref`` is the caller's object, carried along."""

    kind: str
    id: int
    at: datetime
    message_id: str | None = None
    answers: tuple[str, ...] = ()  # the Message-IDs it names (In-Reply-To, References)
    tag: str | None = None  # the work-order tag in a client's subject
    answer: bool = False  # a client message threaded onto the work order (not its opener)
    ref: object = field(default=None, compare=False)


def message_entry(m_id: int, message_id: str | None, in_reply_to: str | None,
                  references: Iterable[str] | None, subject: str, received_at: datetime,
                  created_at: datetime | None, disposition: str, ref: object = None) -> Entry:
    """A client's message: arrival time, at the latest the time it was stored."""
    at = received_at if created_at is None else min(received_at, created_at)
    tag = TAG_RE.search(subject or "")
    answers = tuple(i for i in (in_reply_to, *(references or ())) if isinstance(i, str) and i)
    return Entry("in", m_id, at, message_id, answers, tag.group(1) if tag else None,
                 disposition == "reply", ref)


def outbox_entry(o_id: int, kind: str, message_id: str, context: dict[str, object] | None,
                 created_at: datetime, ref: object = None) -> Entry:
    """Our mail, at the time it was written; it answers the client message it replies to."""
    ctx = context or {}
    refs = ctx.get("references")
    answers = tuple(i for i in (ctx.get("in_reply_to"),
                                *(refs if isinstance(refs, list) else ()))
                    if isinstance(i, str) and i)
    return Entry(kind, o_id, created_at, message_id, answers, ref=ref)


def in_order(entries: Sequence[Entry], number: str | None) -> list[Entry]:
    """``entries`` in the order things happened (see the module docstring). ``number``: the
    work order's, whose tag in a client's subject places the message after our first mail."""
    by_id = {e.message_id: e for e in entries if e.message_id}
    ours = sorted((e for e in entries if e.kind in OURS), key=lambda e: (e.at, e.id))
    first_ours = ours[0] if ours else None

    def causes(e: Entry) -> list[Entry]:
        found = [c for i in e.answers if (c := by_id.get(i)) is not None and c is not e]
        if (e.kind == "in" and e.tag is not None and e.tag == number and first_ours is not None
                and not any(c.kind in OURS for c in found)):
            found.append(first_ours)
        return found

    # The time per entry: no earlier than any cause's. A cycle (hostile headers naming each
    # other) is cut where the walk meets it again; the edges walked form no cycle.
    placed: dict[int, datetime] = {}
    walked: dict[int, list[Entry]] = {}  # entry -> the causes it waits for
    walking: set[int] = set()

    def place(e: Entry) -> datetime:
        key = id(e)
        if key in placed:
            return placed[key]
        walking.add(key)
        at, waits = e.at, []
        for c in causes(e):
            if id(c) in walking:
                continue
            at = max(at, place(c))
            waits.append(c)
        walking.discard(key)
        placed[key], walked[key] = at, waits
        return at

    def rank(e: Entry) -> tuple[datetime, int, int]:
        return placed[id(e)], _RANK.get(e.kind, 9), e.id

    for e in sorted(entries, key=lambda e: (e.at, _RANK.get(e.kind, 9), e.id)):
        place(e)
    # Earliest first; at equal times a cause before its effects, then kind and id.
    waiting = {id(e): len(walked[id(e)]) for e in entries}
    effects: dict[int, list[Entry]] = {}
    for e in entries:
        for c in walked[id(e)]:
            effects.setdefault(id(c), []).append(e)
    tie = itertools.count()
    ready = [(rank(e), next(tie), e) for e in entries if not waiting[id(e)]]
    heapq.heapify(ready)
    out: list[Entry] = []
    while ready:
        _, _, e = heapq.heappop(ready)
        out.append(e)
        for f in effects.get(id(e), ()):
            waiting[id(f)] -= 1
            if not waiting[id(f)]:
                heapq.heappush(ready, (rank(f), next(tie), f))
    return out


def client_has_last_word(ordered: Sequence[Entry]) -> bool:
    """True when a client's answer (a message threaded onto the work order, not the request
    it was opened from) follows the last staff reply, or there is no staff reply yet: the
    client wrote back and nobody has answered. Acknowledgments and notes answer nothing."""
    for e in reversed(ordered):
        if e.kind == "reply":
            return False
        if e.kind == "in" and e.answer:
            return True
    return False


__all__ = ["OURS", "Entry", "client_has_last_word", "in_order", "message_entry",
           "outbox_entry"]
