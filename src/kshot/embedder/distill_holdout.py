"""What a distillation run holds out to report on, and why nothing held out picks the epoch.

Held out, never trained on: a share of the images (``--holdout``), whose loss is printed after
each epoch, or, with class folders and ``--holdout-classes N``, N whole classes, scored after
each epoch as ``kshot train`` scores its held-out classes (few-shot accuracy alone and in the
library of all classes). The student keeps its LAST weights. Two ways of picking an epoch were
tried on PlantVillage and both kept the untrained start while six epochs lifted the student on
15 classes it never saw, alone (5-shot 65.2% -> 68.1%) and in a library beside the 23 classes
it was distilled on (63.5% -> 67.3%) (BENCHMARKS.md):

* the loss on held-out images: the start's is low because its projection is a ridge regression
  fitted in closed form, a fit the first epochs lose before training wins it back;
* the few-shot scores of 4 held-out classes: they fell (1-shot in the library 43% -> 36%)
  while the 15 classes rose; 4 classes are too few to speak for others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kshot.embedder.trainset import ImageSet, split_data
from kshot.errors import KshotError
from kshot.fewshot.validation import TrainingValidation

MIN_HOLDOUT = 8  # fewer held-out images than this tell nothing: the training images report


@dataclass(frozen=True)
class DistillHoldout:
    train: torch.Tensor  # indices of the images the student learns from
    held: torch.Tensor  # of the images the loss is reported on (all of them: none held out)
    validation: TrainingValidation | None = None  # scores the held-out classes, if any
    classes: list[str] = field(default_factory=list)  # the held-out classes' names

    @property
    def held_out(self) -> int:
        """Images kept out of training; 0 where the training images report."""
        return 0 if torch.equal(self.train, self.held) else len(self.held)

    def describe(self) -> str:
        if self.validation is not None:
            return f"{self.held_out} images held out: {self.validation.describe()}"
        if self.held_out:
            return f"{self.held_out} images held out"
        return "nothing held out (too few images)"


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
    pixels: torch.Tensor, labels: np.ndarray | None, share: float, holdout_classes: int, seed: int
) -> DistillHoldout:
    """``holdout_classes`` whole classes of ``labels (n,)`` held out where given (at least 2,
    with 2 left to train on and 2 images in each held class), else ``share`` of the ``pixels
    (n, C, H, W)`` images."""
    if holdout_classes:
        if labels is None:
            raise KshotError("--holdout-classes needs the images in class sub-folders")
        names, codes = np.unique(labels, return_inverse=True)
        if holdout_classes < 2 or len(names) - holdout_classes < 2:
            raise KshotError(
                f"--holdout-classes {holdout_classes} of {len(names)} classes: hold out at "
                "least 2 and leave at least 2 to train on"
            )
        split = split_data(codes, 0.0, holdout_classes, seed)
        images = ImageSet(pixels, torch.as_tensor(codes))
        validation = TrainingValidation(
            None, images.subset(split.references), images.subset(split.holdout), seed=seed
        )
        if validation.holdout is None:
            raise KshotError("--holdout-classes: each held-out class needs 2 images at least")
        held_names = sorted(names[np.unique(codes[split.holdout])].tolist())
        train, held = torch.as_tensor(split.train), torch.as_tensor(split.holdout)
        return DistillHoldout(train, held, validation, held_names)
    return DistillHoldout(*holdout_split(len(pixels), share, seed))


def holdout_split(count: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held)`` indices into ``count`` images: ``share`` of them, drawn with ``seed``,
    held out, unless that is fewer than :data:`MIN_HOLDOUT` or leaves fewer than two to train
    on; then ``held`` is every image (the training images report)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = round(share * count)
    if held < MIN_HOLDOUT or count - held < 2:
        return order.sort().values, order.sort().values
    return order[held:].sort().values, order[:held].sort().values
