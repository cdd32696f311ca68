"""The settings of ``kshot adapt`` and their defaults, the one source its options are built from
(importing this module imports no torch, so ``kshot adapt --help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass

from kshot.errors import KshotError


@dataclass(frozen=True)
class AdaptConfig:
    """``steps`` of ``batch_size`` photos drawn with every class equally likely; ``lr`` for the
    network (the class weights learn 10x faster); ``temperature``: the classifier's cosine
    scale is its inverse."""

    steps: int = 80
    batch_size: int = 32
    lr: float = 3e-4
    temperature: float = 0.05
    augment: str = "photo"
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2:
            raise KshotError("adapting needs at least 1 step and batches of at least 2 photos")
        if self.lr <= 0 or self.temperature <= 0:
            raise KshotError("the learning rate and the temperature must be positive")
        from kshot.embedder.augment import augment_config  # torch: only when one is made

        augment_config(self.augment)  # an unknown preset is a clear error before any work
