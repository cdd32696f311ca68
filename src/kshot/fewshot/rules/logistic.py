"""A linear classifier fitted on the enrolled embeddings (scikit-learn's logistic regression)."""

from __future__ import annotations

import numpy as np

from kshot.fewshot.rules.base import DecisionRule, class_means


class LogisticRule(DecisionRule):
    """Multinomial logistic regression on the enrolled embeddings; scores are its logits
    ``(Q, C)``. With a single class there is nothing to separate: the scores are then the cosine
    similarity to that class's prototype, so a one-class library still answers (and its
    threshold still rejects)."""

    name = "logistic"

    def __init__(self, C: float = 10.0):
        super().__init__()
        self.C = C

    def _fit(self, vectors: np.ndarray, codes: np.ndarray) -> None:
        if len(self.classes) < 2:
            self.weights = class_means(vectors, codes, 1)
            self.bias = np.zeros(1)
            return
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.C, max_iter=1000).fit(vectors, codes)
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
