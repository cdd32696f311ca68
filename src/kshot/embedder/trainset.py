"""The images a training run learns from and checks itself on, decoded once.

Every image is decoded and cropped once, then kept as a uint8 tensor (a quarter of float32's
memory: 150 KB per 224-pixel colour image); augmentation and normalisation happen per batch.
:func:`split_data` splits the classes three ways: images to train on, held-out images of the
same classes (validation precision@1, which picks the best epoch), and a few whole held-out
classes that training never sees (few-shot accuracy on new classes, what kshot is for).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from kshot.embedder.inference import load_pixels
from kshot.embedder.preprocess import PreprocessConfig
from kshot.errors import InputError


@dataclass
class ImageSet:
    """``pixels (n, C, H, W)`` uint8 crops with integer class codes ``labels (n,)``."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(self.pixels[index], self.labels[index])


def load_image_set(
    config: PreprocessConfig, paths: Sequence[Path], labels: Sequence[int]
) -> tuple[ImageSet, list[tuple[int, InputError]]]:
    """Decode ``paths`` once; unreadable files come back as ``(index, error)``, not raised."""
    pixels, kept, failed = load_pixels(config, paths)
    return ImageSet(pixels, torch.as_tensor([labels[i] for i in kept], dtype=torch.int64)), failed


@dataclass(frozen=True)
class Split:
    """Indices into the image set: to train on, to validate on, of the held-out classes, and
    ``references``: a few of the training images per class, that validation queries search."""

    train: np.ndarray
    val: np.ndarray
    holdout: np.ndarray
    references: np.ndarray


def split_data(
    labels: np.ndarray,
    val_fraction: float,
    holdout_classes: int,
    seed: int,
    references: int = 5,
) -> Split:
    """A stratified split of ``labels (n,)``: ``holdout_classes`` whole classes drawn at random,
    then ``val_fraction`` of each remaining class's images (rounded, at least one, but never a
    class's last two: a class keeps two images to train on, a positive pair), and up to
    ``references`` of each class's training images."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    held = rng.choice(classes, size=min(holdout_classes, len(classes)), replace=False)
    train, val, refs = [], [], []
    for c in classes:
        if c in held:
            continue
        members = rng.permutation(np.flatnonzero(labels == c))
        wanted = max(1, round(val_fraction * len(members))) if val_fraction > 0 else 0
        take = max(0, min(wanted, len(members) - 2))
        val.extend(members[:take])
        train.extend(members[take:])
        refs.extend(members[take : take + references])
    holdout = np.flatnonzero(np.isin(labels, held))
    train, val, refs = (np.sort(np.array(part, np.intp)) for part in (train, val, refs))
    return Split(train=train, val=val, holdout=holdout, references=refs)


def with_rotation_classes(images: ImageSet) -> ImageSet:
    """Each class's images turned by 90, 180 and 270 degrees become three more classes
    (class ``c`` turned ``k`` quarter turns is class ``4c + k``): more classes to learn from,
    which helps what is learnt carry over to new classes (Santoro et al. 2016, Snell et al.
    2017). For images with an upright, like characters, not for leaves photographed from above."""
    pixels = torch.cat([torch.rot90(images.pixels, k, dims=(2, 3)) for k in range(4)])
    labels = torch.cat([images.labels * 4 + k for k in range(4)])
    return ImageSet(pixels, labels)


class AugmentedImages(Dataset):
    """``(image (C, H, W) float, label)`` pairs: the crop augmented, then normalised."""

    def __init__(self, images: ImageSet, augment: nn.Module, preprocess: PreprocessConfig):
        self.images = images
        self.augment = augment
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.augment(self.images.pixels[i])
        return self.preprocess.normalize(pixels), self.images.labels[i]
