"""The decision-rule family: fit on the enrolled embeddings, then score queries per class.

In the style of easyfsl's ``FewShotClassifier``: one small base class, each rule a subclass that
overrides two hooks. Every user of a rule — the library, the episodic evaluation, the validation
while training — goes through :meth:`DecisionRule.fit` and :meth:`DecisionRule.scores`, so a rule
means the same thing wherever its figures come from.

A fitted rule is derived state, like the FAISS index: :meth:`state` gives its arrays (no pickled
objects), which the library saves beside the catalogue and rebuilds when the catalogue changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np


class DecisionRule(ABC):
    """Scores each query against each enrolled class; higher means more likely that class.

    ``fit(vectors (N, D), labels (N,))`` then ``scores(queries (Q, D)) -> (Q, C)``, columns in the
    order of :attr:`classes` (sorted labels). Scores are the rule's own logits; turning them into a
    probability a person can read is calibration's job (``kshot.fewshot.calibration``).
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.classes: list[str] = []

    def fit(self, vectors: np.ndarray, labels: Sequence[str]) -> DecisionRule:
        """Fit on ``vectors (N, D)`` (unit rows) labelled ``labels (N,)``; returns ``self``."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(labels) or len(vectors) == 0:
            raise ValueError("need a non-empty (N, D) array of vectors and N labels")
        classes, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
        self.classes = classes.tolist()
        self._fit(vectors, codes.astype(np.intp))
        return self

    @abstractmethod
    def _fit(self, vectors: np.ndarray, codes: np.ndarray) -> None:
        """Fit on ``vectors (N, D)`` with class codes ``codes (N,)`` into :attr:`classes`."""

    def warm_copy(self) -> DecisionRule:
        """A new, unfitted rule of the same kind and options, to fit on nearly the same images
        (calibration's folds); a rule fitted by iterations starts from this one's solution."""
        return type(self)()

    @abstractmethod
    def scores(self, queries: np.ndarray) -> np.ndarray:
        """``queries (Q, D)`` -> ``(Q, C)`` float64 scores."""

    def state(self) -> dict[str, np.ndarray]:
        """The fitted rule as plain arrays (saved with ``numpy.savez``, read without pickle)."""
        return {"classes": np.asarray(self.classes, dtype=str)} | self._arrays()

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], **options) -> DecisionRule:
        rule = cls(**options)
        rule.classes = [str(c) for c in state["classes"]]
        rule._load(state)
        return rule

    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters, by name."""

    @abstractmethod
    def _load(self, state: dict[str, np.ndarray]) -> None:
        """Set the fitted parameters from :meth:`_arrays`'s output."""


def class_means(vectors: np.ndarray, codes: np.ndarray, count: int) -> np.ndarray:
    """``(count, D)`` re-normalised mean of each class's unit vectors: its prototype (Snell et
    al. 2017, compared by cosine)."""
    order = np.argsort(codes, kind="stable")
    present, starts = np.unique(codes[order], return_index=True)
    sums = np.zeros((count, vectors.shape[1]), dtype=np.float64)
    # reduceat over runs of one class: numpy's add.at is ~100x slower on thousands of rows
    sums[present] = np.add.reduceat(vectors[order].astype(np.float64), starts, axis=0)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
