"""Turning a rule's scores into a confidence, and choosing a library's own "unknown" threshold.

Both are fitted on the enrolled images alone, by cross-validation: each fold holds out one image
of every class that has two or more, fits the rule on the rest and scores the held-out images
(:func:`out_of_fold_scores`). From those scores:

* each class in turn plays the unknown one: a held-out image scored with its own class removed
  is what a photo of a class the library lacks would get;
* the confidence is a softmax over the class scores and one more, "none of these classes"
  (a background score), with one inverse temperature (``scale``): both fitted by maximum
  likelihood (temperature scaling, Guo et al. 2017, with a reject option) so that held-out
  images get their class and stand-ins for unknown classes get the background. A plain softmax
  over the classes only measures which enrolled class fits best, never whether any does;
* the threshold balances the two errors (queries of enrolled classes rejected, "unknown" ones
  given a class) on those held-out images.

Written by hand: scikit-learn's ``CalibratedClassifierCV`` calibrates one fitted estimator per
class one-vs-rest and has no notion of a class missing from the library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kshot.fewshot.openset import open_set_curve
from kshot.fewshot.rules.base import DecisionRule, class_means

DEFAULT_SCALE = 1.0
MAX_FOLDS = 5
MAX_HELD_OUT = 2000  # images scored out of fold at most: enough to fit two numbers and a threshold


def softmax(
    scores: np.ndarray, scale: float, background: float | np.ndarray | None = None
) -> np.ndarray:
    """Row-wise softmax of ``scale * scores (Q, C)``; with a ``background`` score (one, or one
    per row), one more column competes (the query shows none of the classes) and is left out of
    the result, so the rows sum to the probability that the query shows one of the classes."""
    z = scale * np.asarray(scores, dtype=np.float64)
    if background is not None:
        column = np.broadcast_to(np.asarray(background, dtype=np.float64), (len(z),))
        z = np.concatenate([z, scale * column[:, None]], axis=1)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    return p[:, : scores.shape[1]] if background is not None else p


def out_of_fold_scores(
    make_rule: Callable[[], DecisionRule],
    vectors: np.ndarray,
    labels: Sequence[str],
    folds: int = MAX_FOLDS,
    seed: int = 0,
    near_vectors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """``(scores (M, C), codes (M,), classes, similarities (M, C))``: each of M held-out images
    scored by a rule fitted without it, and its cosine similarity to each class's prototype
    without it (of ``near_vectors``, the same images uncentred, if given). Only images of
    classes with two or more images are held out (a class must keep one), at most ``folds`` per
    class and ``MAX_HELD_OUT`` in all, so every fold's rule knows every class."""
    labels = np.asarray(labels, dtype=str)
    classes, codes = np.unique(labels, return_inverse=True)
    rng = np.random.default_rng(seed)
    fold_of = np.full(len(labels), -1)
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(codes == c))
        if len(members) >= 2:
            held = members[: min(folds, len(members))]
            fold_of[held] = np.arange(len(held))
    held = np.flatnonzero(fold_of >= 0)
    if len(held) > MAX_HELD_OUT:  # a library of thousands of classes: a sample of them
        fold_of[rng.choice(held, size=len(held) - MAX_HELD_OUT, replace=False)] = -1
    rows, truth, sims = [], [], []
    for fold in range(int(fold_of.max()) + 1):
        out = fold_of == fold
        rule = make_rule().fit(vectors[~out], labels[~out])
        rows.append(rule.scores(vectors[out]))
        truth.append(codes[out])
        near = vectors if near_vectors is None else near_vectors
        sims.append(near[out] @ class_means(near[~out], codes[~out], len(classes)).T)
    if not rows:
        empty = np.zeros((0, len(classes)))
        return empty, np.zeros(0, dtype=np.intp), classes.tolist(), empty
    return np.concatenate(rows), np.concatenate(truth), classes.tolist(), np.concatenate(sims)


def fit_scale(scores: np.ndarray, truth: np.ndarray) -> float:
    """The inverse temperature that maximises the likelihood of the true classes."""
    if len(scores) == 0 or scores.shape[1] < 2:
        return DEFAULT_SCALE
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(truth))

    def nll(log_scale: float) -> float:
        return -float(np.mean(_log_softmax(np.exp(log_scale) * scores)[rows, truth]))

    found = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e4)), method="bounded")
    return float(np.exp(found.x))


