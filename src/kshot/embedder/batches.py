"""How an epoch's batches are drawn: episodes for the prototypical loss, class-balanced batches
(pytorch-metric-learning's ``MPerClassSampler``) so that every batch holds positive pairs, or
shuffled ones; each process of a distributed run draws its share."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import DataLoader, RandomSampler

from kshot.embedder.distributed import Distributed
from kshot.embedder.episodic_sampler import EpisodicBatchSampler
from kshot.embedder.recipe import TrainConfig


def epoch_loader(
    dataset, labels: torch.Tensor, config: TrainConfig, world: Distributed
) -> DataLoader:
    """An epoch of about ``len(labels)`` images over all processes (at least one batch each):
    episodes for ``protonet``, else class-balanced or shuffled batches."""
    classes = len(torch.unique(labels))
    m = config.samples_per_class
    per_rank = len(labels) // world.world_size
    if config.loss == "protonet":
        size = config.ways * (config.shots + config.queries)
        seed = int(np.random.randint(2**31 - 1))  # drawn from the epoch's seed
        episodes = EpisodicBatchSampler(
            labels, config.ways, config.shots, config.queries, max(1, per_rank // size), seed
        )
        return DataLoader(dataset, batch_sampler=episodes)
    if config.balanced_batches:
        batch = max(m, min(config.batch_size, m * classes) // m * m)
        length = max(per_rank, batch)
        sampler = MPerClassSampler(labels, m, batch_size=batch, length_before_new_iter=length)
    else:
        batch = min(config.batch_size, len(labels))
        sampler = RandomSampler(dataset, num_samples=max(per_rank, batch))
    return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True)
