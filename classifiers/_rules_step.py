"""The keyword-rule scores as a scikit-learn pipeline step (training and the pipeline path).

Apart from classifiers.features so that prediction from a compiled scorer never imports
scikit-learn; saved artifacts know it as ``classifiers.features.KeywordFeatures`` (its
``__module__``), which that module resolves lazily.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin

from classifiers.features import KeywordRules, RuleHit, rule_row
from classifiers.types import LABELS


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
        return rule_row(self.compiled, hits, self.scale, self.non_request_scale)

    def transform(self, X: Sequence[str]) -> sparse.csr_matrix:
        rows = [self.scores(self.compiled.match(doc)) for doc in X]
        return sparse.csr_matrix(np.vstack(rows) if rows else np.zeros((0, len(LABELS))))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray([f"rule:{label}" for label in LABELS], dtype=object)


KeywordFeatures.__module__ = "classifiers.features"
