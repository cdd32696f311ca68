"""Whitening by a library's within-class scatter: the directions in which photos of one class
differ among themselves (light, angle, background) count less, those in which classes differ
more.

    vectors (Q, D) -> minus the library's mean -> (S_w + eps I)^(-1/2) -> unit length (Q, D)

``S_w`` is the scatter of the enrolled embeddings around their own class's mean, over every class
with two or more images, estimated from the library itself: no training, and the library's own
classes (known classes with many photos, new ones with a few) say which differences are noise.
It is kept as its ``MAX_DIRECTIONS`` largest directions and their variances; the other directions
share the mean variance left over. ``eps`` shrinks toward the identity: ``shrinkage`` times the
mean variance per dimension (a few dozen photos cannot estimate thousands of variances).

Measured (BENCHMARKS.md, "Whitening by the library's own classes"), prototypes with no
training, 5 shots: +5.3 points on new PlantVillage classes, +5.6 on Omniglot's characters
through ImageNet features, +16.1 there when the new characters sit in a library beside known
ones. This is linear discriminant analysis's metric with a shrunk covariance; written here
because scikit-learn's ``LinearDiscriminantAnalysis`` is a classifier whose transform keeps at
most C - 1 dimensions, and its covariance estimators build the full D x D matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Shrinkage toward the identity, in units of the mean variance per dimension: 1, 3 and 10 were
# within a point on PlantVillage; on Omniglot 1 was best, 3 1.6 points and 10 3.7 points lower
# at 1 shot in a library (BENCHMARKS.md). A middle value, not one tuned to either.
SHRINKAGE = 3.0
MAX_DIRECTIONS = 256  # of 3,408: within 0.4 points of all of them (BENCHMARKS.md)
# Deviations from their class's mean the whitening is estimated from at most (a seeded sample):
# a library's calibration fits it six times; on 1,024 rows of 3,408 dimensions a fit takes 0.2 s.
MAX_ROWS = 1024


@dataclass
class Whitening:
    """``mean (D,)``; ``directions (K, D)`` orthonormal rows with ``scales (K,)`` the factor
    each is multiplied by; ``rest``: the factor of everything outside them."""

    mean: np.ndarray
    directions: np.ndarray
    scales: np.ndarray
    rest: float

    @classmethod
    def fit(
        cls, vectors: np.ndarray, labels: Sequence[str], shrinkage: float = SHRINKAGE
    ) -> Whitening:
        """Fit on enrolled ``vectors (N, D)`` labelled ``labels (N,)``. With no class of two
        or more images there is no within-class scatter: the result only centres."""
        x = np.asarray(vectors, dtype=np.float32)
        mean = x.mean(axis=0, dtype=np.float64)
        spread = within_class_deviations(x, np.asarray(labels, dtype=str), MAX_ROWS)
        dim = x.shape[1]
        if len(spread) == 0:
            return cls(mean.astype(np.float32), np.zeros((0, dim), np.float32), np.zeros(0), 1.0)
        variances, directions = principal_directions(spread, MAX_DIRECTIONS)
        total = float(np.einsum("ij,ij->", spread, spread)) / len(spread)
        eps = max(shrinkage * total / dim, 1e-12)
        left = max(total - variances.sum(), 0.0) / max(dim - len(variances), 1)
        return cls(
            mean.astype(np.float32),
            directions.astype(np.float32),
            1.0 / np.sqrt(variances + eps),
            float(1.0 / np.sqrt(left + eps)),
        )

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors (Q, D)`` centred, whitened and re-normalised: ``(Q, D)`` float32."""
        z = np.asarray(vectors, dtype=np.float32) - self.mean
        along = z @ self.directions.T  # (Q, K)
        out = (along * self.scales.astype(np.float32)) @ self.directions
        out += (z - along @ self.directions) * np.float32(self.rest)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def state(self) -> dict[str, np.ndarray]:
        """The arrays that rebuild it (saved with ``numpy.savez``, read without pickle)."""
        return {
            "mean": self.mean,
            "directions": self.directions,
            "scales": self.scales,
            "rest": np.asarray(self.rest),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> Whitening:
        return cls(state["mean"], state["directions"], state["scales"], float(state["rest"]))


def within_class_deviations(x: np.ndarray, labels: np.ndarray, most: int) -> np.ndarray:
    """``(M, D)`` float64 rows whose scatter estimates the within-class scatter, ``M <= most``,
    from the images of classes with two or more images. Up to ``most`` such images: each minus
    its class's mean. More: ``most`` seeded pairs of images of one class, ``(a - b) / sqrt(2)``
    (whose scatter is the within-class scatter too), so that a library of a million images is
    never copied whole to find its class means."""
    classes, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes, minlength=len(classes))
    eligible = np.flatnonzero(counts[codes] >= 2)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if len(eligible) <= most:
        # (C, D): every class has an image; summed in float64 without a float64 copy of ``x``
        sums = np.add.reduceat(x[order], starts, axis=0, dtype=np.float64)
        return x[eligible].astype(np.float64) - (sums / counts[:, None])[codes[eligible]]
    rng = np.random.default_rng(0)
    first = np.sort(rng.choice(eligible, most, replace=False))
    place = np.empty_like(order)
    place[order] = np.arange(len(order))
    own = place[first] - starts[codes[first]]  # each one's place within its class
    other = rng.integers(0, counts[codes[first]] - 1)  # another place: skip its own
    partner = order[starts[codes[first]] + other + (other >= own)]
    return (x[first].astype(np.float64) - x[partner]) / np.sqrt(2.0)


def principal_directions(spread: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray]:
    """``(variances (K,), directions (K, D))`` of the rows of ``spread (M, D)``, largest first,
    ``K <= most``: one symmetric eigendecomposition of the smaller of their Gram and scatter
    matrices."""
    rows, dim = spread.shape
    if rows <= dim:  # the Gram matrix (M, M): its eigenvectors map onto the directions
        values, vectors = np.linalg.eigh(spread @ spread.T)
        values, vectors = values[::-1], vectors[:, ::-1]
        keep = values > max(values[0], 0) * 1e-10
        keep[most:] = False
        directions = (spread.T @ (vectors[:, keep] / np.sqrt(values[keep]))).T
        return values[keep] / rows, directions
    values, vectors = np.linalg.eigh(spread.T @ spread)
    values, vectors = values[::-1][:most], vectors[:, ::-1][:, :most]
    return np.maximum(values, 0) / rows, vectors.T
