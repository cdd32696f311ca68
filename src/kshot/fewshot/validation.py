"""How a training run scores its embedder after each epoch, with kshot's own decisions.

Two questions, from two kinds of held-out data:

* Known classes: each held-out image queries a few *reference* images of the training classes
  (up to ``references`` per class, drawn once from the training images). ``precision_at_1``:
  its nearest reference has its class; ``accuracy``: the nearest class prototype of the
  references is its class (what ``kshot query`` answers). ``precision_at_1`` picks the best
  epoch.
* New classes: whole classes training never sees, as ``kshot enroll`` would get them.
  ``fewshot_accuracy``: the mean accuracy of episodes over all of them, ``shots`` images
  enrolled per class and the rest queried. This is what a few-shot model is for, and what
  training can make worse while the known classes improve. ``library_accuracy``: the same
  new classes, each enrolled from ``library_shots`` image(s), in a library that also holds
  the training classes (their references), each query classified among every class, as a
  user's library answers it. The harder of the two, and the one that sees new photos drawn
  into known classes' clusters. On nine PlantVillage models, 5 held-out classes alone scored
  96-99% for all (a ceiling), while the 1-shot library score spread them over 31.5-46.2%,
  nearly in the order of their 1-shot accuracy on 15 classes none saw (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kshot.embedder.inference import backbone_features
from kshot.embedder.model import Embedder
from kshot.embedder.trainset import ImageSet
from kshot.fewshot.episodes import episode_accuracy, run_episodes, run_library_episodes
from kshot.fewshot.metrics import retrieval_metrics


class TrainingValidation:
    def __init__(
        self,
        val: ImageSet | None,
        references: ImageSet | None,
        holdout: ImageSet | None,
        shots: int = 5,
        episodes: int = 20,
        library_shots: int = 1,
        seed: int = 0,
    ):
        self.references = references if references is not None and len(references) else None
        self.val = val if val is not None and len(val) and self.references is not None else None
        self.holdout = holdout if holdout is not None and len(holdout) else None
        self.episodes, self.seed = episodes, seed
        self._fingerprint: tuple | None = None  # of the backbone whose features are kept
        self._features: dict[int, torch.Tensor] = {}
        if self.holdout is not None:
            counts = np.bincount(self.holdout.labels.numpy())
            smallest = int(counts[counts > 0].min())
            self.ways = int((counts > 0).sum())
            self.shots = max(1, min(shots, smallest - 1))
            self.queries = smallest - self.shots
            self.library_shots = max(1, min(library_shots, smallest - 1))
            self.library_queries = smallest - self.library_shots
            if self.ways < 2 or self.queries < 1:
                self.holdout = None

    @property
    def standard_error(self) -> float:
        """The held-out accuracy's standard error at most, ``0.5 / sqrt(n)`` for its ``n``
        images: the episodes redraw support and queries from the same images, so these are its
        independent samples. 225 images (5 classes of 45) give 3.3 points; telling recipes 2
        points apart takes about 2,500 held-out images."""
        return 0.5 / np.sqrt(len(self.holdout)) if self.holdout is not None else float("nan")

    @property
    def enabled(self) -> bool:
        return self.val is not None or self.holdout is not None

    def describe(self) -> str:
        parts = []
        if self.val is not None:
            parts.append(f"{len(self.val)} held-out images of the training classes")
        if self.holdout is not None:
            parts.append(
                f"{self.ways} held-out classes ({self.ways}-way {self.shots}-shot, "
                f"{self.queries} queries per class, {self.episodes} episodes; "
                f"standard error at most {self.standard_error:.1%})"
            )
            if self.references is not None:
                known = len(np.unique(self.references.labels.numpy()))
                parts[-1] += (
                    f", and {self.library_shots}-shot in a library of all {self.ways + known} "
                    "classes"
                )
        return " and ".join(parts) if parts else "nothing held out"

    def __call__(self, embedder: Embedder) -> dict:
        """The scores of ``embedder`` as it embeds.

        While the backbone does not change (stage 1 trains a head on the frozen backbone), its
        features of the validation images are kept from the call before and only the head
        runs: a backbone pass over every held-out image each epoch would take longer than the
        epoch itself. A change of any weight or batch-norm statistic of the backbone changes
        the sums that tell."""
        fingerprint = _fingerprint(embedder.backbone)
        if fingerprint != self._fingerprint:
            self._features, self._fingerprint = {}, fingerprint

        def embed(pixels):
            key = id(pixels)
            if key not in self._features:
                self._features[key] = backbone_features(embedder, pixels)
            embedder.eval()
            with torch.inference_mode():
                vectors = embedder.embed_features(self._features[key].to(_device(embedder)))
            return vectors.float().cpu().numpy()

        return self._scores(embed)

    def untrained(self, embedder: Embedder) -> dict:
        """The scores of ``embedder``'s backbone features alone (no head): where the backbone
        stands before training."""

        def features(pixels):
            return F.normalize(backbone_features(embedder, pixels), dim=1).numpy()

        return self._scores(features)

    def _scores(self, embed) -> dict:
        scores, known = {}, None
        if self.references is not None:
            known = embed(self.references.pixels), self.references.labels.numpy()
        if self.val is not None:
            queries, q_labels = embed(self.val.pixels), self.val.labels.numpy()
            references, r_labels = known
            retrieval = retrieval_metrics(queries, q_labels, references, r_labels)
            vectors = np.concatenate([references, queries])
            labels = np.concatenate([r_labels, q_labels])
            support = np.arange(len(references))
            query = np.arange(len(references), len(vectors))
            scores["precision_at_1"] = retrieval["precision_at_1"]
            scores["accuracy"] = episode_accuracy(vectors, labels, support, query)
        if self.holdout is not None:
            vectors, labels = embed(self.holdout.pixels), self.holdout.labels.numpy()
            sizes = (self.shots, self.queries, self.episodes, self.seed)
            result = run_episodes(vectors, labels, self.ways, *sizes)
            scores["fewshot_accuracy"] = result["mean_accuracy"]
            if known is not None:
                sizes = (self.library_shots, self.library_queries, self.episodes, self.seed)
                library = run_library_episodes(vectors, labels, *known, *sizes)
                scores["library_accuracy"] = library["mean_accuracy"]
        return scores


def _fingerprint(module: nn.Module) -> tuple[float, ...]:
    """The sum of each weight and buffer: what a training step changes changes these."""
    with torch.no_grad():
        return tuple(float(t.double().sum()) for t in module.state_dict().values())


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
