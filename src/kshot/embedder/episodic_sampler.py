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
