"""HTML to visible text with the stdlib parser alone.

Its own module so the parser (triage.parse) can use it without importing scikit-learn and
SciPy through ``classifiers.features``: the daemon's parent process never loads the model
(the ingest worker does), and those imports are ~120 MB of its resident memory.
"""

from __future__ import annotations

import html
import logging
import re
from html.parser import HTMLParser

log = logging.getLogger(__name__)

# Raw text considered at all (before quote stripping), so regexes never see megabytes.
MAX_RAW_CHARS = 60_000


_BLOCK_TAGS = frozenset(
    {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}
    | {"blockquote", "pre", "hr", "section", "article"}
)
_SKIP_TAGS = frozenset(("script", "style", "head", "title"))


class _TextExtractor(HTMLParser):
    """Collect visible text; block tags become newlines so quote/signature cuts still work."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "blockquote":
            # Quoted history in HTML mail lives in <blockquote>; mark it like plain-text quotes.
            self.parts.append("\n> ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML document (stdlib parser; scripts and styles dropped)."""
    parser = _TextExtractor()
    try:
        parser.feed(markup[:MAX_RAW_CHARS])
        parser.close()
    except Exception:  # html.parser is lenient, but never let markup crash a decision
        log.warning("html parser failed; falling back to tag stripping", exc_info=True)
        return html.unescape(re.sub(r"<[^>]*>", " ", markup[:MAX_RAW_CHARS]))
    text = "".join(parser.parts)
    return re.sub(r"\n\s*\n+", "\n\n", text)
