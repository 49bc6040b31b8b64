"""The fitted model's arithmetic as plain arrays: prediction without scikit-learn.

A fitted pipeline (classifiers.pipeline) is two TF-IDF vectorizers (words, character
n-grams within words), the keyword rule scores and a logistic regression. Predicting needs
only their vocabularies, idf weights, coefficients and a few settings; ``Scorer`` holds
those and does the arithmetic itself, which is both faster than the pipeline's per-call
machinery and lighter: the daemon's ingest worker classifies with numpy alone, without
importing scikit-learn or scipy (~90 MB of resident memory and ~2 s of start-up here).

``Scorer.from_pipeline`` compiles a fitted pipeline (it reads scikit-learn's objects, so
only training calls it) and returns None for a pipeline it cannot reproduce exactly (the
calibrated SVM, other analyzers or settings); ``save``/``load`` keep it beside the skops
artifact as ``model.scorer.npz``, numpy arrays and one JSON document, read without pickle.
Tests hold its probabilities to the pipeline's ``predict_proba``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.features import KeywordRules, RuleHit, rule_row
from classifiers.types import LABELS

SCORER_FORMAT = 1
# Words whose character n-gram columns are remembered (see TextPart.columns); the cache is
# emptied when full, so random junk cannot grow it without bound.
WORD_CACHE_SIZE = 20_000
_WHITE_SPACES = re.compile(r"\s\s+")  # scikit-learn's, before char_wb n-grams


def scorer_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".scorer.npz")


def _terms_by_column(vocabulary: dict[str, int]) -> list[str]:
    terms = [""] * len(vocabulary)
    for term, i in vocabulary.items():
        terms[i] = term
    return terms


@dataclass
class TextPart:
    """One fitted TF-IDF vectorizer: its analyzer's settings, vocabulary and idf."""

    analyzer: str  # "word" | "char_wb"
    ngram_range: tuple[int, int]
    lowercase: bool
    token_pattern: str | None  # word analyzer only
    vocabulary: dict[str, int]
    idf: np.ndarray
    sublinear: bool
    offset: int  # first column of this part in the model's feature space
    terms: list[str] | None = None  # word n-grams by column, for the evidence staff see
    word_cols: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._token = re.compile(self.token_pattern) if self.token_pattern else None

    def _preprocess(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def word_ngrams(self, tokens: list[str]) -> list[str]:
        """scikit-learn's ``_word_ngrams`` without stop words."""
        lo, hi = self.ngram_range
        out = list(tokens) if lo == 1 else []
        for n in range(max(lo, 2), min(hi, len(tokens)) + 1):
            out += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        return out

    def char_wb_ngrams(self, word: str) -> list[str]:
        """scikit-learn's ``_char_wb_ngrams`` for one word (padded with spaces)."""
        lo, hi = self.ngram_range
        w = f" {word} "
        out: list[str] = []
        for n in range(lo, hi + 1):
            out += [w[i:i + n] for i in range(max(1, len(w) - n + 1))]
            if len(w) <= n:  # a short word counts once, as scikit-learn does
                break
        return out

    def _words(self, text: str) -> list[str]:
        """What ``char_wb`` makes n-grams of: the words between runs of white space."""
        return _WHITE_SPACES.sub(" ", self._preprocess(text)).split()

    def columns(self, text: str) -> list[int]:
        """Vocabulary columns of the document's terms, repeats kept (they are the counts).

        ``char_wb`` n-grams never cross a word boundary, so a document's n-grams are its
        words' n-grams one after the other, and a word's columns can be remembered: mail
        repeats its words, and the n-grams were most of a classification's cost."""
        get = self.vocabulary.get
        if self.analyzer == "word":
            return [c for c in map(get, self.analyze(text)) if c is not None]
        cache = self.word_cols
        cols: list[int] = []
        for w in self._words(text):
            known = cache.get(w)
            if known is None:
                known = [c for c in map(get, self.char_wb_ngrams(w)) if c is not None]
                if len(cache) >= WORD_CACHE_SIZE:
                    cache.clear()
                cache[w] = known
            cols += known
        return cols

    def analyze(self, text: str) -> list[str]:
        """The terms of ``text`` (what the vectorizer's ``build_analyzer()`` returns)."""
        if self.analyzer == "word":
            assert self._token is not None
            return self.word_ngrams(self._token.findall(self._preprocess(text)))
        return [g for w in self._words(text) for g in self.char_wb_ngrams(w)]


class Scorer:
    """Feature rows and probabilities of the compiled model; see the module docstring."""

    def __init__(self, parts: list[TextPart], rules: KeywordRules, rules_offset: int | None,
                 rule_scale: float, non_request_scale: float | None, coef_t: np.ndarray,
                 intercept: np.ndarray, classes: list[str], stop_words: frozenset[str]) -> None:
        self.parts, self.rules, self.rules_offset = parts, rules, rules_offset
        self.rule_scale, self.non_request_scale = rule_scale, non_request_scale
        self.coef_t = np.ascontiguousarray(coef_t)  # (n_features, n_classes)
        self.intercept = intercept
        self.classes = classes
        self.binary = len(classes) == 2
        self.stop_words = stop_words

    # ---- compiling (training only) -----------------------------------------------------------
    @classmethod
    def from_pipeline(cls, pipe: Any) -> Scorer | None:
        """The pipeline's arithmetic, or None when it is not one this class reproduces."""
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion

        from classifiers.features import KeywordFeatures

        steps = dict(getattr(pipe, "steps", []))
        union, model = steps.get("features"), steps.get("model")
        if not isinstance(union, FeatureUnion) or not isinstance(model, LogisticRegression) or any(
                w not in (1, None) for w in (union.transformer_weights or {}).values()):
            return None
        parts: list[TextPart] = []
        rules: KeywordFeatures | None = None
        rules_offset: int | None = None
        offset = 0
        for _, step in union.transformer_list:
            if isinstance(step, KeywordFeatures):
                rules, rules_offset = step, offset
                offset += len(LABELS)
                continue
            if not (isinstance(step, TfidfVectorizer) and step.analyzer in ("word", "char_wb")
                    and step.norm == "l2" and step.use_idf and not step.binary
                    and step.strip_accents is None and step.preprocessor is None
                    and step.tokenizer is None and step.stop_words is None
                    and step.input == "content"):
                return None
            vocab = dict(step.vocabulary_)
            word = step.analyzer == "word"
            parts.append(TextPart(
                step.analyzer, tuple(step.ngram_range), bool(step.lowercase),
                step.token_pattern if word else None, vocab,
                np.asarray(step.idf_, dtype=np.float64), bool(step.sublinear_tf), offset,
                _terms_by_column(vocab) if word else None))
            offset += len(vocab)
        if offset != model.coef_.shape[1]:
            return None
        return cls(parts, rules.compiled if rules else KeywordRules({}, {}), rules_offset,
                   float(rules.scale) if rules else 0.0,
                   None if rules is None or rules.non_request_scale is None
                   else float(rules.non_request_scale),
                   np.asarray(model.coef_, dtype=np.float64).T,
                   np.asarray(model.intercept_, dtype=np.float64),
                   [str(c) for c in model.classes_], frozenset(ENGLISH_STOP_WORDS))

    # ---- files ------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {
            "format": SCORER_FORMAT, "classes": self.classes, "rules_offset": self.rules_offset,
            "rule_scale": self.rule_scale, "non_request_scale": self.non_request_scale,
            "rules": {"groups": self.rules.groups, "thresholds": self.rules.thresholds,
                      "requires": self.rules.requires, "negated_by": self.rules.negated_by},
            "stop_words": sorted(self.stop_words),
            "parts": [{"analyzer": p.analyzer, "ngram_range": list(p.ngram_range),
                       "lowercase": p.lowercase, "token_pattern": p.token_pattern,
                       "sublinear": p.sublinear, "offset": p.offset} for p in self.parts],
        }
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps(doc, sort_keys=True).encode(), dtype=np.uint8),
            "coef_t": self.coef_t, "intercept": self.intercept,
        }
        for i, p in enumerate(self.parts):
            arrays[f"terms_{i}"] = np.asarray(_terms_by_column(p.vocabulary), dtype=str)
            arrays[f"idf_{i}"] = p.idf
        buf = io.BytesIO()
        # No pickles, as from_bytes loads it: an object array fails here, not at load time.
        np.savez(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Scorer:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            doc = json.loads(bytes(z["meta"]).decode())
            if doc.get("format") != SCORER_FORMAT:
                raise ValueError(f"scorer format {doc.get('format')!r}, expected {SCORER_FORMAT}")
            parts = []
            for i, p in enumerate(doc["parts"]):
                terms = z[f"terms_{i}"].tolist()
                parts.append(TextPart(
                    p["analyzer"], tuple(p["ngram_range"]), p["lowercase"], p["token_pattern"],
                    {t: j for j, t in enumerate(terms)}, z[f"idf_{i}"], p["sublinear"],
                    p["offset"], terms if p["analyzer"] == "word" else None))
            rules = KeywordRules(doc["rules"]["groups"], doc["rules"]["thresholds"],
                                 doc["rules"].get("requires"), doc["rules"].get("negated_by"))
            return cls(parts, rules, doc["rules_offset"], doc["rule_scale"],
                       doc["non_request_scale"], z["coef_t"], z["intercept"], doc["classes"],
                       frozenset(doc["stop_words"]))

    # ---- prediction -------------------------------------------------------------------------
    def features(self, text: str, hits: list[RuleHit]) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and values of the nonzero features of ``text``."""
        idx: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for part in self.parts:
            cols = part.columns(text)
            if not cols:
                continue
            uniq, counts = np.unique(np.asarray(cols, dtype=np.intp), return_counts=True)
            tf = 1.0 + np.log(counts) if part.sublinear else counts.astype(float)
            v = tf * part.idf[uniq]
            idx.append(uniq + part.offset)
            vals.append(v / np.sqrt(v @ v))
        if self.rules_offset is not None:
            scores = self.rule_scores(hits)
            nz = np.flatnonzero(scores)
            if nz.size:
                idx.append(nz + self.rules_offset)
                vals.append(scores[nz])
        if not idx:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        return np.concatenate(idx), np.concatenate(vals)

    def rule_scores(self, hits: list[RuleHit]) -> np.ndarray:
        """``KeywordFeatures.scores``: the rule columns of one document."""
        return rule_row(self.rules, hits, self.rule_scale, self.non_request_scale)

    def name_of(self, col: int) -> str | None:
        """The word n-gram behind a column; None for character n-grams and rule scores
        (meaningless to staff, and the matched rules are listed on their own)."""
        for part in self.parts:
            if part.terms is not None and 0 <= col - part.offset < len(part.terms):
                return part.terms[col - part.offset]
        return None

    def telling(self, ngram: str) -> bool:
        """Worth showing staff: not made only of stop words ("re", "of the") or letters."""
        return any(len(w) > 2 and w not in self.stop_words for w in ngram.split())

    def proba_many(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Probabilities for many feature rows."""
        return np.vstack([self.proba(i, v) for i, v in rows]) if rows else \
            np.zeros((0, len(self.classes)))

    def proba(self, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        z = vals @ self.coef_t[idx] + self.intercept if idx.size else self.intercept.copy()
        if self.binary:
            p1 = 1.0 / (1.0 + math.exp(-float(z[0])))
            return np.array([1.0 - p1, p1])
        z = z - z.max()
        e = np.exp(z)
        return np.asarray(e / e.sum())


def save(scorer: Scorer, model_path: Path) -> str:
    """Write the scorer beside ``model_path``; returns its sha256 for the metadata."""
    from classifiers.artifact import _atomic_write

    blob = scorer.to_bytes()
    _atomic_write(scorer_path(model_path), blob)
    return hashlib.sha256(blob).hexdigest()


def load(model_path: Path, meta: dict[str, Any]) -> Scorer | None:
    """The scorer beside ``model_path`` if the metadata vouches for it, else None (then the
    caller loads the pipeline)."""
    expected = meta.get("scorer_sha256")
    path = scorer_path(model_path)
    if not expected or not path.exists():
        return None
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != expected:
        raise ValueError(f"{path} does not match its metadata (sha256)")
    return Scorer.from_bytes(blob)
