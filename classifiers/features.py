"""Text preparation and rule features, shared by training and prediction.

Everything here is pure: the same email always gives the same text and the same rule hits,
so the model sees at prediction time exactly what it saw in training.
"""

from __future__ import annotations

import html
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin

from classifiers.types import LABELS, NOT_A_REQUEST, EmailInput

log = logging.getLogger(__name__)

# Longer mail carries no more signal about its type; capping keeps 1 MB bodies cheap.
MAX_BODY_CHARS = 6000
MAX_SUBJECT_CHARS = 300
# Raw text considered at all (before quote stripping), so regexes never see megabytes.
MAX_RAW_CHARS = 60_000

DEFAULT_KEYWORDS_PATH = Path(__file__).resolve().parent.parent / "data" / "keywords.toml"


# --------------------------------------------------------------------------- HTML → text

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


# --------------------------------------------------------------------------- cleaning

# A line that starts the quoted history of a reply or forward: everything after it goes.
_QUOTE_HEADER = re.compile(
    r"""^\s*(?:
        -{2,}\s*original\s+message\s*-{2,}
      | -{2,}\s*forwarded\s+message\s*-{2,}
      | _{10,}
      | on\s.{0,200}?\bwrote:\s*$
      | from:\s.+\n\s*(?:sent|date):\s
    )""",
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)
# A forwarded message is often the whole request ("ITX can you do this?" + forward):
# keep the forwarded text but drop its header block.
_FORWARD_HEADER = re.compile(r"^\s*-{2,}\s*forwarded\s+message\s*-{2,}", re.I | re.M)
_HEADER_LINE = re.compile(r"^\s*(?:from|sent|date|to|cc|subject):.*$", re.I | re.M)
_QUOTED_LINE = re.compile(r"^[ \t]*>.*$\n?", re.MULTILINE)
# Signature delimiter ("-- ") and mobile footers.
_SIGNATURE = re.compile(
    r"^(?:--\s*$|sent from my \w+|get outlook for \w+|sent from mobile)", re.I | re.M
)
_DISCLAIMER = re.compile(
    r"""^\s*(?:
        confidentiality\s+notice
      | disclaimer
      | this\s+(?:e-?mail|message|communication)\b[^\n]{0,150}?
        \b(?:confidential|intended|privileged|protected)
      | the\s+information\s+(?:in|contained\s+in)\s+this\s+(?:e-?mail|message)
      | if\s+you\s+are\s+not\s+the\s+intended\s+recipient
    )""",
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)
_WS = re.compile(r"\s+")
# Typographic apostrophes and quotes to ASCII, so "can’t" matches the rule "can't".
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def strip_quotes(text: str) -> str:
    """Drop quoted history of replies; keep a forwarded message's own text (minus headers)."""
    m = _QUOTE_HEADER.search(text)
    if m:
        head, tail = text[: m.start()], text[m.start() :]
        if _FORWARD_HEADER.match(tail) and len(_WS.sub("", _SIGNATURE.split(head)[0])) < 200:
            # Short cover note over a forward: the forward is the request.
            tail = _FORWARD_HEADER.sub("", tail, count=1)
            text = head + "\n" + _HEADER_LINE.sub("", tail)
        else:
            text = head
    stripped = _QUOTED_LINE.sub("", text)
    # A message that is nothing but a quote (forward with '>' lines) keeps its quoted text.
    return stripped if stripped.strip() else text.replace(">", " ")


def strip_signature(text: str) -> str:
    """Cut at a signature delimiter or a legal disclaimer, if one follows some content."""
    for pattern in (_SIGNATURE, _DISCLAIMER):
        m = pattern.search(text)
        if m and text[: m.start()].strip():
            text = text[: m.start()]
    return text


