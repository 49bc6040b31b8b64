"""Query parameters the pages and the API share."""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlencode

from fastapi import HTTPException


class ListFilter(Protocol):
    def query_args(self, **change: Any) -> dict[str, str]: ...


def list_links(path: str, f: ListFilter) -> dict[str, Any]:
    """A list page's ``link`` (the filter with some arguments changed) and ``page_link``
    (the same filter, page N), for the templates."""
    return {"link": lambda **kw: f"{path}?" + urlencode(f.query_args(**kw)),
            "page_link": lambda n: f"{path}?" + urlencode({**f.query_args(), "page": str(n)})}


def known(value: str | None, allowed: tuple[str, ...]) -> str | None:
    """``value`` when it is one of ``allowed``, None when absent; else a 422 naming the
    choices (an unknown filter is the caller's mistake, not an empty result)."""
    if value in (None, ""):
        return None
    if value not in allowed:
        raise HTTPException(422, f"unknown value {value[:64]!r}; expected one of {allowed}")
    return value
