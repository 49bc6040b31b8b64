"""Logging configuration as a dict, applied once at start (never inside the work loop)."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

# What every LogRecord carries; anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line; message text is the %-formatted message, never a body.

    Fields given with ``extra=`` become keys of their own (the pipeline's stage events:
    ``event``, ``mailbox``, ``uid``, ``work_order``, ``outbox`` ...), so a log pipeline can
    follow one message without parsing text. Callers pass ids only, never mail content."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _RESERVED:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def logging_config(fmt: str = "json", level: str = "INFO") -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": JsonFormatter},
            "text": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
        },
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": fmt,
                       "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "triage": {"level": level.upper()},
            "classifiers": {"level": level.upper()},
            "aioimaplib": {"level": "WARNING"},
            "apscheduler": {"level": "WARNING"},
        },
        "root": {"handlers": ["stdout"], "level": "WARNING"},
    }


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(fmt, level))
