"""Query parameters the pages and the API share."""

from __future__ import annotations

from fastapi import HTTPException


def known(value: str | None, allowed: tuple[str, ...]) -> str | None:
    """``value`` when it is one of ``allowed``, None when absent; else a 422 naming the
    choices (an unknown filter is the caller's mistake, not an empty result)."""
    if value in (None, ""):
        return None
    if value not in allowed:
        raise HTTPException(422, f"unknown value {value[:64]!r}; expected one of {allowed}")
    return value
