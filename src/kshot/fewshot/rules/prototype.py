"""Nearest class prototype: the cosine similarity of a query to each class's mean embedding."""

from __future__ import annotations

import numpy as np

from kshot.fewshot.rules.base import DecisionRule, class_means


class PrototypeRule(DecisionRule):
    """Scores are cosine similarities to the prototypes ``(C, D)``, in [-1, 1]."""

    name = "prototype"

    def _fit(self, vectors: np.ndarray, codes: np.ndarray) -> None:
        self.prototypes = class_means(vectors, codes, len(self.classes))

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return np.asarray(queries, dtype=np.float64) @ self.prototypes.T

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes}

    def _load(self, state: dict[str, np.ndarray]) -> None:
        self.prototypes = np.asarray(state["prototypes"], dtype=np.float64)
