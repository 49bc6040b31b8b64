"""Security events as JSON lines, on the logger ``triage.security``.

One logger, so an operator can watch an attack without reading the rest: failed logins with
the name typed and the client address, the start of a login delay, throttled logins, API
token use and refusals, and user changes made with ``triage user``. The daemon's JSON
formatter (``triage.logs``) writes each field as a key of its own; the user command writes the
same lines to standard error. Never a password, a token or a session id.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from triage.logs import JsonFormatter

log = logging.getLogger("triage.security")

# Every event this module is told about; a typo fails a test instead of a dashboard.
EVENTS = frozenset({
    "login", "login_failed", "login_delayed", "login_delay_started", "login_throttled",
    "logout", "api_token_used", "api_token_refused",
    "user_added", "user_password_reset", "user_disabled", "user_enabled", "user_email_set",
    "api_token_issued", "api_token_revoked",
})


def event(name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log security event ``name`` with ``fields`` (``user``, ``client``, ``actor`` ...)."""
    if name not in EVENTS:
        raise ValueError(f"unknown security event {name!r}")
    log.log(level, name, extra={"event": name, **fields})


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a test may have replaced it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def log_to_stderr() -> None:
    """For the command line, which configures no logging: the events as JSON lines on
    standard error, apart from what the command prints. Idempotent."""
    if any(isinstance(h, _StderrHandler) for h in log.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)


__all__ = ["EVENTS", "event", "log_to_stderr"]
