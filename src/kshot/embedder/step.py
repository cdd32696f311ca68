"""One training step: the network, miner and loss as one module (:class:`LossModel`), the
embedder past its backbone for a stage that trains on precomputed features, and the step itself
(:class:`Stepper`: forward, loss, backward, every optimiser)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kshot.embedder.model import Embedder


class LossModel(nn.Module):
    """``(inputs, labels) -> loss``: the network, the miner and the loss as one module, so that
    DistributedDataParallel sees every trained parameter (the loss's class weights too).

    With an ``anchor`` (the frozen pretrained backbone, in eval mode) and a ``distill`` weight,
    the loss adds ``distill * (1 - cosine)`` between the trained backbone's features and the
    anchor's on the same images: a Learning-without-Forgetting-style penalty (Li and Hoiem
    2016, on features rather than outputs) that keeps the features new classes rely on from
    drifting far. Written by hand: pml's losses compare embeddings of one network only."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        miner: nn.Module | None,
        anchor: nn.Module | None = None,
        distill: float = 0.0,
    ):
        super().__init__()
        self.net, self.loss, self.miner = net, loss, miner
        self.anchor, self.distill = anchor, distill

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.anchor is None:
            embeddings, penalty = self.net(inputs), 0.0
        else:
            features = self.net.backbone(inputs)
            embeddings = self.net.embed_features(features)
            with torch.no_grad():
                reference = self.anchor(inputs)
            drift = 1 - F.cosine_similarity(features.float(), reference.float(), dim=1)
            penalty = self.distill * drift.mean()
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs) + penalty


class _FromFeatures(nn.Module):
    """The embedder past its backbone: trains on features computed beforehand."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.embedder.embed_features(features)


class Stepper:
    """One optimisation step: forward, loss, backward, every optimiser (with a gradient scaler
    under float16 autocast on CUDA). ``benchmarks/train_step.py`` times it against a bare loop."""

    def __init__(self, model: nn.Module, optimizers: list, device: torch.device, amp: bool):
        self.model, self.optimizers, self.device = model, optimizers, device
        self.amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss = self.model(inputs, labels)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        return loss.detach()
