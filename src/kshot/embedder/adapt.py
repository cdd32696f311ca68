"""Adapting an embedder to a library's own classes: a short fine-tune on the enrolled photos.

A model trained on other classes (or only on ImageNet) embeds a new disease with the features it
already has. A few steps of fine-tuning on the enrolled photos themselves (5 of each class are
enough) move those features toward what tells the library's classes apart: the whole network
trains under a cosine classifier whose class weights start at the class prototypes, so the first
step already scores the library's own decision and training only sharpens it (the fine-tuning of
Hu et al. 2022, "P>M>F", and of the cross-domain few-shot baseline of Guo et al. 2020).

Batch norm keeps its ImageNet (or trained) statistics: a few dozen photos are too few to estimate
them, and a library's batches mix classes unevenly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss
from torch import nn
from torch.utils.data import WeightedRandomSampler

from kshot.embedder.adapt_config import AdaptConfig
from kshot.embedder.augment import augment_batch, augment_config, build_augment
from kshot.embedder.freezing import set_train_mode
from kshot.embedder.model import Embedder
from kshot.errors import KshotError


def adapt_embedder(
    embedder: Embedder,
    pixels: torch.Tensor,
    codes: np.ndarray,
    prototypes: np.ndarray,
    config: AdaptConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Fine-tune ``embedder`` in place on uint8 crops ``pixels (N, C, H, W)`` of classes
    ``codes (N,)`` (0 .. C-1); ``prototypes (C, D)`` start the classifier. Returns each step's
    loss. ``on_step(step, loss)`` after each step."""
    classes = len(prototypes)
    if classes < 2 or len(np.unique(codes)) != classes:
        raise KshotError("adapting needs photos of at least 2 classes, and of every class")
    torch.manual_seed(config.seed)
    device = next(embedder.parameters()).device
    loss_fn = NormalizedSoftmaxLoss(classes, embedder.embedding_dim, config.temperature)
    with torch.no_grad():  # pml's W is (D, C): one column per class
        loss_fn.W.copy_(torch.as_tensor(prototypes, dtype=torch.float32).T)
    loss_fn.to(device)
    optimizer = torch.optim.Adam(
        [
            {"params": [p for p in embedder.parameters() if p.requires_grad], "lr": config.lr},
            {"params": loss_fn.parameters(), "lr": config.lr * 10},
        ]
    )
    batches = _balanced_batches(codes, config)
    augment = build_augment(augment_config(config.augment), side=pixels.shape[-1])
    normalize = embedder.config.preprocess.normalize
    labels = torch.as_tensor(codes, dtype=torch.long)
    # batch norm normalises with its stored statistics, as a frozen part does
    batch_norms = [m for m in embedder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    set_train_mode(embedder, batch_norms)
    losses = []
    for step, batch in enumerate(batches, start=1):
        images = normalize(augment_batch(augment, pixels[batch])).to(device)
        loss = loss_fn(embedder(images), labels[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    embedder.eval()
    return losses


def _balanced_batches(codes: np.ndarray, config: AdaptConfig) -> list[torch.Tensor]:
    """``steps`` batches of indices, each class equally likely (torch's weighted sampler, with
    replacement: a class of 5 photos is drawn as often as one of 200)."""
    counts = np.bincount(codes)
    weights = torch.as_tensor(1.0 / counts[codes], dtype=torch.double)
    size = min(config.batch_size, len(codes))
    generator = torch.Generator().manual_seed(config.seed)
    sampler = WeightedRandomSampler(weights, size * config.steps, generator=generator)
    drawn = torch.as_tensor(list(sampler))
    return list(drawn.split(size))
