"""Test-time augmentation: an image's embedding is the re-normalised mean of the unit embeddings
of several views of it, at enrollment and at query alike.

The first view is always the image as it is embedded without TTA (the centre crop); each named
view adds one: ``hflip`` and ``vflip`` mirror the crop, ``full`` is the whole image resized to the
input size without the crop (squeezed if it is not square). Measured on the PlantVillage split:
the original, ``hflip`` and ``vflip`` averaged lifted 5-shot accuracy by 1-2 points. The views of
a batch go through the network as one stacked batch, the file decoded once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from kshot.embedder.preprocess import PreprocessConfig, image_tensor
from kshot.errors import KshotError

FLIPS = {"hflip": -1, "vflip": -2}  # the tensor dimension each mirrors
VIEWS = (*FLIPS, "full")


def check_views(views: Sequence[str], known: Sequence[str] = VIEWS) -> tuple[str, ...]:
    """``views`` as a tuple; a clear error for a name not in ``known`` or given twice."""
    views = tuple(views)
    for view in views:
        if view not in known:
            raise KshotError(f"unknown TTA view {view!r}; known views: {', '.join(known)}")
    if len(set(views)) != len(views):
        raise KshotError(f"a TTA view is given twice in {', '.join(views)}")
    return views


def with_flips(images: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 1 + V, C, H, W)``: each image, then its flipped ``views``."""
    return torch.stack([images, *(images.flip(FLIPS[view]) for view in views)], dim=1)


def view_pixels(config: PreprocessConfig, image: Image.Image, views: Sequence[str]) -> torch.Tensor:
    """The uint8 crops ``(1 + V, C, S, S)`` of ``image``: its centre crop, then ``views``."""
    crop = config.pixels(image)
    size = (config.input_size, config.input_size)
    stack = [crop]
    for view in views:
        if view in FLIPS:
            stack.append(crop.flip(FLIPS[view]))
        else:  # "full"
            stack.append(image_tensor(image.resize(size, config.resampling)))
    return torch.stack(stack)


def mean_of_views(vectors: torch.Tensor, views: int) -> torch.Tensor:
    """``(N * views, D)`` unit embeddings, each image's views adjacent -> ``(N, D)``: the
    re-normalised mean of each image's views."""
    return F.normalize(vectors.view(-1, views, vectors.shape[1]).mean(dim=1), dim=1)
