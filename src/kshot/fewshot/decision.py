"""Turning per-class confidences into an answer: the best class, its group, or "unknown".

Confidences come from a fitted :class:`kshot.fewshot.decider.Decider`: a probability per class,
summing to 1 over the library's classes. A label may carry a group, ``Tomato/Late blight``
(crop, then disease): a group's confidence is the sum of its classes', so an answer can be sure
of the crop while unsure of the disease, as plant-disease services answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kshot.fewshot.labels import UNKNOWN

GROUP_SEPARATOR = "/"


@dataclass(frozen=True)
class Decision:
    """The answer for one query.

    ``label``: a class, or ``"unknown"`` when its confidence ``score`` is under the threshold;
    ``top_k``: ``[(label, confidence), ...]`` best first, whatever the threshold. With grouped
    labels, ``group`` is the best group (or ``"unknown"``) and ``groups`` its ranking; for flat
    labels ``group`` is ``None`` and ``groups`` empty.
    """

    label: str
    score: float
    top_k: list[tuple[str, float]]
    group: str | None = None
    groups: list[tuple[str, float]] = field(default_factory=list)


def group_of(label: str) -> str | None:
    """The group part of ``label`` (``Tomato`` of ``Tomato/Late blight``), or None."""
    head, separator, _ = label.partition(GROUP_SEPARATOR)
    return head if separator else None


def decide(
    classes: Sequence[str], confidences: np.ndarray, top_k: int, threshold: float | None
) -> Decision:
    """The answer for one query's ``confidences (C,)`` over ``classes``."""
    order = sorted(range(len(classes)), key=lambda c: (-confidences[c], classes[c]))
    ranked = [(classes[c], float(confidences[c])) for c in order[:top_k]]
    label, score = ranked[0]
    if threshold is not None and score < threshold:
        label = UNKNOWN
    groups = group_ranking(classes, confidences)
    group = None
    if groups:
        group = groups[0][0]
        if threshold is not None and groups[0][1] < threshold:
            group = UNKNOWN
    return Decision(label, score, ranked, group, groups[:top_k])


def group_ranking(classes: Sequence[str], confidences: np.ndarray) -> list[tuple[str, float]]:
    """``[(group, summed confidence), ...]`` best first; empty when no label has a group. Once
    some label has a group, a label without one is a group of its own."""
    if not any(group_of(label) is not None for label in classes):
        return []
    totals: dict[str, float] = {}
    for label, confidence in zip(classes, confidences, strict=True):
        group = group_of(label) or label
        totals[group] = totals.get(group, 0.0) + float(confidence)
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))
