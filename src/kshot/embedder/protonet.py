"""The prototypical loss (Snell et al. 2017), in pytorch-metric-learning's form: train as a
few-shot library is queried.

A batch is an episode (:class:`kshot.embedder.episodic_sampler.EpisodicBatchSampler`): for
each of its classes, the first ``shots`` images in batch order are the *support* and the rest
the *queries*. Each class's prototype is the mean of its support embeddings, and each query's
loss is the cross-entropy of its class among the episode's prototypes, over logits
``scale * cosine similarity`` (the default; kshot's library also answers by cosine) or
``-scale * squared Euclidean distance`` (``squared_distance=1``, Snell et al.'s choice). The
scale is learnt (``learn_scale=1``, the "metric scaling" of Oreshkin et al. 2018) from
``scale``, or fixed.

Written by hand: pytorch-metric-learning has no prototypical loss, and no episodic split of a
batch into support and queries; its ``CosineSimilarity`` and ``LpDistance`` compute the
similarities here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from torch import nn


def support_mask(labels: torch.Tensor, shots: int) -> torch.Tensor:
    """True for the first ``shots`` elements of each class, in order."""
    codes = torch.unique(labels, return_inverse=True)[1]
    one_hot = F.one_hot(codes)
    rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # each element's place within its class
    return rank < shots


class PrototypicalLoss(BaseMetricLossFunction):
    def __init__(
        self,
        shots: int,
        scale: float = 64.0,
        learn_scale: bool = True,
        squared_distance: bool = False,
        **kwargs,
    ):
        if "distance" not in kwargs:
            kwargs["distance"] = (
                LpDistance(power=2, normalize_embeddings=False)
                if squared_distance
                else CosineSimilarity()
            )
        super().__init__(**kwargs)
        self.shots = int(shots)
        self.learn_scale, self.squared_distance = bool(learn_scale), bool(squared_distance)
        scale = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.add_to_recordable_attributes(
            list_of_names=["shots", "learn_scale", "squared_distance"], is_stat=False
        )

    def logits(self, queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """``(Q, P)``: higher is closer."""
        matrix = self.distance(queries, prototypes)
        return self.scale * matrix if self.distance.is_inverted else -self.scale * matrix

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        codes = torch.unique(labels, return_inverse=True)[1]
        support = support_mask(labels, self.shots)
        query = ~support
        if not query.any():
            return self.zero_losses()
        members = F.one_hot(codes[support]).to(embeddings.dtype)  # (S, C)
        prototypes = (members.t() @ embeddings[support]) / members.sum(0)[:, None]
        losses = F.cross_entropy(
            self.logits(embeddings[query], prototypes), codes[query], reduction="none"
        )
        return {
            "loss": {
                "losses": losses,
                "indices": torch.nonzero(query).squeeze(1),
                "reduction_type": "element",
            }
        }
