"""Conv-4: the small from-scratch CNN of the few-shot literature, for small grey or colour images.

Four blocks of 3x3 convolution (64 filters), batch norm, ReLU and 2x2 max-pooling, then flattened
(Vinyals et al. 2016; Snell et al. 2017). Not in torchvision, hence written here.
"""

from __future__ import annotations

from torch import nn


def conv4(in_channels: int, width: int = 64) -> nn.Sequential:
    """``(N, in_channels, H, W)`` -> ``(N, width * (H // 16) * (W // 16))``."""
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels = width
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def conv4_feature_dim(width: int, input_size: int) -> int:
    """Length of the flattened output for square inputs of side ``input_size``."""
    if input_size < 16:
        raise ValueError(f"conv4 needs images of at least 16 pixels, not {input_size}")
    return width * (input_size // 16) ** 2
