"""N-way K-shot episodes as batches, for the prototypical loss (``--loss protonet``).

Each batch holds ``ways`` classes drawn at random, and for each, ``shots + queries`` distinct
images (drawn without replacement, so no image is both support and query), the ``shots``
support images first. Written by hand: pytorch-metric-learning's ``MPerClassSampler`` draws
with replacement from a small class (an image could then be its own query), and its other
samplers are not episodic; torch has none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from kshot.embedder.recipe import DEFAULT_QUERIES, DEFAULT_SHOTS, DEFAULT_WAYS
from kshot.errors import KshotError

log = logging.getLogger("kshot")


def episode_classes(labels: torch.Tensor, ways: int, shots: int, queries: int) -> np.ndarray:
    """The classes with at least ``shots + queries`` images; refuses fewer than ``ways``."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    enough = counts >= shots + queries
    if enough.sum() < ways:
        raise KshotError(
            f"an episode of {ways} ways needs {ways} classes with at least {shots + queries} "
            f"training images each (--shots {shots} + --queries {queries}); "
            f"{int(enough.sum())} of the {len(values)} classes have that many: lower --ways, "
            "--shots or --queries"
        )
    return values[enough]


def episode_sizes(
    labels: torch.Tensor, ways: int | None, shots: int | None, queries: int | None
) -> tuple[int, int, int]:
    """``(ways, shots, queries)`` for these training labels: given values as they are (checked),
    ``None`` as ``DEFAULT_WAYS``, ``DEFAULT_SHOTS`` and ``DEFAULT_QUERIES`` where the classes
    are large enough, else what they allow, said in the log: a class's images in an episode are
    at most those of the middle class (so half the classes or more take part, at least two), split
    between support and query; the ways are at most the classes with that many images."""
    counts = np.sort(np.unique(np.asarray(labels), return_counts=True)[1])[::-1]
    if len(counts) < 2:
        raise KshotError("episodes need at least two classes")
    middle = int(counts[max(1, (len(counts) - 1) // 2)])
    chosen_shots, chosen_queries = shots, queries
    if shots is None or queries is None:
        given = (shots or 0) + (queries or 0)
        wanted = (shots or DEFAULT_SHOTS) + (queries or DEFAULT_QUERIES)
        total = max(min(wanted, middle), given + 1)
        if shots is None and queries is None:
            chosen_shots = max(1, total // 2)
            chosen_queries = max(1, total - chosen_shots)
        elif shots is None:
            chosen_shots = total - queries
        else:
            chosen_queries = total - shots
    # A clear error where fewer classes than the given ways (or 2) have that many images.
    eligible = len(episode_classes(labels, ways or 2, chosen_shots, chosen_queries))
    chosen_ways = ways if ways is not None else min(DEFAULT_WAYS, eligible)
    chosen = (chosen_ways, chosen_shots, chosen_queries)
    defaults = (DEFAULT_WAYS, DEFAULT_SHOTS, DEFAULT_QUERIES)
    asked = (ways, shots, queries)
    if any(a is None and c != d for a, c, d in zip(asked, chosen, defaults, strict=True)):
        log.warning(
            "episodes of %d ways, %d shots and %d queries, smaller than the default %d, %d and "
            "%d: %d training classes have %d images or more (set --ways, --shots, --queries)",
            *chosen,
            *defaults,
            eligible,
            chosen_shots + chosen_queries,
        )
    return chosen


def warn_about_small_classes(labels: torch.Tensor, shots: int, queries: int) -> None:
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    small = counts < shots + queries
    if small.any():
        log.warning(
            "%d of the %d training classes have fewer than %d images (--shots %d + --queries "
            "%d) and are left out of the episodes",
            int(small.sum()),
            len(values),
            shots + queries,
            shots,
            queries,
        )


class EpisodicBatchSampler(torch.utils.data.Sampler[list[int]]):
    """``episodes`` batches of indices into ``labels``, as the module describes."""

    def __init__(
        self,
        labels: torch.Tensor,
        ways: int,
        shots: int,
        queries: int,
        episodes: int,
        seed: int,
    ):
        self.labels = np.asarray(labels)
        self.classes = episode_classes(labels, ways, shots, queries)
        self.members = {c: np.flatnonzero(self.labels == c) for c in self.classes}
        self.ways, self.shots, self.queries = ways, shots, queries
        self.episodes, self.seed = episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.episodes):
            batch = []
            for c in rng.choice(self.classes, size=self.ways, replace=False):
                chosen = rng.choice(self.members[c], size=self.shots + self.queries, replace=False)
                batch.extend(int(i) for i in chosen)
            yield batch
