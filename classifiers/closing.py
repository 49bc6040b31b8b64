"""Closing notes: a short mail that only thanks or confirms a fix opens no work order.

"Fixed now, thanks" answers a request that is already handled. When it quotes one of our
work orders the store threads it there (and it does not reopen it); when it carries another
system's ticket number (``[ITX #48213]``, ``Ticket#123``, ``[#123]``) or just ``Re:``, the
text model alone reads the subject ("Re: website is down") and opens a new work order,
acknowledged. This rule decides those before the model, and only those: the body (quotes
and signature gone) is short, thanks or says something is done, and holds nothing that asks
or reports a problem. Anything else goes to the model, whose screening is held to a measured
precision (``classifiers.predict``). The rule's own precision is measured on every held-out
set by ``bench/bench_classifier.py`` (a request it screens counts as screened out).
"""

from __future__ import annotations

import re

from classifiers.features import REPLY_SUBJECT, email_text
from classifiers.types import EmailInput

MAX_WORDS = 40

_THANKS = re.compile(
    r"\b(?:thanks|thank\s+you|thank-you|thankyou|thx|tnx|ty|cheers|appreciated?|gracias|"
    r"obrigad[oa]|merci|danke|dzi[eę]kuj[eę])\b",
    re.IGNORECASE,
)
_DONE = re.compile(
    r"\b(?:(?:all\s+|now\s+)?fixed|works?(?:\s+(?:now|again|fine|great|perfectly))?|"
    r"working(?:\s+(?:now|again|fine|great|perfectly))?|all\s+(?:good|set|sorted|done|fixed)|"
    r"sorted(?:\s+(?:now|out))?|(?:is\s+)?resolved|solved|back\s+(?:up|online|to\s+normal)|"
    r"up\s+and\s+running|that\s+did\s+it|did\s+the\s+trick|you\s+can\s+close(?:\s+(?:it|this))?|"
    r"close\s+(?:it|this|the\s+ticket|this\s+ticket)|no\s+longer\s+needed|never\s*mind|"
    r"disregard|false\s+alarm|got\s+(?:it|in)|logged\s+in|good\s+to\s+go|funciona|działa|"
    r"funcionou|came\s+back|is\s+up(?:\s+again)?|no\s+need\s+to\s+\w+|"
    r"nothing\s+else\s+(?:needed|required|to\s+do))\b",
    re.IGNORECASE,
)
# Anything that asks, reports a problem, or hedges the fix: the mail is not only a closing.
_OPEN = re.compile(
    r"\?|n't\b|\b(?:please|pls|plz|can\s+you|could\s+you|would\s+you|can\s+someone|need|needs|"
    r"needed|still|but|however|though|although|another|also|except|not|no|cannot|"
    r"unable|error|issue|problem|help\s+me|urgent|asap|when|how|why|what|where|broken|down|"
    r"fail\w*|keeps|stopped|again\s+(?:today|this)|only|sometimes|yet|request|set\s+up|"
    r"install|add|create|reset|order|new|ideally|hopefully|if|once|until|tomorrow|later|"
    r"soon|(?:can|could|will|would|should|to|must)\s+be)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")


def is_reply_subject(subject: str) -> bool:
    """A reply or a ticket-tagged subject: it names the thread, not what this mail says."""
    return bool(REPLY_SUBJECT.search(subject or ""))


def closing_note(email: EmailInput) -> str | None:
    """The words that make this mail only a closing note, or None when it may ask anything."""
    subject, body = email_text(email)
    text = body.strip()
    if not is_reply_subject(subject):
        # A fresh subject speaks for the mail: it must itself say thanks or done, no more.
        words = _WORD.findall(subject)
        if words and (not (_THANKS.search(subject) or _DONE.search(subject))
                      or _OPEN.search(_THANKS.sub(" ", _DONE.sub(" ", subject)))
                      or len(words) > 6):
            return None
        text = f"{subject}\n{text}"
    if not text or len(_WORD.findall(text)) > MAX_WORDS:
        return None
    found = _DONE.search(text) or _THANKS.search(text)
    if found is None:
        return None
    # The done phrases themselves hold words such as "no" ("no longer needed"); take them
    # out before looking for anything that asks or reports.
    rest = _THANKS.sub(" ", _DONE.sub(" ", text))
    if _OPEN.search(rest):
        return None
    return found.group(0).lower()
