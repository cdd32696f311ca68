"""Preprocessing configuration: what a backbone expects, carried inside every checkpoint.

Like timm's ``pretrained_cfg``, the config travels with the weights, so an embedder loaded from a
checkpoint always sees images prepared the way it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kshot.embedder.images import LoadedImage, read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image file becomes a ``(channels, input_size, input_size)`` float tensor.

    The image's shorter side is resized to ``resize_size``, the centre ``input_size`` square is
    cropped, and each channel is normalised with ``mean``/``std`` (on the 0..1 scale).
    """

    input_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if self.resize_size < self.input_size:
            raise ValueError("resize_size must be at least input_size")
        if self.interpolation.upper() not in Image.Resampling.__members__:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        data = dict(data)
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        return cls(**data)

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> PreprocessConfig:
        return PreprocessConfig(
            self.input_size,
            self.resize_size,
            tuple(float(m) for m in mean),
            tuple(float(s) for s in std),
            self.channels,
            self.interpolation,
        )

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The centre square a resize to ``resize_size`` then a crop to ``input_size`` would keep,
        resized in one PIL call (cropping first: only the kept pixels are resized), as a uint8
        tensor ``(channels, input_size, input_size)``.

        Written with PIL and numpy rather than torchvision.transforms, whose import alone (it
        pulls in torchvision.models and torch._dynamo) adds 1.5 s to every command.
        """
        width, height = image.size
        side = min(width, height) * self.input_size / self.resize_size
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
        size = (self.input_size, self.input_size)
        return image_tensor(image.resize(size, self.resampling, box=box))

    @property
    def resampling(self) -> Image.Resampling:
        return Image.Resampling[self.interpolation.upper()]

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., channels, H, W)`` -> the float tensor the embedder takes."""
        mean = torch.tensor(self.mean).view(-1, 1, 1) * 255
        std = torch.tensor(self.std).view(-1, 1, 1) * 255
        return pixels.float().sub_(mean).div_(std)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """The normalised float tensor ``(channels, input_size, input_size)`` of ``image``."""
        return self.normalize(self.pixels(image))

    def read(self, path: str | Path, digest: bool = False) -> LoadedImage:
        """Decode ``path`` for this preprocessing: JPEGs at the smallest DCT scale that still
        covers the crop (a 500-pixel photo at half size, a 12 MP one at 1/8)."""
        return read_image(path, self.input_size, self.channels, digest)

    def load(self, path: str | Path) -> torch.Tensor:
        """Read, decode and prepare one image file; raises ``InputError`` if it is unusable."""
        return self.prepare(self.read(path).image)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An ``L`` or ``RGB`` PIL image as a uint8 tensor ``(channels, H, W)``."""
    array = torch.from_numpy(np.array(image, dtype=np.uint8))
    return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)


def dataset_mean_std(pixels: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of uint8 crops ``pixels (n, C, H, W)``.

    For ``--normalization dataset``: images far from ImageNet's statistics (leaves on grey, ink on
    paper) are normalised with their own. Summed 256 images at a time, in float64.
    """
    if len(pixels) == 0:
        raise ValueError("no readable image to measure normalisation statistics on")
    channels = pixels.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(pixels), 256):
        chunk = pixels[start : start + 256].transpose(0, 1).reshape(channels, -1).double() / 255
        total += chunk.sum(dim=1)
        total_sq += (chunk**2).sum(dim=1)
    count = pixels.numel() // channels
    mean = total / count
    std = torch.sqrt(torch.clamp(total_sq / count - mean**2, min=1e-12))
    return tuple(mean.tolist()), tuple(std.tolist())
