"""Choosing the "unknown" threshold from an open-set test: classes held out of the library.

A query whose best class score is under the threshold is answered "unknown" (``decide``). Queries
of held-out classes should be; queries of enrolled classes should not. Raising the threshold
rejects more of both, so the curve of the two rejection rates over thresholds shows the trade-off,
and the balanced point (equal error rate) is one threshold to start from.
"""

from __future__ import annotations

import numpy as np


def open_set_curve(
    known_best: np.ndarray,
    known_correct: np.ndarray,
    unknown_best: np.ndarray,
    thresholds: np.ndarray | None = None,
) -> dict:
    """Rejection rates and accuracy at each threshold t, a query being rejected if best < t.

    ``known_best (m,)``: the best class score of each query of an enrolled class, and
    ``known_correct (m,)`` whether that class was its own; ``unknown_best (u,)``: the best score
    of each query of a held-out class. For each t: ``unknown_rejected``, the share of held-out
    queries rejected (right); ``known_rejected``, the share of enrolled-class queries rejected
    (wrong); ``known_accuracy``, the share of those accepted with the right class.

    ``thresholds`` default to every observed score, plus one just above the highest (reject
    all): each distinct operating point exactly once, where a fixed grid would skip some between
    close scores, and each a score that reproduces its rates exactly when used as threshold.
    ``balanced`` is the threshold where the share of held-out queries accepted comes nearest to
    the share of enrolled-class queries rejected; ties go to the fewest errors in total, then to
    the lowest threshold.
    """
    known_best, unknown_best = (np.asarray(x, dtype=np.float64) for x in (known_best, unknown_best))
    known_correct = np.asarray(known_correct, dtype=bool)
    if known_best.shape != known_correct.shape or known_best.ndim != 1:
        raise ValueError("known_best and known_correct must be 1-d arrays of the same length")
    if len(known_best) == 0 or len(unknown_best) == 0:
        raise ValueError("need at least one query of a known and one of a held-out class")
    if thresholds is None:
        observed = np.unique(np.concatenate([known_best, unknown_best]))
        thresholds = np.append(observed, np.nextafter(observed[-1], np.inf))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or len(thresholds) == 0:
        raise ValueError("thresholds must be a non-empty 1-d array")
    # Counted by hand: sklearn's roc_curve gives the two rejection rates only at its own
    # thresholds (one of them infinite, which JSON cannot hold) and has no known_accuracy.
    unknown_rejected = _share_below(unknown_best, thresholds)
    known_rejected = _share_below(known_best, thresholds)
    correct = known_correct.sum() - np.searchsorted(np.sort(known_best[known_correct]), thresholds)
    known_accuracy = correct / len(known_best)
    gap = np.abs(unknown_rejected - (1.0 - known_rejected))
    errors = (1.0 - unknown_rejected) + known_rejected
    best = int(np.lexsort((thresholds, errors, gap))[0])
    curve = {
        "thresholds": thresholds,
        "unknown_rejected": unknown_rejected,
        "known_rejected": known_rejected,
        "known_accuracy": known_accuracy,
    }
    balanced = {"threshold" if k == "thresholds" else k: float(v[best]) for k, v in curve.items()}
    return {k: v.tolist() for k, v in curve.items()} | {"balanced": balanced}


def _share_below(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, the share of ``scores`` strictly below it."""
    return np.searchsorted(np.sort(scores), thresholds, side="left") / len(scores)
