"""What a page may say in its alert box, and the markup that isolates client text.

Alerts come only from fixed keys: a link such as ``/login?error=Your+account+is+suspended,
call+...`` must not put the attacker's words in the app's own alert box (escaped or not, it
reads as the app speaking). A redirect after an action carries a key (``done=reply queued``);
an unknown key shows nothing. Errors of an action are rendered in the answer to the POST
itself, never carried in a URL.

``bidi`` wraps client-supplied text (subjects, sender names, attachment names ...) in
``<bdi>``, so right-to-left text cannot reorder what surrounds it, and shows the explicit
direction controls (U+202A-U+202E, U+2066-U+2069) as visible ``[U+202E]`` marks: inside its
own ``<bdi>`` an override still reverses the rest of the name, and ``invoice<U+202E>fdp.exe``
would read as ``invoiceexe.pdf``.
"""

from __future__ import annotations

import re

from markupsafe import Markup, escape

from triage.metrics import OUTCOMES

# The outcome of an action, shown after its redirect (the key is the text).
DONE: frozenset[str] = frozenset({
    "reclassified", "assigned", "promise set", "status changed", "note added", "reply queued",
    "call back logged", "resolved", "reopened", "opened from Screened", "already opened",
    "merged",
    "reply queued, waiting on client", "reply queued and resolved", "canned saved",
    "canned deleted",
    *(f"reprocessed: {o.replace('_', ' ')}" for o in OUTCOMES),
})

LOGIN_ALERTS: dict[str, str] = {
    "expired": "Your login form expired; please try again.",
    "credentials": "Wrong user name or password.",
    "delayed": "Too many failed attempts: wait {seconds} s, then try again.",
}

BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def done_text(key: str) -> str:
    """The done message for ``key`` from a URL, or "" when it is not one of ours."""
    return key if key in DONE else ""


def bidi(value: object) -> Markup:
    """``value`` escaped, its direction controls made visible, inside ``<bdi>``."""
    text = str(escape("" if value is None else value))
    shown = BIDI_CONTROLS.sub(
        lambda m: f'<span class="bidi-ctl" title="direction control">[U+{ord(m[0]):04X}]'
                  "</span>", text)
    return Markup(f"<bdi>{shown}</bdi>")


__all__ = ["BIDI_CONTROLS", "DONE", "LOGIN_ALERTS", "bidi", "done_text"]
