"""One email → one ``Decision``: header screen, then the text model, then priority and cues.

``Classifier.classify`` scores a single message without going through scikit-learn's
per-call machinery (about 1 ms of validation and sparse bookkeeping): it reads the fitted
vocabulary, idf weights and coefficients directly. ``classify_many`` does the same per
message and multiplies the batch in one sparse product. Tests hold both to the pipeline's
own ``predict_proba``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from classifiers import artifact
from classifiers.features import KeywordFeatures, KeywordRules, RuleHit, prepare
from classifiers.screen import screen_headers
from classifiers.types import LABELS, NOT_A_REQUEST, Decision, EmailInput, Evidence

log = logging.getLogger(__name__)

DEFAULT_PRIORITIES: dict[str, str] = {
    "password_reset": "urgent",
    "company_file_error": "urgent",
    "website_down": "urgent",
    "server_down": "urgent",
    "email_problem": "urgent",
    "quickbooks_print": "high",
}
DEFAULT_REVIEW_THRESHOLD = 0.5
MAX_MODEL_EVIDENCE = 5
MAX_RULE_EVIDENCE = 5


def _telling(ngram: str) -> bool:
    """Worth showing staff: not made only of stop words ("re", "of the") or single letters."""
    return any(len(w) > 2 and w not in ENGLISH_STOP_WORDS for w in ngram.split())


def priority_for(label: str, cues: Sequence[str], priorities: dict[str, str]) -> str | None:
    """Type default from the SLA policy; an urgent request with a workaround is high."""
    if label == NOT_A_REQUEST:
        return None
    priority = priorities.get(label, "normal")
    if priority == "urgent" and "workaround" in cues:
        return "high"
    return priority


@dataclass(frozen=True)
class _Vectorizer:
    """What a fitted TfidfVectorizer needs to turn one document into its weighted terms."""

    analyze: Callable[[str], list[str]]
    vocabulary: dict[str, int]
    idf: np.ndarray
    sublinear: bool
    offset: int


class _FastScorer:
    """The fitted pipeline's arithmetic for one document, without scikit-learn overhead.

    Only the logistic-regression pipeline has a fast path; other models fall back to the
    pipeline (``supported`` is False).
    """

    def __init__(self, pipe: Pipeline) -> None:
        union = pipe.named_steps["features"]
        model = pipe.named_steps["model"]
        self.supported = isinstance(model, LogisticRegression) and all(
            w == 1 or w is None for w in (union.transformer_weights or {}).values()
        )
        self.vectorizers: list[_Vectorizer] = []
        self.terms: list[list[str] | None] = []  # column → word n-gram, for evidence
        self.rules: KeywordFeatures | None = None
        self.rules_offset = 0
        offset = 0
        for _, part in union.transformer_list:
            if isinstance(part, KeywordFeatures):
                self.rules, self.rules_offset = part, offset
                offset += len(LABELS)
            else:
                self.supported &= part.norm == "l2" and part.use_idf and part.binary is False
                terms: list[str] | None = None
                if part.analyzer == "word":
                    terms = [""] * len(part.vocabulary_)
                    for term, i in part.vocabulary_.items():
                        terms[i] = term
                self.terms.append(terms)
                self.vectorizers.append(
                    _Vectorizer(
                        part.build_analyzer(),
                        part.vocabulary_,
                        part.idf_,
                        bool(part.sublinear_tf),
                        offset,
                    )
                )
                offset += len(part.vocabulary_)
        if self.supported:
            self.coef_t = np.ascontiguousarray(model.coef_.T)  # (n_features, n_classes)
            self.intercept = model.intercept_
            self.classes = [str(c) for c in model.classes_]
            self.binary = len(self.classes) == 2

    def features(self, text: str, hits: list[RuleHit]) -> tuple[np.ndarray, np.ndarray]:
        """Column indices and values of the nonzero features of ``text``."""
        idx: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for vec in self.vectorizers:
            get = vec.vocabulary.get
            cols = [c for c in map(get, vec.analyze(text)) if c is not None]
            if not cols:
                continue
            uniq, counts = np.unique(np.asarray(cols, dtype=np.intp), return_counts=True)
            tf = 1.0 + np.log(counts) if vec.sublinear else counts.astype(float)
            v = tf * vec.idf[uniq]
            idx.append(uniq + vec.offset)
            vals.append(v / np.sqrt(v @ v))
        if self.rules is not None:
            scores = self.rules.scores(hits)
            nz = np.flatnonzero(scores)
            if nz.size:
                idx.append(nz + self.rules_offset)
                vals.append(scores[nz])
        if not idx:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        return np.concatenate(idx), np.concatenate(vals)

    def name_of(self, col: int) -> str | None:
        """The word n-gram behind a column; None for character n-grams and rule scores
        (meaningless to staff, and the matched rules are listed on their own)."""
        for vec, terms in zip(self.vectorizers, self.terms, strict=True):
            if terms is not None and 0 <= col - vec.offset < len(terms):
                return terms[col - vec.offset]
        return None

    def proba_many(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Probabilities for many feature rows in one sparse product."""
        indptr = np.cumsum([0] + [len(i) for i, _ in rows])
        idx = np.concatenate([i for i, _ in rows]) if rows else np.zeros(0, dtype=np.intp)
        vals = np.concatenate([v for _, v in rows]) if rows else np.zeros(0)
        X = sparse.csr_matrix((vals, idx, indptr), shape=(len(rows), self.coef_t.shape[0]))
        z = np.asarray(X @ self.coef_t) + self.intercept
        if self.binary:
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.column_stack([1.0 - p1, p1])
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def proba(self, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
        z = vals @ self.coef_t[idx] + self.intercept if idx.size else self.intercept.copy()
        if self.binary:
            p1 = 1.0 / (1.0 + math.exp(-float(z[0])))
            return np.array([1.0 - p1, p1])
        z = z - z.max()
        e = np.exp(z)
        return e / e.sum()


class Classifier:
    """A loaded model. Create with ``Classifier.load()``; never loads anything at import."""

    def __init__(self, pipe: Pipeline, meta: dict[str, Any]) -> None:
        self.pipe = pipe
        self.meta = meta
        self.version: str = str(meta.get("model_version", "unknown"))
        self.priorities: dict[str, str] = {
            **{t: "normal" for t in LABELS if t != NOT_A_REQUEST},
            **DEFAULT_PRIORITIES,
            **meta.get("priorities", {}),
        }
        self.review_threshold = float(meta.get("review_threshold", DEFAULT_REVIEW_THRESHOLD))
        rules_step = next(
            (
                p
                for _, p in pipe.named_steps["features"].transformer_list
                if isinstance(p, KeywordFeatures)
            ),
            None,
        )
        self.rules: KeywordRules = (
            rules_step.compiled if rules_step is not None else KeywordRules({}, {})
        )
        self.classes: list[str] = [str(c) for c in pipe.classes_]
        self._fast = _FastScorer(pipe)

    @classmethod
    def load(cls, path: Path | None = None) -> Classifier:
        pipe, meta = artifact.load(path)
        trained_with = meta.get("sklearn_version")
        if trained_with and trained_with != sklearn.__version__:
            log.warning(
                "model %s was trained with scikit-learn %s, running %s",
                meta.get("model_version"),
                trained_with,
                sklearn.__version__,
            )
        return cls(pipe, meta)

    # ------------------------------------------------------------------ public API

    def classify(self, email: EmailInput) -> Decision:
        screened = self._screen(email)
        if screened is not None:
            return screened
        text = prepare(email)
        hits = self.rules.match(text)
        if self._fast.supported:
            idx, vals = self._fast.features(text, hits)
            return self._decide(self._fast.proba(idx, vals), hits, idx, vals)
        return self._classify_batch([text], [hits])[0]

    def classify_many(self, emails: Sequence[EmailInput]) -> list[Decision]:
        out: list[Decision | None] = [self._screen(e) for e in emails]
        todo = [i for i, d in enumerate(out) if d is None]
        if todo:
            texts = [prepare(emails[i]) for i in todo]
            hits = [self.rules.match(t) for t in texts]
            for i, decision in zip(todo, self._classify_batch(texts, hits), strict=True):
                out[i] = decision
        return [d for d in out if d is not None]

    # ------------------------------------------------------------------ internals

    def _screen(self, email: EmailInput) -> Decision | None:
        try:
            result = screen_headers(email.headers or {}, email.sender or "")
        except Exception:  # a malformed header mapping must not stop the text model
            log.warning("header screen failed; classifying on content", exc_info=True)
            return None
        if result is None:
            return None
        return Decision(
            label=NOT_A_REQUEST,
            confidence=1.0,
            priority=None,
            needs_review=False,
            non_request_kind=result.kind,
            evidence=(Evidence("header", result.header, 1.0),),
            model_version=self.version,
            screened_by="header",
        )

    def _classify_batch(self, texts: list[str], hits: list[list[RuleHit]]) -> list[Decision]:
        if self._fast.supported:
            rows = [self._fast.features(t, h) for t, h in zip(texts, hits, strict=True)]
            proba = self._fast.proba_many(rows)
        else:
            with sklearn.config_context(assume_finite=True):
                X = self.pipe.named_steps["features"].transform(texts).tocsr()
                proba = self.pipe.named_steps["model"].predict_proba(X)
            rows = [
                (X.indices[X.indptr[r] : X.indptr[r + 1]], X.data[X.indptr[r] : X.indptr[r + 1]])
                for r in range(len(texts))
            ]
        return [self._decide(proba[r], hits[r], idx, vals) for r, (idx, vals) in enumerate(rows)]

    def _decide(
        self,
        proba: np.ndarray,
        hits: list[RuleHit],
        idx: np.ndarray,
        vals: np.ndarray,
    ) -> Decision:
        k = int(np.argmax(proba))
        label = self.classes[k]
        confidence = float(proba[k])
        cues = self.rules.cues(hits)
        kind = None
        if label == NOT_A_REQUEST:
            kind = self.rules.non_request_kind(hits) or "spam"
        return Decision(
            label=label,
            confidence=round(confidence, 4),
            priority=priority_for(label, cues, self.priorities),
            # No known word at all: the probabilities are just the class priors.
            needs_review=confidence < self.review_threshold or idx.size == 0,
            non_request_kind=kind,
            cues=cues,
            evidence=self._evidence(label, k, hits, idx, vals),
            model_version=self.version,
        )

    def _evidence(
        self,
        label: str,
        k: int,
        hits: list[RuleHit],
        idx: np.ndarray,
        vals: np.ndarray,
    ) -> tuple[Evidence, ...]:
        """Matched rules for the chosen label, then the n-grams that pushed hardest toward it."""
        ev: list[Evidence] = []
        for h in sorted(hits, key=lambda h: -abs(h.weight)):
            group = NOT_A_REQUEST if h.group.startswith("nr:") else h.group
            if group == label or (h.group.startswith("cue:") and label != NOT_A_REQUEST):
                ev.append(Evidence("rule", f"{h.phrase} ({h.group})", round(h.weight, 3)))
        ev = ev[:MAX_RULE_EVIDENCE]
        coef = self._coef_column(k)
        if coef is not None and idx.size:
            contrib = vals * coef[idx]
            shown = 0
            for j in np.argsort(-contrib)[:300]:
                if contrib[j] <= 0 or shown >= MAX_MODEL_EVIDENCE:
                    break
                # Character n-grams mean nothing to staff; show words and rule scores only.
                name = self._fast.name_of(int(idx[j]))
                if name is not None and _telling(name):
                    ev.append(Evidence("model", name, round(float(contrib[j]), 4)))
                    shown += 1
        return tuple(ev)

    def _coef_column(self, k: int) -> np.ndarray | None:
        if self._fast.supported:
            return self._fast.coef_t[:, k] if not self._fast.binary else None
        return None
