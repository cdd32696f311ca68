"""Similarity-weighted vote of the nearest enrolled images."""

from __future__ import annotations

import numpy as np

from kshot.fewshot.rules.base import DecisionRule


class KNNRule(DecisionRule):
    """A class scores the summed similarity of its images among a query's ``neighbours`` nearest,
    divided by how many of its images could have been among them, min(k, class size): its mean
    similarity over its nearest images, those not in the top k counting 0. A one-shot class is
    thus not outvoted by a large class merely for having one image, and the score stays on the
    cosine scale of the prototype rule.

    :meth:`scores` searches exactly; a library with its own index searches that and calls
    :meth:`vote`. The fitted state keeps only the class sizes (the vectors are the catalogue's).
    """

    name = "knn"

    def __init__(self, neighbours: int = 10):
        super().__init__()
        if neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, not {neighbours}")
        self.neighbours = neighbours
        self.vectors: np.ndarray | None = None

    def warm_copy(self) -> KNNRule:
        return KNNRule(self.neighbours)

    def _fit(self, vectors: np.ndarray, codes: np.ndarray) -> None:
        self.vectors, self.codes = vectors, codes
        self.sizes = np.bincount(codes, minlength=len(self.classes))

    def scores(self, queries: np.ndarray) -> np.ndarray:
        if self.vectors is None:
            raise ValueError("this kNN rule was loaded without vectors: search an index, then vote")
        sims = np.asarray(queries, dtype=np.float32) @ self.vectors.T  # (Q, N)
        k = min(self.neighbours, sims.shape[1])
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return self.vote(np.take_along_axis(sims, nearest, axis=1), self.codes[nearest])

    def vote(self, similarities: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """``similarities (Q, k)`` of each query's k nearest images and their class ``codes
        (Q, k)`` (-1: no neighbour) -> ``(Q, C)`` scores."""
        k = similarities.shape[1]
        out = np.zeros((len(similarities), len(self.classes)), dtype=np.float64)
        rows = np.repeat(np.arange(len(similarities)), k).reshape(-1, k)
        found = codes >= 0
        np.add.at(out, (rows[found], codes[found]), similarities[found])
        return out / np.minimum(k, np.maximum(self.sizes, 1))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"sizes": self.sizes}

    def _load(self, state: dict[str, np.ndarray]) -> None:
        self.sizes = np.asarray(state["sizes"], dtype=np.int64)
