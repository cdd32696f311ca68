"""Second-order (bilinear) pooling of a feature map: the mean outer product of its channel
vectors over the positions, after a fixed random projection of the channels.

Mean pooling keeps how strongly each channel fired over the image; a disease's texture (spots
with a halo, rings, mould along the veins) is also which channels fire *together* at one place,
which the channels' Gram matrix keeps (bilinear CNNs, Lin et al. 2015). The channels are first
projected to ``dim`` by a fixed Gaussian matrix (the simplest of the compact bilinear poolings of
Gao et al. 2016), so a 112-channel map gives 2,080 numbers, not 6,328; then each entry takes a
signed square root, which keeps a few strong co-activations from drowning the rest (Lin et al.).
Joined to the multi-level features with no training, it gained 0.2 to 2.3 points in every
setting measured on new PlantVillage classes and on Omniglot (BENCHMARKS.md, "Second-order
features").

Neither torch, torchvision nor timm has this pooling (timm's adaptive pools are average and max),
so it is written here. The projection is drawn from a seeded torch generator when the model is
built, then saved in its model file like a weight: a library keeps the projection it embedded
with, whatever a later torch draws, and the library's model hash covers it. Pretrained weights
do not hold it; :func:`drawn_tensors` gives what the loader fills in for them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

# Keeps the square root's gradient finite at 0 (1 / (2 sqrt(EPS))).
EPS = 1e-6


def second_order_width(dim: int = 64) -> int:
    """Numbers :class:`SecondOrderPool` gives for ``dim`` projected channels: the upper triangle."""
    return dim * (dim + 1) // 2


class SecondOrderPool(nn.Module):
    """``(N, C, H, W)`` -> ``(N, dim (dim + 1) / 2)``: the upper triangle of the projected
    channels' mean outer product, signed square root of each entry."""

    def __init__(self, channels: int, dim: int = 64, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(channels, dim, generator=generator) / dim**0.5
        rows, cols = torch.triu_indices(dim, dim)
        self.register_buffer("projection", projection)
        self.register_buffer("upper", rows * dim + cols, persistent=False)
        self.out_dim = second_order_width(dim)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        # in fp32 under bf16 autocast too: sums of 196 products lose small entries in bf16
        with _without_autocast(maps.device.type):
            x = maps.float().flatten(2).transpose(1, 2) @ self.projection  # (N, H W, dim)
            gram = x.transpose(1, 2) @ x / x.shape[1]  # (N, dim, dim)
        upper = gram.flatten(1)[:, self.upper]
        return torch.sign(upper) * torch.sqrt(upper.abs() + EPS)


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off where it is on (the meta device, where shapes are worked out, has
    none)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def drawn_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state entries of ``model`` that its own :class:`SecondOrderPool` modules drew, by
    state-dict key: weights from elsewhere (ImageNet's) cannot hold them."""
    return {
        f"{name}.projection": module.projection
        for name, module in model.named_modules()
        if isinstance(module, SecondOrderPool)
    }
