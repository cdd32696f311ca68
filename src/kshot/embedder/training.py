"""Training an embedder on labelled images with a metric-learning loss.

Batches are class-balanced (``m`` images of each of ``batch_size / m`` classes, from
pytorch-metric-learning's ``MPerClassSampler``) so that every batch holds positive pairs.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions
from torch.utils.data import DataLoader, TensorDataset

from kshot.embedder.inference import load_tensors
from kshot.embedder.losses import build_loss
from kshot.embedder.model import Embedder
from kshot.embedder.runtime import resolve_device, tune_allocator
from kshot.errors import KshotError

log = logging.getLogger("kshot")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "triplet"
    # Laid over the loss's defaults (kshot.embedder.losses.LOSS_DEFAULTS), e.g. {"margin": 0.2}.
    loss_options: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    samples_per_class: int = 4
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    # Each class's images turned by 90, 180 and 270 degrees become three more classes: more
    # classes to learn from, which helps what is learnt carry over to new classes (Santoro et al.
    # 2016, Snell et al. 2017). For images with an upright, like characters, not leaves from above.
    rotation_classes: bool = False


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    common_functions.NUMPY_RANDOM = np.random.RandomState(seed)  # pml's samplers and miners


def train_embedder(
    embedder: Embedder,
    images: Sequence[Path],
    labels: Sequence[int],
    config: TrainConfig,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train ``embedder`` in place on ``images`` with integer class ``labels``.

    Images are decoded once and kept in memory as tensors (no augmentation yet).
    """
    if len(set(labels)) < 2:
        raise KshotError("training needs at least two classes")
    tune_allocator()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    tensors, kept, failed = load_tensors(embedder.config.preprocess, images)
    for _, error in failed:
        log.warning("skipping %s", error)
    # Class codes 0..C-1, as the angular-margin losses index their class weights by them.
    targets = torch.as_tensor(np.unique([labels[i] for i in kept], return_inverse=True)[1])
    if config.rotation_classes:
        tensors = torch.cat([torch.rot90(tensors, k, dims=(2, 3)) for k in range(4)])
        targets = torch.cat([targets * 4 + k for k in range(4)])
    classes = len(torch.unique(targets))
    m = config.samples_per_class
    batch = max(m, min(config.batch_size, m * classes) // m * m)
    sampler = MPerClassSampler(targets, m, batch_size=batch, length_before_new_iter=len(targets))
    loader = DataLoader(TensorDataset(tensors, targets), batch_size=batch, sampler=sampler)

    loss_fn, miner = build_loss(config.loss, classes, embedder.embedding_dim, **config.loss_options)
    embedder.to(device).train()
    loss_fn.to(device)
    params = list(embedder.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)
    history = []
    for epoch in range(1, config.epochs + 1):
        start, total, steps = time.perf_counter(), 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            embeddings = embedder(x)
            pairs = miner(embeddings, y) if miner is not None else None
            loss = loss_fn(embeddings, y, pairs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        stats = EpochStats(epoch, total / max(steps, 1), time.perf_counter() - start)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    embedder.eval()
    return history
