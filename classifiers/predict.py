"""One email → one ``Decision``: header screen, then the text model, then priority and cues.

The text model runs on the compiled ``classifiers.scorer.Scorer``: the fitted vocabulary,
idf weights and coefficients read directly, without scikit-learn's per-call machinery
(about 1 ms of validation and sparse bookkeeping) and, when the artifact carries a scorer
file, without importing scikit-learn at all. Tests hold it to the pipeline's own
``predict_proba``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from classifiers import artifact
from classifiers.features import KeywordRules, RuleHit, prepare
from classifiers.scorer import Scorer
from classifiers.scorer import load as load_scorer
from classifiers.screen import screen_headers
from classifiers.types import LABELS, NOT_A_REQUEST, Decision, EmailInput, Evidence

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

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


def priority_for(label: str, cues: Sequence[str], priorities: dict[str, str]) -> str | None:
    """Type default from the SLA policy; an urgent request with a workaround is high."""
    if label == NOT_A_REQUEST:
        return None
    priority = priorities.get(label, "normal")
    if priority == "urgent" and "workaround" in cues:
        return "high"
    return priority


class Classifier:
    """A loaded model. Create with ``Classifier.load()``; never loads anything at import.

    Classifies with the compiled ``Scorer`` (numpy only) when the artifact has one, and
    with the scikit-learn pipeline otherwise (a model the scorer cannot reproduce, or an
    artifact saved before scorers existed); ``pipe`` loads the pipeline when first asked.
    """

    def __init__(self, pipe: Pipeline | None, meta: dict[str, Any], *,
                 scorer: Scorer | None = None, path: Path | None = None) -> None:
        self._pipe, self._path = pipe, path
        self.meta = meta
        self.version: str = str(meta.get("model_version", "unknown"))
        self.priorities: dict[str, str] = {
            **{t: "normal" for t in LABELS if t != NOT_A_REQUEST},
            **DEFAULT_PRIORITIES,
            **meta.get("priorities", {}),
        }
        self.review_threshold = float(meta.get("review_threshold", DEFAULT_REVIEW_THRESHOLD))
        if scorer is None and pipe is not None:
            scorer = Scorer.from_pipeline(pipe)
        self.scorer = scorer
        if scorer is not None:
            self.rules: KeywordRules = scorer.rules
            self.classes: list[str] = list(scorer.classes)
        else:
            assert pipe is not None, "a classifier needs a pipeline or a scorer"
            from classifiers.features import KeywordFeatures

            rules_step = next((p for _, p in pipe.named_steps["features"].transformer_list
                               if isinstance(p, KeywordFeatures)), None)
            self.rules = rules_step.compiled if rules_step is not None else KeywordRules({}, {})
            self.classes = [str(c) for c in pipe.classes_]

    @property
    def pipe(self) -> Pipeline:
        """The scikit-learn pipeline (loaded from the artifact on first use)."""
        if self._pipe is None:
            assert self._path is not None
            self._pipe, _ = artifact.load(self._path)
        return self._pipe

    @classmethod
    def load(cls, path: Path | None = None) -> Classifier:
        path = Path(path) if path is not None else artifact.DEFAULT_MODEL_PATH
        meta = artifact.read_meta(path)
        if meta.get("format_version") == artifact.FORMAT_VERSION:
            try:
                scorer = load_scorer(path, meta)
            except (OSError, ValueError, KeyError) as e:
                log.warning("model %s: compiled scorer unusable (%s); using the pipeline",
                            meta.get("model_version"), e)
                scorer = None
            if scorer is not None:
                return cls(None, meta, scorer=scorer, path=path)
        pipe, meta = artifact.load(path)
        import sklearn

        trained_with = meta.get("sklearn_version")
        if trained_with and trained_with != sklearn.__version__:
            log.warning(
                "model %s was trained with scikit-learn %s, running %s",
                meta.get("model_version"),
                trained_with,
                sklearn.__version__,
            )
        return cls(pipe, meta, path=path)

    # ------------------------------------------------------------------ public API

    def classify(self, email: EmailInput) -> Decision:
        screened = self._screen(email)
        if screened is not None:
            return screened
        text = prepare(email)
        hits = self.rules.match(text)
        if self.scorer is not None:
            idx, vals = self.scorer.features(text, hits)
            return self._decide(self.scorer.proba(idx, vals), hits, idx, vals)
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
        if self.scorer is not None:
            rows = [self.scorer.features(t, h) for t, h in zip(texts, hits, strict=True)]
            proba = self.scorer.proba_many(rows)
        else:
            import sklearn

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
        kind = best = best_p = None
        if label == NOT_A_REQUEST:
            kind = self.rules.non_request_kind(hits) or "spam"
            others = [(float(proba[j]), c) for j, c in enumerate(self.classes) if j != k]
            if others:
                best_p, best = max(others)
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
            best_request=best,
            best_request_confidence=None if best_p is None else round(best_p, 4),
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
                assert self.scorer is not None
                name = self.scorer.name_of(int(idx[j]))
                if name is not None and self.scorer.telling(name):
                    ev.append(Evidence("model", name, round(float(contrib[j]), 4)))
                    shown += 1
        return tuple(ev)

    def _coef_column(self, k: int) -> np.ndarray | None:
        if self.scorer is not None:
            return self.scorer.coef_t[:, k] if not self.scorer.binary else None
        return None
