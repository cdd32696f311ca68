"""Turning similarities into a decision: class prototypes or weighted kNN, with "unknown".

Both rules give each class a score on the cosine-similarity scale (1 = identical direction), so
one threshold means the same thing whichever rule is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kshot.fewshot.labels import UNKNOWN

METHODS = ("prototype", "knn")


@dataclass(frozen=True)
class Decision:
    """The answer for one query: ``label`` is a class or ``"unknown"``; ``top_k`` is
    ``[(label, score), ...]`` best first, whatever the threshold."""

    label: str
    score: float
    top_k: list[tuple[str, float]]


def prototypes(vectors: np.ndarray, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Class names (sorted) and their prototypes ``(C, D)``: the mean of each class's unit
    vectors, re-normalised (Snell et al. 2017, with cosine similarity)."""
    classes, codes = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    sums = np.zeros((len(classes), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, vectors)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return list(classes), sums.astype(np.float32)


def knn_scores(
    similarities: np.ndarray,
    neighbour_labels: Sequence[Sequence[str]],
    class_sizes: dict[str, int],
) -> list[dict[str, float]]:
    """Similarity-weighted kNN votes, per query: ``{label: score}``.

    ``similarities (m, k)`` and ``neighbour_labels`` (m lists of k labels; None for a missing
    neighbour) describe each query's k nearest images. A class scores the sum of its neighbours'
    similarities divided by how many of its images could have been among them, min(k, class
    size): its mean similarity over its nearest images, where those not in the top k count 0.
    A one-shot class is thus not outvoted by a large class merely for having one image.
    """
    k = similarities.shape[1]
    scores = []
    for sims, labels in zip(similarities, neighbour_labels, strict=True):
        votes: dict[str, float] = {}
        for sim, label in zip(sims, labels, strict=True):
            if label is not None:
                votes[label] = votes.get(label, 0.0) + float(sim)
        scores.append({lab: v / min(k, class_sizes[lab]) for lab, v in votes.items()})
    return scores


def decide(scores: dict[str, float], top_k: int, threshold: float | None) -> Decision:
    """The best-scoring class, or ``"unknown"`` if its score is under ``threshold``."""
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    best_label, best_score = ranked[0]
    if threshold is not None and best_score < threshold:
        best_label = UNKNOWN
    return Decision(best_label, best_score, [(label, float(s)) for label, s in ranked])
