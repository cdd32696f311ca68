"""The quadruplet loss (Chen et al. 2017, "Beyond triplet loss"), in pytorch-metric-learning style.

A triplet loss only asks each anchor to be nearer its positive than its negative. The quadruplet
loss adds a second, weaker term over a negative pair that does not share the anchor: the positive
distance must also be smaller than the distance between two other classes, which shrinks every
class relative to the gaps between all classes, not only those seen from one anchor::

    L(a, p, n, n2) = [d(a, p) - d(a, n) + margin1]_+ + [d(a, p) - d(n, n2) + margin2]_+

with ``label[a] == label[p]``, ``label[n] != label[a]`` and ``label[n2]`` different from both.
``margin1`` (the paper's alpha1, default 2) is larger than ``margin2`` (alpha2, default 1) as the
paper asks: the triplet term dominates, the extra term is the weaker constraint.

``d`` is ``self.distance``; its default is the squared Euclidean distance between L2-normalised
embeddings (``LpDistance(power=2)``), as in the paper, so that d lies in [0, 4] and both default
margins can be met. A similarity (e.g. ``CosineSimilarity``) works too: the hinge uses
``distance.margin``, which flips the sign for similarities, as ``TripletMarginLoss`` does.

Being a ``BaseMetricLossFunction``, it takes pml miners and reducers:

* ``indices_tuple`` from a triplet miner ``(a, p, n)`` (or pairs ``(a1, p, a2, n)``, turned into
  triplets by pml's ``convert_to_triplets``) is expanded into quadruplets by pairing each triplet
  with every ``n2`` in the batch whose label differs from both the anchor's and ``n``'s;
* ``None`` (no miner) takes every triplet in the batch, expanded the same way;
* an explicit :class:`Quadruplets` ``(a, p, n, n2)`` is used as given (a plain 4-tuple would be a
  pml pair tuple, hence the named type).

An expansion larger than ``max_quadruplets`` is replaced by that many quadruplets drawn uniformly
(with replacement) from it, so memory stays bounded for big batches. Losses come back per
quadruplet as an ``"element"`` reduction indexed by anchor, so ``AvgNonZeroReducer`` (the default,
as for pml's triplet loss), ``MeanReducer``, ``ClassWeightedReducer`` etc. all apply.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.reducers import AvgNonZeroReducer
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu


class Quadruplets(NamedTuple):
    """Explicit quadruplets: batch indices of anchors, positives, negatives, second negatives."""

    a: torch.Tensor
    p: torch.Tensor
    n: torch.Tensor
    n2: torch.Tensor


class QuadrupletLoss(BaseMetricLossFunction):
    """Chen et al.'s quadruplet loss; see the module docstring for the formula and the inputs."""

    def __init__(
        self,
        margin1: float = 2.0,
        margin2: float = 1.0,
        max_quadruplets: int = 100_000,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.margin1 = margin1
        self.margin2 = margin2
        self.max_quadruplets = max_quadruplets
        self.add_to_recordable_attributes(list_of_names=["margin1", "margin2"], is_stat=False)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        if isinstance(indices_tuple, Quadruplets):
            quads = indices_tuple
        else:
            c_f.labels_required(labels)
            triplets = lmu.convert_to_triplets(indices_tuple, labels, t_per_anchor="all")
            quads = self.expand_triplets(triplets, labels)
        a, p, n, n2 = quads
        if len(a) == 0:
            return self.zero_losses()
        mat = self.distance(embeddings, ref_emb)
        ap, an, nn2 = mat[a, p], mat[a, n], mat[n, n2]
        triplet_term = torch.relu(self.distance.margin(ap, an) + self.margin1)
        pair_term = torch.relu(self.distance.margin(ap, nn2) + self.margin2)
        return {
            "loss": {
                "losses": triplet_term + pair_term,
                "indices": a,
                "reduction_type": "element",
            }
        }

    def expand_triplets(self, triplets, labels) -> Quadruplets:
        """Every (a, p, n, n2) with n2's label unlike a's and n's; a uniform sample if too many."""
        a, p, n = (t.to(labels.device) for t in triplets)
        # valid[t, j]: batch element j may be the second negative of triplet t.
        valid = (labels[None] != labels[a].unsqueeze(1)) & (labels[None] != labels[n].unsqueeze(1))
        counts = valid.sum(dim=1)
        total = int(counts.sum())
        if total <= self.max_quadruplets:
            t, n2 = valid.nonzero(as_tuple=True)
            return Quadruplets(a[t], p[t], n[t], n2)
        # A uniform draw u in [0, total) picks triplet t and the r-th valid n2 of that triplet.
        ends = counts.cumsum(dim=0)
        u = torch.randint(total, (self.max_quadruplets,), device=labels.device)
        t = torch.searchsorted(ends, u, right=True)
        rank = u - (ends[t] - counts[t])
        seen = valid[t].cumsum(dim=1, dtype=torch.int32)
        n2 = (seen > rank[:, None]).int().argmax(dim=1)
        return Quadruplets(a[t], p[t], n[t], n2)

    def get_default_distance(self):
        return LpDistance(normalize_embeddings=True, p=2, power=2)

    def get_default_reducer(self):
        return AvgNonZeroReducer()