def email_text(email: EmailInput) -> tuple[str, str]:
    """(subject, cleaned body) of an email: HTML turned to text, quotes and footers gone."""
    subject = (email.subject or "")[:MAX_SUBJECT_CHARS]
    body = email.body or ""
    if not body.strip() and email.html:
        body = html_to_text(email.html)
    body = body[:MAX_RAW_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    body = strip_signature(strip_quotes(body))
    return subject, body[:MAX_BODY_CHARS]


def prepare(email: EmailInput) -> str:
    """The single string the model and the rules see: subject line, then the cleaned body."""
    subject, body = email_text(email)
    subj = _WS.sub(" ", subject).strip().lower()
    return f"{subj}\n{body.lower()}".translate(_QUOTES)


def normalise(text: str) -> str:
    """Lower-case, whitespace-collapsed text for phrase matching."""
    return _WS.sub(" ", text.lower()).strip().translate(_QUOTES)


# --------------------------------------------------------------------------- keyword rules


@dataclass(frozen=True)
class RuleHit:
    phrase: str
    group: str  # a label, a non-request kind ("nr:spam") or a cue ("cue:workaround")
    weight: float


class KeywordRules:
    """Phrases with weights per label, non-request kind and cue, from ``data/keywords.toml``.

    Held as plain data (dicts of str → float) so the fitted pipeline serialises with skops;
    the regexes are rebuilt lazily after loading.
    """

    def __init__(self, groups: Mapping[str, Mapping[str, float]], thresholds: Mapping[str, float]):
        self.groups = {
            g: {normalise(p): float(w) for p, w in ph.items()} for g, ph in groups.items()
        }
        self.thresholds = dict(thresholds)
        self._compiled: tuple[re.Pattern[str], dict[str, list[tuple[str, float]]]] | None = None

    @classmethod
    def from_toml(cls, path: Path | None = None) -> KeywordRules:
        with open(path or DEFAULT_KEYWORDS_PATH, "rb") as fh:
            doc = tomllib.load(fh)
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> KeywordRules:
        groups: dict[str, dict[str, float]] = {}
        for label, phrases in doc.get("types", {}).items():
            if label not in LABELS:
                raise ValueError(f"keywords: unknown type {label!r}")
            groups[label] = dict(phrases)
        for kind, phrases in doc.get("not_a_request", {}).items():
            groups[f"nr:{kind}"] = dict(phrases)
        thresholds: dict[str, float] = {}
        for cue, table in doc.get("cues", {}).items():
            table = dict(table)
            thresholds[cue] = float(table.pop("threshold", 1.0))
            negations = table.pop("negations", {})
            groups[f"cue:{cue}"] = table
            groups[f"neg:{cue}"] = {p: -abs(float(w)) for p, w in negations.items()}
        return cls(groups, thresholds)

    def __getstate__(self) -> dict[str, Any]:
        return {"groups": self.groups, "thresholds": self.thresholds}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.groups = dict(state["groups"])
        self.thresholds = dict(state["thresholds"])
        self._compiled = None

    def _compile(self) -> tuple[re.Pattern[str], dict[str, list[tuple[str, float]]]]:
        if self._compiled is None:
            index: dict[str, list[tuple[str, float]]] = {}
            for group, phrases in self.groups.items():
                for phrase, weight in phrases.items():
                    index.setdefault(phrase, []).append((group, weight))
            # Longest first, so "can't print from quickbooks" wins over "quickbooks".
            alts = sorted(index, key=len, reverse=True)
            body = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in alts) or "(?!x)x"
            self._compiled = (re.compile(rf"(?<!\w)(?:{body})(?!\w)"), index)
        return self._compiled

    def match(self, text: str) -> list[RuleHit]:
        """Every phrase occurrence in ``text`` (lower-cased), at most once per phrase."""
        pattern, index = self._compile()
        seen: set[str] = set()
        hits: list[RuleHit] = []
        for m in pattern.finditer(text):
            phrase = normalise(m.group(0))
            if phrase in seen:
                continue
            seen.add(phrase)
            for group, weight in index.get(phrase, ()):
                hits.append(RuleHit(phrase, group, weight))
        return hits

    def label_scores(self, hits: Iterable[RuleHit]) -> np.ndarray:
        """Summed weight per label (non-request kinds all count for ``not_a_request``)."""
        out = np.zeros(len(LABELS))
        col = {label: i for i, label in enumerate(LABELS)}
        for h in hits:
            key = NOT_A_REQUEST if h.group.startswith("nr:") else h.group
            i = col.get(key)
            if i is not None:
                out[i] += h.weight
        return out

    def cues(self, hits: Iterable[RuleHit]) -> tuple[str, ...]:
        """Cue names whose phrase weights (minus negations) reach the cue's threshold."""
        score: dict[str, float] = {}
        for h in hits:
            if h.group.startswith(("cue:", "neg:")):
                cue = h.group.split(":", 1)[1]
                score[cue] = score.get(cue, 0.0) + h.weight
        return tuple(sorted(c for c, s in score.items() if s >= self.thresholds.get(c, 1.0)))

    def non_request_kind(self, hits: Iterable[RuleHit]) -> str | None:
        """The content-based non-request kind with the most rule weight, if any matched."""
        score: dict[str, float] = {}
        for h in hits:
            if h.group.startswith("nr:"):
                kind = h.group[3:]
                score[kind] = score.get(kind, 0.0) + h.weight
        return max(score, key=lambda k: score[k]) if score else None


class KeywordFeatures(TransformerMixin, BaseEstimator):
    """Pipeline step: prepared text → one column per label, the summed rule weights.

    ``rules`` is a plain dict (the parsed keywords.toml), not a ``KeywordRules``, so the
    estimator clones and serialises like any scikit-learn estimator. ``scale`` weights the
    request-type columns, ``non_request_scale`` the not_a_request column (thanks notes and
    spam share a topic's words, so their phrases carry more of the decision).
    """

    def __init__(
        self,
        rules: Mapping[str, Any] | None = None,
        scale: float = 0.05,
        non_request_scale: float | None = None,
    ) -> None:
        self.rules = rules
        self.scale = scale
        self.non_request_scale = non_request_scale

    def fit(self, X: Sequence[str], y: Any = None) -> KeywordFeatures:
        self.n_features_in_ = 1
        return self

    @property
    def compiled(self) -> KeywordRules:
        rules = self.__dict__.get("_rules_obj")
        if rules is None:
            rules = KeywordRules.from_dict(self.rules or {})
            self.__dict__["_rules_obj"] = rules
        return rules

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_rules_obj", None)
        return state

    def scores(self, hits: Iterable[RuleHit]) -> np.ndarray:
        """The feature row for one document's rule hits."""
        row = self.compiled.label_scores(hits) * self.scale
        if self.non_request_scale is not None:
            j = LABELS.index(NOT_A_REQUEST)
            row[j] *= self.non_request_scale / self.scale if self.scale else 0.0
        return row

    def transform(self, X: Sequence[str]) -> sparse.csr_matrix:
        rows = [self.scores(self.compiled.match(doc)) for doc in X]
        return sparse.csr_matrix(np.vstack(rows) if rows else np.zeros((0, len(LABELS))))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray([f"rule:{label}" for label in LABELS], dtype=object)


def load_keywords(path: Path | None = None) -> dict[str, Any]:
    """The parsed keywords file as plain data (validated by building the rules once)."""
    with open(path or DEFAULT_KEYWORDS_PATH, "rb") as fh:
        doc = tomllib.load(fh)
    KeywordRules.from_dict(doc)
    return doc
