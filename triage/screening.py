"""What is kept about a screened message so that staff can judge the screening.

A non-request gets no work order and no acknowledgment, so the stored row is all a member of
staff will ever see of it (the Screened view, ``triage.desk.screened``). The kind alone
("spam") does not say whether the screening can be trusted: a header that proves automation
can, a text model at 0.62 may not. So the row keeps who decided and on what: the header that
decided, or the model's confidence, the words that pushed it there and the request type it
rated highest (the default when staff open the message as a work order after all).

Pure: the store calls ``screening_record`` for every row it writes (both of its paths build
rows through ``triage.workorders.message_values``).
"""

from __future__ import annotations

from typing import Any

from classifiers.types import Decision

HEADER, CLOSING, MODEL, STORE = "header", "closing_note", "model", "store"
SCREENED_BY: tuple[str, ...] = (HEADER, CLOSING, MODEL, STORE)
# Shown for mail the store itself recognised as ours (the classifier never decides that).
OWN_MAIL = "sent by this service (our From address or one of our Message-IDs)"


def screening_record(decision: Decision | None, disposition: str, kind: str | None
                     ) -> tuple[str | None, dict[str, Any] | None]:
    """``(screened_by, screening)`` for a message row; ``(None, None)`` unless it is a
    non-request."""
    if disposition != "non_request":
        return None, None
    if kind == "own" or decision is None:
        return STORE, {"kind": kind, "by": STORE, "why": OWN_MAIL}
    # Rules that decide before the model (classifiers.screen, classifiers.closing) say so.
    by = decision.screened_by if decision.screened_by in (HEADER, CLOSING) else MODEL
    record: dict[str, Any] = {
        "kind": kind, "by": by, "confidence": round(float(decision.confidence), 4),
        "model_version": decision.model_version,
        "evidence": [{"source": e.source, "text": e.text, "weight": e.weight}
                     for e in decision.evidence],
    }
    if by == HEADER:
        record["header"] = next((e.text for e in decision.evidence if e.source == "header"),
                                None)
    if decision.best_request is not None:
        record["best_request"] = decision.best_request
        record["best_request_confidence"] = decision.best_request_confidence
    return by, record


__all__ = ["CLOSING", "HEADER", "MODEL", "OWN_MAIL", "SCREENED_BY", "STORE", "screening_record"]
