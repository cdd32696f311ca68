"""The metric-learning losses, by name, mostly from pytorch-metric-learning (pml).

Each entry of ``LOSSES`` is a factory ``(num_classes, embedding_dim, **overrides)`` that returns
``(loss, miner)``; ``overrides`` are keyword arguments of the loss (``margin=0.3``, ``scale=64``)
laid over ``LOSS_DEFAULTS``, the values used in the plant-disease few-shot literature. A loss with
parameters of its own (class weights) is trained along with the embedder; the miner (or ``None``)
picks the pairs or triplets of each batch that the loss sees.

============  =======================  ===========================  ===============================
name          loss                     miner                        defaults
============  =======================  ===========================  ===============================
contrastive   pml ContrastiveLoss      pml MultiSimilarityMiner     pos_margin 0, neg_margin 1
triplet       pml TripletMarginLoss    pml TripletMarginMiner,      margin 1
                                       semihard, the loss's margin
quadruplet    QuadrupletLoss           none: every quadruplet of    margin1 2, margin2 1
              (kshot.embedder.         the batch (capped)
              quadruplet)
sphereface    pml SphereFaceLoss       none                         margin 4 (scale 1)
cosface       pml CosFaceLoss          none                         margin 0.4, scale 32
arcface       pml ArcFaceLoss          none                         margin 28.65 degrees (0.5 rad),
                                                                    scale 32
softmax       LinearSoftmaxLoss        none                         (none)
focal         FocalLoss                none                         gamma 2, alpha 0.5
protonet      PrototypicalLoss         none: the batch is an        scale 64 (learnt), cosine
              (kshot.embedder.         episode (kshot.embedder.
              protonet)                episodic_sampler)
============  =======================  ===========================  ===============================

pml's ArcFaceLoss takes its margin in degrees, so an ``arcface`` override ``margin=`` is in degrees
too. Distances are pml's defaults (Euclidean between L2-normalised embeddings, in [0, 2], so a
triplet margin of 1 is reachable), except the quadruplet loss's squared one (see its module).
SphereFace scales its logits by the embedding's norm, which is 1 for kshot's L2-normalised
embeddings, so its logits stay in [-1, 1] times pml's ``scale`` (1, kept as the paper has no scale);
pass e.g. ``scale=32`` as CosFace and ArcFace use if it learns too slowly.

The contrastive loss's miner: a ``PairMarginMiner`` with the loss's own margins would keep exactly
the pairs with a non-zero loss, which the loss's ``AvgNonZeroReducer`` already does, so it would
change nothing. ``MultiSimilarityMiner`` (Wang et al. 2019) instead keeps, for each anchor, the
negatives closer than its farthest positive and the positives farther than its closest negative
(within ``epsilon`` 0.1 in cosine similarity, which orders pairs as the Euclidean distance does on
unit vectors): the informative pairs, not all violating ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.losses.mixins import WeightRegularizerMixin
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from kshot.embedder.protonet import PrototypicalLoss
from kshot.embedder.quadruplet import QuadrupletLoss
from kshot.errors import KshotError

LossFactory = Callable[..., tuple[nn.Module, nn.Module | None]]


class LinearSoftmaxLoss(WeightRegularizerMixin, BaseMetricLossFunction):
    """Cross-entropy of a linear classifier (weights ``W``, bias ``b``) over the embeddings.

    The plain softmax baseline. pml's ``NormalizedSoftmaxLoss`` is not it: it normalises the class
    weights and divides by a temperature, a cosine classifier (CosFace with no margin). The class
    weights live in the loss, as in pml's angular losses, so the training loop optimises them.
    """

    def __init__(self, num_classes: int, embedding_size: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.W = nn.Parameter(torch.empty(embedding_size, num_classes))
        self.b = nn.Parameter(torch.zeros(num_classes))
        self.weight_init_func(self.W)
        self.add_to_recordable_attributes(list_of_names=["num_classes"], is_stat=False)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.W + self.b

    def per_element_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none")

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        # A miner's tuples weigh each element by how often it occurs in them, as in pml.
        weights = lmu.convert_to_weights(indices_tuple, labels, dtype=embeddings.dtype)
        element_losses = self.per_element_loss(self.get_logits(embeddings), labels) * weights
        loss_dict = {
            "loss": {
                "losses": element_losses,
                "indices": c_f.torch_arange_from_size(embeddings),
                "reduction_type": "element",
            }
        }
        self.add_weight_regularization_to_loss_dict(loss_dict, self.W.t())
        return loss_dict


class FocalLoss(LinearSoftmaxLoss):
    """Softmax focal loss (Lin et al. 2017) on the linear classifier: ``alpha (1 - p_t)^gamma CE``.

    Down-weights the examples already classified well (``p_t`` the softmax probability of the
    true class), focusing training on the hard ones. Written by hand: no dependency has the
    softmax form; ``torchvision.ops.sigmoid_focal_loss`` is the one-vs-rest sigmoid form, whose
    independent per-class probabilities do not suit mutually exclusive classes. In this form
    ``alpha`` is a constant factor (a class-balancing weight in the sigmoid form).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        gamma: float = 2.0,
        alpha: float = 0.5,
        **kwargs,
    ):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.gamma = gamma
        self.alpha = alpha
        self.add_to_recordable_attributes(list_of_names=["gamma", "alpha"], is_stat=False)

    def per_element_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, labels, reduction="none")
        p_true = torch.exp(-ce)
        return self.alpha * (1 - p_true) ** self.gamma * ce


LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "contrastive": {"pos_margin": 0.0, "neg_margin": 1.0},
    "triplet": {"margin": 1.0},
    "quadruplet": {"margin1": 2.0, "margin2": 1.0},
    "sphereface": {"margin": 4},
    "cosface": {"margin": 0.4, "scale": 32},
    "arcface": {"margin": math.degrees(0.5), "scale": 32},
    "softmax": {},
    "focal": {"gamma": 2.0, "alpha": 0.5},
    # Training passes the episodes' ``--shots`` (5 by default) in place of this 5.
    # Scale 64: on Omniglot (conv4, 60-way episodes, 10 epochs) one-shot error was 35% at 10,
    # 24.5% at 30, 19.5% at 64, 19% at 128, 22% at 256; the learnt scale barely moves from
    # where it starts, so the start decides (BENCHMARKS.md).
    "protonet": {"shots": 5, "scale": 64.0, "learn_scale": True, "squared_distance": False},
}


def _contrastive(classes: int, dim: int, **kw):
    return losses.ContrastiveLoss(**kw), miners.MultiSimilarityMiner(epsilon=0.1)


def _triplet(classes: int, dim: int, **kw):
    # Triplets mined among the batch's semi-hard ones (FaceNet, Schroff et al. 2015), with the
    # loss's margin and distance so that the miner and the loss agree on what "semi-hard" means.
    loss = losses.TripletMarginLoss(**kw)
    miner = miners.TripletMarginMiner(
        margin=loss.margin, type_of_triplets="semihard", distance=loss.distance
    )
    return loss, miner


_BUILDERS: dict[str, LossFactory] = {
    "contrastive": _contrastive,
    "triplet": _triplet,
    # No miner: the loss takes every quadruplet of the batch (a uniform sample past its cap).
    "quadruplet": lambda classes, dim, **kw: (QuadrupletLoss(**kw), None),
    # Multiplicative angular margin (Liu et al. 2017).
    "sphereface": lambda classes, dim, **kw: (losses.SphereFaceLoss(classes, dim, **kw), None),
    # Additive cosine margin (Wang et al. 2018).
    "cosface": lambda classes, dim, **kw: (losses.CosFaceLoss(classes, dim, **kw), None),
    # Additive angular margin (Deng et al. 2019).
    "arcface": lambda classes, dim, **kw: (losses.ArcFaceLoss(classes, dim, **kw), None),
    "softmax": lambda classes, dim, **kw: (LinearSoftmaxLoss(classes, dim, **kw), None),
    "focal": lambda classes, dim, **kw: (FocalLoss(classes, dim, **kw), None),
    # Prototypes of each episode's support images (Snell et al. 2017).
    "protonet": lambda classes, dim, **kw: (PrototypicalLoss(**kw), None),
}


def _with_defaults(name: str) -> LossFactory:
    def factory(num_classes: int, embedding_dim: int, **overrides: Any):
        kwargs = {**LOSS_DEFAULTS[name], **overrides}
        return _BUILDERS[name](num_classes, embedding_dim, **kwargs)

    return factory


LOSSES: dict[str, LossFactory] = {name: _with_defaults(name) for name in _BUILDERS}


def build_loss(
    name: str, num_classes: int, embedding_dim: int, **overrides: Any
) -> tuple[nn.Module, nn.Module | None]:
    """The loss ``name`` and its miner, with ``overrides`` laid over its ``LOSS_DEFAULTS``."""
    try:
        factory = LOSSES[name]
    except KeyError:
        raise KshotError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}") from None
    try:
        return factory(num_classes, embedding_dim, **overrides)
    except TypeError as err:
        # The options its defaults do not name (training adds some, such as protonet's shots).
        strange = sorted(set(overrides) - set(LOSS_DEFAULTS[name])) or sorted(overrides)
        raise KshotError(
            f"loss {name!r} cannot take {strange}: {err}; its defaults: "
            f"{LOSS_DEFAULTS.get(name, {})}"
        ) from err
