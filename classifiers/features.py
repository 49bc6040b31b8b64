"""Text preparation and rule features, shared by training and prediction.

Everything here is pure: the same email always gives the same text and the same rule hits,
so the model sees at prediction time exactly what it saw in training.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.htmltext import MAX_RAW_CHARS, html_to_text
from classifiers.types import LABELS, NOT_A_REQUEST, EmailInput
from triage.resources import DATA_DIR

log = logging.getLogger(__name__)

# Longer mail carries no more signal about its type; capping keeps 1 MB bodies cheap.
MAX_BODY_CHARS = 6000
MAX_SUBJECT_CHARS = 300

DEFAULT_KEYWORDS_PATH = DATA_DIR / "keywords.toml"


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


_WORD = re.compile(r"\w+")
# "Re:", "AW:", "RE: RE:" and ticket tags of any system ("[ITX #48213]", "Ticket#123",
# "[#123]", our "[ITX-000123]") at the start of a subject.
REPLY_SUBJECT = re.compile(
    r"\s*(?:\b(?:re|aw|sv|vs|antw|odp|r)\s*:\s*|\[\s*[a-z]*[-\s]*#?\s*\d+\s*\]\s*|"
    r"\bticket\s*#?\s*\d+\s*)+",
    re.IGNORECASE,
)
REPLY_SUBJECT_WEIGHT = 0.5


@dataclass(frozen=True)
class _Compiled:
    pattern: re.Pattern[str]  # every phrase, longest first, at word boundaries
    index: dict[str, list[tuple[str, float]]]  # phrase -> (group, weight), ...
    firsts: frozenset[str]  # the leading word of every phrase
    starts: re.Pattern[str]  # where a phrase may start: words, and punctuation some start with


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

    def __init__(self, groups: Mapping[str, Mapping[str, float]], thresholds: Mapping[str, float],
                 requires: Mapping[str, Sequence[str]] | None = None,
                 negated_by: Mapping[str, Sequence[str]] | None = None):
        self.groups = {
            g: {normalise(p): float(w) for p, w in ph.items()} for g, ph in groups.items()
        }
        self.thresholds = dict(thresholds)
        # Context (see data/keywords.toml, [context]): a group's phrases count only where one
        # of its ``requires`` phrases occurs somewhere in the text, and not where one of its
        # ``negated_by`` phrases stands just before them ("no longer down", "can be resolved").
        self.requires = {g: [normalise(p) for p in ph] for g, ph in (requires or {}).items()}
        self.negated_by = {g: [normalise(p) for p in ph] for g, ph in (negated_by or {}).items()}
        self._compiled: _Compiled | None = None
        self._context: tuple[dict[str, re.Pattern[str]], dict[str, re.Pattern[str]]] | None = None

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
        context = doc.get("context", {})
        requires = {_group_name(g, groups): list(v)
                    for g, v in context.get("requires", {}).items()}
        negated = {_group_name(g, groups): list(v)
                   for g, v in context.get("negated_by", {}).items()}
        return cls(groups, thresholds, requires, negated)

    def __getstate__(self) -> dict[str, Any]:
        return {"groups": self.groups, "thresholds": self.thresholds,
                "requires": self.requires, "negated_by": self.negated_by}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.groups = dict(state["groups"])
        self.thresholds = dict(state["thresholds"])
        self.requires = dict(state.get("requires", {}))
        self.negated_by = dict(state.get("negated_by", {}))
        self._compiled = None
        self._context = None

    def _context_patterns(self) -> tuple[dict[str, re.Pattern[str]], dict[str, re.Pattern[str]]]:
        if self._context is None:
            def alts(phrases: Sequence[str]) -> str:
                return "|".join(re.escape(p).replace(r"\ ", r"\s+")
                                for p in sorted(phrases, key=len, reverse=True))

            req = {g: re.compile(rf"(?<!\w)(?:{alts(ph)})(?!\w)") for g, ph in self.requires.items()
                   if ph}
            # The negator, then at most two other words, then the phrase: "no longer down",
            # "isn't really down", "can be resolved", "hopefully resolved".
            neg = {g: re.compile(rf"(?<!\w)(?:{alts(ph)})(?:\s+[\w']+){{0,2}}\s*$")
                   for g, ph in self.negated_by.items() if ph}
            self._context = (req, neg)
        return self._context

    def _compile(self) -> _Compiled:
        if self._compiled is None:
            index: dict[str, list[tuple[str, float]]] = {}
            for group, phrases in self.groups.items():
                for phrase, weight in phrases.items():
                    index.setdefault(phrase, []).append((group, weight))
            # Longest first, so "can't print from quickbooks" wins over "quickbooks".
            alts = sorted(index, key=len, reverse=True)
            body = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in alts) or "(?!x)x"
            firsts = {m.group(0) for p in alts if (m := _WORD.match(p))}
            others = "".join(sorted({re.escape(p[0]) for p in alts if not _WORD.match(p)}))
            self._compiled = _Compiled(
                re.compile(rf"(?<!\w)(?:{body})(?!\w)"), index, frozenset(firsts),
                re.compile(rf"(?P<w>\w+)|[{others}]" if others else r"(?P<w>\w+)"))
        return self._compiled

    def match(self, text: str) -> list[RuleHit]:
        """Every phrase occurrence in ``text`` (lower-cased), at most once per phrase.

        The same matches as ``pattern.finditer(text)``, found faster: a phrase can only
        start at a word whose leading run of word characters is some phrase's (or at the
        first character of a phrase that starts with punctuation, such as "-6000"), so the
        phrase alternation is tried there alone, not at every character. It was the largest
        cost of a classification (~0.15 ms a message here)."""
        c = self._compile()
        requires, negated = self._context_patterns()
        # A reply's subject names the thread ("Re: website is down"), not what this mail
        # says ("it's back, thanks"): its phrases weigh less than the body's.
        first = text.find("\n")
        subject_end = (first if first >= 0 else len(text)) if REPLY_SUBJECT.match(text) else 0
        present: dict[str, bool] = {}
        seen: set[tuple[str, str]] = set()  # (phrase, group) already counted
        hits: list[RuleHit] = []
        end = 0
        for w in c.starts.finditer(text):
            word = w.group("w")
            if w.start() < end or (word is not None and word not in c.firsts):
                continue
            m = c.pattern.match(text, w.start())
            if m is None:
                continue
            end = m.end()
            phrase = normalise(m.group(0))
            for group, weight in c.index.get(phrase, ()):
                if (phrase, group) in seen:
                    continue
                need = requires.get(group)
                if need is not None:
                    if group not in present:
                        present[group] = need.search(text) is not None
                    if not present[group]:
                        continue
                neg = negated.get(group)
                if neg is not None and neg.search(text, max(0, m.start() - 60), m.start()):
                    continue  # this occurrence is negated; a later one may still count
                seen.add((phrase, group))
                if m.start() < subject_end:
                    weight *= REPLY_SUBJECT_WEIGHT
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


def _group_name(name: str, groups: Mapping[str, Any]) -> str:
    """A [context] key as a rule group: a type as it is, "thanks" as "nr:thanks", "urgency"
    as "cue:urgency"; unknown names are refused so a typo cannot silently do nothing."""
    for candidate in (name, f"nr:{name}", f"cue:{name}"):
        if candidate in groups:
            return candidate
    raise ValueError(f"keywords: [context] names unknown rule group {name!r}")


def rule_row(rules: KeywordRules, hits: Iterable[RuleHit], scale: float,
             non_request_scale: float | None) -> np.ndarray:
    """The rule columns of one document: label scores times ``scale``, the not_a_request
    column times ``non_request_scale`` instead when set (the pipeline step and the
    compiled scorer both compute them here)."""
    row = rules.label_scores(hits) * scale
    if non_request_scale is not None:
        j = LABELS.index(NOT_A_REQUEST)
        row[j] *= non_request_scale / scale if scale else 0.0
    return row


def load_keywords(path: Path | None = None) -> dict[str, Any]:
    """The parsed keywords file as plain data (validated by building the rules once)."""
    with open(path or DEFAULT_KEYWORDS_PATH, "rb") as fh:
        doc = tomllib.load(fh)
    KeywordRules.from_dict(doc)
    return doc


def __getattr__(name: str) -> Any:
    # The pipeline step lives with scikit-learn (classifiers._rules_step), imported only when
    # asked for: prediction from a compiled scorer (classifiers.scorer) never needs it.
    # Artifacts name it ``classifiers.features.KeywordFeatures``, so it answers here too.
    if name == "KeywordFeatures":
        from classifiers._rules_step import KeywordFeatures

        return KeywordFeatures
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
