"""Header screen: machine-sent mail is ``not_a_request`` before the text model runs.

RFC 3834 says automatic responders must not answer auto-submitted mail; answering bulk,
list or bounce mail causes loops and backscatter. Header evidence is stronger than any
wording, so these rules decide alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_BOUNCE_SENDER = re.compile(r"^(?:.*<)?\s*(?:mailer-daemon|postmaster)@", re.IGNORECASE)


@dataclass(frozen=True)
class ScreenResult:
    kind: str  # one of classifiers.types.NON_REQUEST_KINDS
    header: str  # "Name: value" that decided, shown to staff


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers.items():
        out.setdefault(str(k).strip().lower(), str(v) if v is not None else "")
    return out


def screen_headers(headers: Mapping[str, str], sender: str = "") -> ScreenResult | None:
    """The non-request kind the headers prove, or None when they prove nothing."""
    h = _lower_keys(headers)

    auto = h.get("auto-submitted", "").strip().lower()
    if auto and auto != "no":
        return ScreenResult("auto_reply", f"Auto-Submitted: {auto}")
    for name in ("x-autoreply", "x-autorespond", "x-autoresponse"):
        if name in h:
            return ScreenResult("auto_reply", f"{name}: {h[name].strip()}")

    ctype = h.get("content-type", "").lower()
    if ctype.startswith("multipart/report"):
        return ScreenResult("bounce", "Content-Type: multipart/report")
    if _BOUNCE_SENDER.match(sender.strip()) or _BOUNCE_SENDER.match(h.get("from", "").strip()):
        return ScreenResult("bounce", f"From: {sender or h.get('from', '')}")
    if "return-path" in h and h["return-path"].strip() in ("", "<>"):
        return ScreenResult("bounce", "Return-Path: <>")

    precedence = h.get("precedence", "").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return ScreenResult("bulk", f"Precedence: {precedence}")
    if precedence == "auto_reply":
        return ScreenResult("auto_reply", "Precedence: auto_reply")
    for name in ("list-id", "list-unsubscribe"):
        if name in h:
            return ScreenResult("bulk", f"{name}: {h[name].strip()[:80]}")
    return None
