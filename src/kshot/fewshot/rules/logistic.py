"""A linear classifier fitted on the enrolled embeddings (scikit-learn's logistic regression)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from kshot.fewshot.rules.base import DecisionRule, class_means

log = logging.getLogger("kshot")


MAX_CLASSES = 1000


class LogisticRule(DecisionRule):
    """Multinomial logistic regression on the enrolled embeddings; scores are its logits
    ``(Q, C)``. With a single class there is nothing to separate, and past ``MAX_CLASSES``
    classes the fit would take hours (its cost grows with images x classes x dimensions): the
    scores are then the cosine similarity to each class's prototype, with a notice."""

    name = "logistic"

    def __init__(self, C: float = 10.0):
        super().__init__()
        self.C = C
        self._start: tuple[list[str], np.ndarray, np.ndarray] | None = None

    def warm_copy(self) -> LogisticRule:
        """Calibration refits on all images but a few: from this solution, lbfgs needs a third
        of the iterations (19 instead of 49 on 1,849 PlantVillage embeddings)."""
        copy = LogisticRule(self.C)
        if hasattr(self, "_coef"):
            copy._start = (self.classes, self._coef, self._intercept)
        return copy

    def _fit(self, vectors: np.ndarray, codes: np.ndarray) -> None:
        if not 2 <= len(self.classes) <= MAX_CLASSES:
            if len(self.classes) > MAX_CLASSES:
                log.warning(
                    "%d classes: past %d a logistic rule takes too long to fit; deciding by "
                    "class prototypes instead",
                    len(self.classes),
                    MAX_CLASSES,
                )
            self.weights = class_means(vectors, codes, len(self.classes))
            self.bias = np.zeros(len(self.classes))
            return
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.C, max_iter=1000)
        if self._start is not None and self._start[0] == self.classes:
            model.set_params(warm_start=True)
            model.coef_, model.intercept_ = self._start[1].copy(), self._start[2].copy()
        # One BLAS thread (see Decider.fit), set again now that sklearn's own BLAS is loaded
        with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("ignore", UserWarning)  # "more classes than half the samples"
            model.fit(vectors, codes)
        self._coef, self._intercept = model.coef_, model.intercept_
        weights, bias = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
        if len(self.classes) == 2:  # sklearn keeps one logit for two classes: z for class 1
            weights, bias = (
                np.vstack([-weights / 2, weights / 2]),
                np.array([-bias[0], bias[0]]) / 2,
            )
        self.weights, self.bias = weights, bias

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return np.asarray(queries, dtype=np.float64) @ self.weights.T + self.bias

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "bias": self.bias}

    def _load(self, state: dict[str, np.ndarray]) -> None:
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.bias = np.asarray(state["bias"], dtype=np.float64)