def fit_open_set(
    scores: np.ndarray, truth: np.ndarray, nearest: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[float, float, float]:
    """``(scale, background, slope)`` maximising the likelihood of two kinds of rows: each
    held-out image with every class (its answer: its class) and with its own class removed,
    standing in for a photo of a class the library lacks (its answer: the background).

    The background score of a row is ``background - slope * nearest``: ``nearest`` holds each
    row's highest cosine similarity to a class prototype, with every class and without its own
    (None: a constant background). A rule whose scores keep growing away from the enrolled
    photos (a linear classifier's logits) thus still sees "none of these" win for a photo close
    to no class at all."""
    from scipy.optimize import minimize

    m, c = scores.shape
    rows = np.arange(m)
    own_removed = scores.astype(np.float64).copy()
    own_removed[rows, truth] = -np.inf
    near_known, near_unknown = nearest if nearest is not None else (np.zeros(m), np.zeros(m))

    def nll(params: np.ndarray) -> float:
        scale, background = np.exp(params[0]), params[1]
        slope = params[2] if nearest is not None else 0.0
        known = np.concatenate([scores, (background - slope * near_known)[:, None]], axis=1)
        unknown = np.concatenate(
            [own_removed, (background - slope * near_unknown)[:, None]], axis=1
        )
        return -float(
            np.mean(_log_softmax(scale * known)[rows, truth])
            + np.mean(_log_softmax(scale * unknown)[:, c])
        )

    start = [np.log(fit_scale(scores, truth)), float(np.median(scores.max(axis=1))), 0.0]
    found = minimize(
        nll,
        np.array(start),
        method="Nelder-Mead",
        options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 2000},
    )
    slope = float(found.x[2]) if nearest is not None else 0.0
    return float(np.exp(found.x[0])), float(found.x[1]), slope


def _midway(threshold: float, observed: np.ndarray) -> float:
    """Every threshold between the highest observed score under ``threshold`` and ``threshold``
    makes the same errors on the observed scores: the middle of that gap leaves new queries the
    widest margin on both sides."""
    below = observed[observed < threshold]
    return float((threshold + below.max()) / 2) if len(below) else float(threshold)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Calibration:
    """``scale``: the softmax's inverse temperature; ``background``: the score of "none of these
    classes" (``None``: not fitted, the confidences then sum to 1 over the classes);
    ``threshold``: the library's own "unknown" threshold on the confidence, or ``None`` when the
    enrolled images cannot tell (one class, or no class with two images); ``known_rejected`` and
    ``unknown_accepted``: the two error rates it gave on the held-out enrolled images."""

    scale: float = DEFAULT_SCALE
    background: float | None = None
    slope: float = 0.0  # the background falls by this much per unit of nearest similarity
    threshold: float | None = None
    known_rejected: float | None = None
    unknown_accepted: float | None = None
    images: int = 0

    def confidences(self, scores: np.ndarray, nearest: np.ndarray | None = None) -> np.ndarray:
        """``(Q, C)`` probabilities of each class from a rule's scores and each query's highest
        cosine similarity to a class prototype, ``nearest (Q,)``."""
        background = self.background
        if background is not None and nearest is not None:
            background = background - self.slope * np.asarray(nearest, dtype=np.float64)
        return softmax(scores, self.scale, background)


def calibrate(
    make_rule: Callable[[], DecisionRule],
    vectors: np.ndarray,
    labels: Sequence[str],
    near_vectors: np.ndarray | None = None,
) -> Calibration:
    """Fit the confidence (temperature and background) and the unknown threshold on the
    enrolled images ``vectors`` as the rule sees them; ``near_vectors``: the same images as
    enrolled (uncentred), whose similarity to the nearest prototype drives the background."""
    scores, truth, classes, sims = out_of_fold_scores(
        make_rule, vectors, labels, near_vectors=near_vectors
    )
    if len(classes) < 2 or len(truth) == 0:
        return Calibration()
    rows = np.arange(len(truth))
    others = sims.copy()
    others[rows, truth] = -np.inf
    nearest = (sims.max(axis=1), others.max(axis=1))
    scale, background, slope = fit_open_set(scores, truth, nearest)
    known = softmax(scores, scale, background - slope * nearest[0])
    own_removed = scores.copy()
    own_removed[rows, truth] = -np.inf
    unknown_best = softmax(own_removed, scale, background - slope * nearest[1]).max(axis=1)
    known_best, known_correct = known.max(axis=1), known.argmax(axis=1) == truth
    balanced = open_set_curve(known_best, known_correct, unknown_best)["balanced"]
    return Calibration(
        scale=scale,
        background=background,
        slope=slope,
        threshold=_midway(balanced["threshold"], np.concatenate([known_best, unknown_best])),
        known_rejected=balanced["known_rejected"],
        unknown_accepted=1.0 - balanced["unknown_rejected"],
        images=len(truth),
    )
