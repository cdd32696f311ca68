"""Training-time augmentation of uint8 image tensors, each transform with its own probability.

Built from torchvision's ``transforms.v2`` (imported here only, never on the query path). The
transforms work on the ``(C, H, W)`` uint8 crops the training set keeps in memory, before
normalisation. Presets name the usual cases; any field can be set on top of a preset
(``kshot train --augment photo --augment-option rotation=90``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from kshot.assignments import parse_assignments
from kshot.errors import KshotError


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.0  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip
    rotation: float = 0.0  # a turn drawn uniformly in [-rotation, rotation] degrees
    rotation_p: float = 0.0
    hue: float = 0.0  # hue shift in [-hue, hue] (a fraction of the colour wheel, at most 0.5)
    saturation: float = 0.0  # saturation factor in [1 - s, 1 + s]
    value: float = 0.0  # value (brightness of HSV) factor in [1 - v, 1 + v]
    hsv_p: float = 0.0
    brightness: float = 0.0  # brightness factor in [1 - b, 1 + b]
    contrast: float = 0.0  # contrast factor in [1 - c, 1 + c]
    brightness_contrast_p: float = 0.0
    shift: float = 0.0  # a move of up to this fraction of the side, the edges repeated
    zoom: float = 0.0  # a crop of a fraction in [1 - zoom, 1] of the area, scaled back up
    crop_p: float = 0.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value < 0:
                raise KshotError(f"augmentation {field.name} must not be negative, not {value}")
            if field.name.endswith(("_p", "flip")) and value > 1:
                raise KshotError(f"augmentation {field.name} is a probability, not {value}")
        if self.hue > 0.5:
            raise KshotError(f"augmentation hue is at most 0.5, not {self.hue}")
        if self.shift >= 0.5 or self.zoom >= 1:
            raise KshotError("augmentation shift is under 0.5 (of the side), zoom under 1")

    @property
    def active(self) -> bool:
        """Whether any transform can change an image."""
        return bool(
            self.hflip
            or self.vflip
            or (self.rotation and self.rotation_p)
            or ((self.hue or self.saturation or self.value) and self.hsv_p)
            or ((self.brightness or self.contrast) and self.brightness_contrast_p)
            or ((self.shift or self.zoom) and self.crop_p)
        )

    def with_options(self, options: list[str]) -> AugmentConfig:
        """This config with ``name=value`` strings laid over it."""
        names = {field.name for field in dataclasses.fields(self)}
        changes = parse_assignments(options, "augmentation option", "rotation=90", names)
        return dataclasses.replace(self, **changes)


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    # Leaves, skin, cells, satellite tiles: photos taken from above have no upright, so any turn
    # and either flip is another plausible photo; light and camera vary in colour and exposure.
    "photo": AugmentConfig(
        hflip=0.5,
        vflip=0.5,
        rotation=180,
        rotation_p=0.5,
        hue=0.02,
        saturation=0.2,
        value=0.2,
        hsv_p=0.5,
        brightness=0.2,
        contrast=0.2,
        brightness_contrast_p=0.5,
    ),
    # Objects with an upright (characters, products): small turns, mirror images, exposure.
    "upright": AugmentConfig(
        hflip=0.5,
        rotation=15,
        rotation_p=0.5,
        brightness=0.2,
        contrast=0.2,
        brightness_contrast_p=0.5,
    ),
}


def augment_config(preset: str, options: list[str] | None = None) -> AugmentConfig:
    """The preset ``preset`` with ``name=value`` ``options`` laid over it."""
    try:
        config = AUGMENT_PRESETS[preset]
    except KeyError:
        known = ", ".join(AUGMENT_PRESETS)
        raise KshotError(f"unknown augmentation preset {preset!r}; known: {known}") from None
    return config.with_options(options or [])


def build_augment(config: AugmentConfig, side: int | None = None) -> nn.Module:
    """``(C, H, W)`` uint8 -> ``(C, H, W)`` uint8, randomly transformed as ``config`` says
    (``shift`` and ``zoom`` need the images' ``side``: H = W = side)."""
    from torchvision.transforms import v2

    steps: list[nn.Module] = []
    if (config.shift or config.zoom) and config.crop_p:
        if side is None:
            raise ValueError("shift and zoom need the images' side")
        moves: list[nn.Module] = []
        if config.zoom:
            moves.append(v2.RandomResizedCrop(side, scale=(1 - config.zoom, 1), ratio=(1, 1)))
        if config.shift:  # no fill colour to guess: the border is repeated
            pad = max(1, round(config.shift * side))
            moves.append(v2.RandomCrop(side, padding=pad, padding_mode="edge"))
        steps.append(v2.RandomApply(moves, p=config.crop_p))
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip(config.hflip))
    if config.vflip:
        steps.append(v2.RandomVerticalFlip(config.vflip))
    if config.rotation and config.rotation_p:
        turn = v2.RandomRotation(config.rotation, v2.InterpolationMode.BILINEAR)
        steps.append(v2.RandomApply([turn], p=config.rotation_p))
    if (config.hue or config.saturation or config.value) and config.hsv_p:
        hsv = v2.ColorJitter(brightness=config.value, saturation=config.saturation, hue=config.hue)
        steps.append(v2.RandomApply([hsv], p=config.hsv_p))
    if (config.brightness or config.contrast) and config.brightness_contrast_p:
        jitter = v2.ColorJitter(brightness=config.brightness, contrast=config.contrast)
        steps.append(v2.RandomApply([jitter], p=config.brightness_contrast_p))
    return v2.Compose(steps) if steps else nn.Identity()


def augment_batch(augment: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Each image of ``images (N, C, H, W)`` uint8 augmented on its own draw."""
    return torch.stack([augment(image) for image in images])
