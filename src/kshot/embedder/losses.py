"""The metric-learning losses, by name, all from pytorch-metric-learning.

Each entry builds ``(loss, miner)``; a loss with parameters of its own (the angular-margin losses'
class weights) is trained along with the embedder.
"""

from __future__ import annotations

from collections.abc import Callable

from pytorch_metric_learning import losses, miners
from torch import nn

from kshot.errors import KshotError

LossFactory = Callable[[int, int], tuple[nn.Module, nn.Module | None]]

LOSSES: dict[str, LossFactory] = {
    # Triplets mined among the batch's semi-hard ones (FaceNet, Schroff et al. 2015).
    "triplet": lambda classes, dim: (
        losses.TripletMarginLoss(margin=0.2),
        miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
    ),
    # Additive angular margin (Deng et al. 2019); pytorch-metric-learning's margin is in degrees.
    "arcface": lambda classes, dim: (
        losses.ArcFaceLoss(classes, dim, margin=28.6, scale=32),
        None,
    ),
}


def build_loss(
    name: str, num_classes: int, embedding_dim: int
) -> tuple[nn.Module, nn.Module | None]:
    try:
        factory = LOSSES[name]
    except KeyError:
        raise KshotError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}") from None
    return factory(num_classes, embedding_dim)
