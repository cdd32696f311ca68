"""What a distillation run holds out, and what picks the epoch it keeps.

Where the images come in class sub-folders, whole classes are held out, as ``kshot train``
holds them out, and the epoch kept is the one whose student scores best on them as a few-shot
library uses it (kshot.fewshot.validation: the 1-shot library score first). The distillation
loss cannot tell: on PlantVillage the student's loss on held-out images stayed above its start
for six epochs while its accuracy on new classes rose past the start's by the third
(BENCHMARKS.md). The labels only choose the epoch; the student never learns from them.
Without classes, a share of the images is held out and their loss picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kshot.embedder.trainset import ImageSet, split_data
from kshot.fewshot.validation import TrainingValidation

MIN_HOLDOUT = 8  # fewer held-out images than this judge nothing: the training images do


@dataclass(frozen=True)
class DistillHoldout:
    train: torch.Tensor  # indices of the images the student learns from
    held: torch.Tensor  # of the images the loss is reported on (all of them: none held out)
    validation: TrainingValidation | None = None  # scores the held-out classes, if any
    classes: list[str] = field(default_factory=list)  # the held-out classes' names

    @property
    def held_out(self) -> int:
        """Images kept out of training; 0 where the training images pick."""
        return 0 if torch.equal(self.train, self.held) else len(self.held)

    def describe(self) -> str:
        if self.validation is not None:
            return f"few-shot accuracy on {len(self.classes)} held-out classes"
        if self.held_out:
            return f"the lowest loss on {self.held_out} held-out images"
        return "the lowest loss on them all (too few to hold some out)"


def folder_labels(data: Path, paths: list[Path]) -> np.ndarray | None:
    """Each image's class, its sub-folder's name, where every image is in a sub-folder of
    ``data`` (``paths`` as :func:`kshot.embedder.distill.image_files` lists them; links are
    not followed: a linked file belongs to the folder it is listed in); else ``None``."""
    data = Path(data)
    parents = [Path(path).parent for path in paths]
    if not parents or any(parent == data for parent in parents):
        return None
    return np.array([parent.name for parent in parents])


def plan_holdout(
    pixels: torch.Tensor,
    labels: np.ndarray | None,
    share: float,
    holdout_classes: int | None,
    seed: int,
) -> DistillHoldout:
    """Whole classes held out where ``labels (n,)`` give enough (``holdout_classes``, by
    default kshot train's: a fifth, at most 5, at least 2, with 2 left to train on), each held
    class with 2 images at least; else ``share`` of the ``pixels (n, C, H, W)`` images."""
    from kshot.embedder.run import default_holdout_classes

    if labels is not None:
        names, codes = np.unique(labels, return_inverse=True)
        count = default_holdout_classes(len(names)) if holdout_classes is None else holdout_classes
        if count >= 2 and len(names) - count >= 2:
            split = split_data(codes, 0.0, count, seed)
            images = ImageSet(pixels, torch.as_tensor(codes))
            validation = TrainingValidation(
                None, images.subset(split.references), images.subset(split.holdout), seed=seed
            )
            if validation.holdout is not None:
                held_names = sorted(names[np.unique(codes[split.holdout])].tolist())
                return DistillHoldout(
                    torch.as_tensor(split.train), torch.as_tensor(split.holdout), validation,
                    held_names,
                )  # fmt: skip
    return DistillHoldout(*holdout_split(len(pixels), share, seed))


def holdout_split(count: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held)`` indices into ``count`` images: ``share`` of them, drawn with ``seed``,
    held out, unless that is fewer than :data:`MIN_HOLDOUT` or leaves fewer than two to train
    on; then ``held`` is every image (the training images pick)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = round(share * count)
    if held < MIN_HOLDOUT or count - held < 2:
        return order.sort().values, order.sort().values
    return order[held:].sort().values, order[:held].sort().values
