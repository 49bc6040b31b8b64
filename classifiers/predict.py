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
from classifiers.calibrate import DEFAULT_REVIEW_THRESHOLD, scaled
from classifiers.closing import closing_note
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
# What an artifact without these settings gets: the model's own probabilities, any
# not_a_request screens, no open-set fallback (how models behaved before they existed).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_SCREEN_THRESHOLD = 0.0
DEFAULT_OPEN_SET_THRESHOLD = 0.0
OPEN_SET_LABEL = "other"
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
        # Chosen at training (classifiers.train.calibrate), each from a measurement:
        self.temperature = float(meta.get("temperature", DEFAULT_TEMPERATURE))
        self.screen_threshold = float(meta.get("screen_threshold", DEFAULT_SCREEN_THRESHOLD))
        self.open_set_threshold = float(meta.get("open_set_threshold",
                                                 DEFAULT_OPEN_SET_THRESHOLD))
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

    def probabilities(self, emails: Sequence[EmailInput]) -> tuple[np.ndarray, list[bool]]:
        """The text model's raw (uncalibrated) probabilities over ``classes`` for each email,
        and whether a rule screened it before the model (calibration leaves those out)."""
        screened = [self._screen(e) is not None for e in emails]
        texts = [prepare(e) for e in emails]
        proba, _ = self._model(texts, [self.rules.match(t) for t in texts])
        return proba, screened

    # ------------------------------------------------------------------ internals

    def _screen(self, email: EmailInput) -> Decision | None:
        try:
            result = screen_headers(email.headers or {}, email.sender or "")
        except Exception:  # a malformed header mapping must not stop the text model
            log.warning("header screen failed; classifying on content", exc_info=True)
            return None
        if result is None:
            phrase = closing_note(email)
            if phrase is None:
                return None
            return Decision(
                label=NOT_A_REQUEST, confidence=1.0, priority=None, needs_review=False,
                non_request_kind="thanks", evidence=(Evidence("rule", f"{phrase} (closing note)",
                                                              1.0),),
                model_version=self.version, screened_by="closing_note")
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
        proba, rows = self._model(texts, hits)
        return [self._decide(proba[r], hits[r], idx, vals) for r, (idx, vals) in enumerate(rows)]

    def _model(self, texts: list[str], hits: list[list[RuleHit]]
               ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The text model's raw probabilities and each text's nonzero features (the evidence
        staff see), from the compiled scorer or else the pipeline."""
        if self.scorer is not None:
            rows = [self.scorer.features(t, h) for t, h in zip(texts, hits, strict=True)]
            return self.scorer.proba_many(rows), rows
        import sklearn

        with sklearn.config_context(assume_finite=True):
            X = self.pipe.named_steps["features"].transform(texts).tocsr()
            proba = self.pipe.named_steps["model"].predict_proba(X)
        return proba, [
            (X.indices[X.indptr[r] : X.indptr[r + 1]], X.data[X.indptr[r] : X.indptr[r + 1]])
            for r in range(len(texts))
        ]

    def calibrated(self, proba: np.ndarray) -> np.ndarray:
        """The probabilities at the temperature fitted at training (``calibrate.scaled``).

        Fitted on the training split: above 1 it spreads an overconfident model, below 1 it
        sharpens one whose balanced class weights spread probability over many labels;
        either way a confidence of 0.8 is then right about 80 % of the time on the split
        (the reliability table of ``triage evaluate`` shows how it holds elsewhere)."""
        return proba if self.temperature == 1.0 else scaled(proba, self.temperature)

    def _decide(
        self,
        proba: np.ndarray,
        hits: list[RuleHit],
        idx: np.ndarray,
        vals: np.ndarray,
    ) -> Decision:
        """The costs of the two mistakes are unequal, and so are the thresholds.

        A request screened out is a client nobody answers; a non-request opened costs staff
        one click. So the text model screens a message out only at a confidence whose
        measured precision is high (``screen_threshold``); below it the best request type
        opens a work order, flagged for review. And when no specific type is confident
        (``open_set_threshold``), ``other`` with review beats a confident-looking wrong type.
        """
        proba = self.calibrated(proba)
        k = int(np.argmax(proba))
        label = self.classes[k]
        confidence = float(proba[k])
        cues = self.rules.cues(hits)
        kind = best = best_p = None
        note: str | None = None
        if label == NOT_A_REQUEST:
            if confidence >= self.screen_threshold:
                kind = self.rules.non_request_kind(hits) or "spam"
                j = self._best_request(proba)
                best, best_p = self.classes[j], float(proba[j])
            else:
                k = self._best_request(proba)
                note = (f"may not be a request ({self.rules.non_request_kind(hits) or 'spam'}"
                        f" {confidence:.2f}); opened to be safe")
                label, confidence = self.classes[k], float(proba[k])
        if (label not in (NOT_A_REQUEST, OPEN_SET_LABEL) and OPEN_SET_LABEL in self.classes
                and confidence < self.open_set_threshold):
            note = "; ".join(x for x in (note, f"no type is confident (best {label} "
                                              f"{confidence:.2f})") if x)
            priority = self._open_set_priority(proba, cues)
            k = self.classes.index(OPEN_SET_LABEL)
            label, confidence = OPEN_SET_LABEL, float(proba[k])
        else:
            priority = priority_for(label, cues, self.priorities)
        return Decision(
            label=label,
            confidence=round(confidence, 4),
            priority=priority,
            # No known word at all: the probabilities are just the class priors.
            needs_review=(note is not None or confidence < self.review_threshold
                          or idx.size == 0),
            non_request_kind=kind,
            cues=cues,
            evidence=self._evidence(label, k, hits, idx, vals),
            model_version=self.version,
            review_note=note,
            best_request=best,
            best_request_confidence=None if best_p is None else round(best_p, 4),
        )

    def _best_request(self, proba: np.ndarray) -> int:
        ranked = np.argsort(-proba)
        return int(next(i for i in ranked if self.classes[i] != NOT_A_REQUEST))

    def _open_set_priority(self, proba: np.ndarray, cues: Sequence[str]) -> str | None:
        """Priority of a request sent to ``other``: urgent when the urgent types together are
        more likely than not (a missed outage costs more than a call-back too many)."""
        urgent = sum(float(p) for c, p in zip(self.classes, proba, strict=True)
                     if c != NOT_A_REQUEST and self.priorities.get(c) == "urgent")
        if urgent >= 0.5:
            return "high" if "workaround" in cues else "urgent"
        return priority_for(OPEN_SET_LABEL, cues, self.priorities)

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
