"""A linear classifier fitted on the enrolled embeddings (scikit-learn's logistic regression)."""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
from threadpoolctl import ThreadpoolController

from kshot.fewshot.rules.base import DecisionRule, class_means

log = logging.getLogger("kshot")


MAX_CLASSES = 1000
# Images of one class the fit uses at most, a seeded sample: libraries of the usual 20-200
# photos a class are fitted on all of them, and the solver's cost (which grows with the images
# fitted on) stays bounded however large a library grows.
MAX_PER_CLASS = 200


def per_class_sample(codes: np.ndarray, cap: int = MAX_PER_CLASS) -> np.ndarray | None:
    """Sorted indices keeping at most ``cap`` of each class's images (the same ones every
    time), or ``None`` when no class has more."""
    counts = np.bincount(codes)
    if counts.max(initial=0) <= cap:
        return None
    rng = np.random.default_rng(0)
    kept = [
        members if len(members) <= cap else rng.choice(members, size=cap, replace=False)
        for members in (np.flatnonzero(codes == c) for c in range(len(counts)))
    ]
    return np.sort(np.concatenate(kept))


def row_space(vectors: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis ``(D, r)`` of the span of ``vectors (N, D)`` when N is under half
    of D (a few-shot library: 45 photos of 3,408-dimensional embeddings), else ``None``.

    An L2-penalised linear model's weights lie in the span of its training vectors (the
    representer theorem), and with an orthonormal basis the penalty is unchanged: fitted on the
    r <= N coordinates of each vector and mapped back, the solution is the same, at a fraction of
    the cost: the calibration's five folds on 45 photos of 3,408 dimensions took 85 ms, now 16.
    """
    n, d = vectors.shape
    if 2 * n > d:
        return None
    x = np.asarray(vectors, dtype=np.float64)
    values, directions = np.linalg.eigh(x @ x.T)  # (N, N): cheaper than an SVD of (N, D)
    keep = values > values[-1] * 1e-10
    return x.T @ (directions[:, keep] / np.sqrt(values[keep]))


@functools.cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded once scikit-learn is (finding them reads /proc: once only)."""
    return ThreadpoolController()


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

        sample = per_class_sample(codes)
        if sample is not None:
            vectors, codes = vectors[sample], codes[sample]
        basis = row_space(vectors)  # (D, r), or None: fit in the r <= N dimensions that matter
        features = vectors if basis is None else (vectors @ basis).astype(vectors.dtype)
        # Balanced: a class enrolled from 1-5 photos beside known classes of 20 or more is
        # otherwise almost never answered (measured: new classes from 1 photo beside 23 known
        # classes of 20, Lite0: 0-2% of their queries right, 17% balanced; BENCHMARKS.md).
        model = LogisticRegression(C=self.C, max_iter=1000, class_weight="balanced")
        if self._start is not None and self._start[0] == self.classes:
            start = self._start[1] if basis is None else self._start[1] @ basis
            model.set_params(warm_start=True)
            model.coef_, model.intercept_ = start.copy(), self._start[2].copy()
        # One BLAS thread: idle BLAS threads spin, and beside torch's OpenMP threads they made
        # these small solves 2.5-10x slower on 2 cores (a decision on 75 photos: 1.2 s -> 0.1 s)
        with warnings.catch_warnings(), _blas().limit(limits=1, user_api="blas"):
            warnings.simplefilter("ignore", UserWarning)  # "more classes than half the samples"
            model.fit(features, codes)
        coef = model.coef_ if basis is None else model.coef_ @ basis.T
        self._coef, self._intercept = coef, model.intercept_
        weights, bias = coef.astype(np.float64), model.intercept_.astype(np.float64)
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
