"""``triage sla due``: the SLA engine from the command line, one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, tzinfo

from triage.messages import DueDates
from triage.sla import load_policy

log = logging.getLogger(__name__)

USAGE_ERROR = 2


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant that carries its UTC offset ("Z" accepted); naive times are ambiguous."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--received {text!r} is not an ISO 8601 instant") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"--received {text!r} needs a UTC offset, e.g. 2026-11-27T19:30:00-05:00")
    return t


def due_json(due: DueDates, tz: tzinfo) -> dict[str, object]:
    """The CLI's JSON shape; each instant in ``tz`` with its offset."""

    def iso(t: datetime | None) -> str | None:
        return None if t is None else t.astimezone(tz).isoformat()

    return {
        "clock_start": iso(due.clock_start),
        "callback_due": iso(due.callback_due),
        "response_due": iso(due.response_due),
        "fulfil_due": iso(due.fulfil_due),
        "milestones": [{"name": n, "due": iso(t)} for n, t in due.milestones],
    }


def cmd_due(ns: argparse.Namespace) -> int:
    """Print the due dates; a bad policy, type, priority or instant is one line and exit 2."""
    try:
        policy = load_policy(ns.policy)
        received = parse_instant(ns.received)
        due = policy.due(ns.request_type, ns.priority, ns.contract, received)
        tz = policy.calendar(ns.contract).tz
    except ValueError as exc:
        sys.stderr.write(f"triage sla due: error: {exc}\n")
        return USAGE_ERROR
    sys.stdout.write(json.dumps(due_json(due, tz)) + "\n")
    return 0
