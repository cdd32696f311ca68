"""Shared fixtures: small image files made on the fly, and a seeded, untrained conv4 embedder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.embedder.model import Embedder, EmbedderConfig, build_embedder

# The tests run tiny models: one intra-op thread is as fast, and it avoids OpenMP threads spinning
# against each other (100x slower passes) when the machine is busy with other work.
torch.set_num_threads(1)


def pattern(seed: int, side: int = 56, cell: int = 8, noise: float = 0.0, noise_seed: int = 0):
    """A colour block pattern ``(side, side, 3)`` uint8: random cells of ``cell`` pixels, fixed by
    ``seed``, plus optional Gaussian noise (fixed by ``noise_seed``)."""
    cells = side // cell
    base = np.random.default_rng(seed).integers(0, 256, (cells, cells, 3)).astype(np.float64)
    base = np.kron(base, np.ones((cell, cell, 1)))
    if noise:
        base += np.random.default_rng(noise_seed).normal(0.0, noise, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def _make_image(
    path: Path,
    size: tuple[int, int] = (32, 24),
    color: tuple[int, ...] | int | None = None,
    mode: str = "RGB",
    seed: int | None = None,
    noise: float = 0.0,
    **save_kwargs,
) -> Path:
    """Write an image file (format from the suffix): a flat ``color``, a block pattern of
    ``seed`` (square, ``size[0]`` pixels), or random noise when neither is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is not None:
        image = Image.fromarray(pattern(seed, side=size[0], noise=noise, noise_seed=seed + 7919))
        image = image.convert(mode) if mode != "RGB" else image
    elif color is not None:
        image = Image.new(mode, size, color)
    else:
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        image = image.convert(mode) if mode != "RGB" else image
    image.save(path, **save_kwargs)
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return _make_image


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder of a few PNG and JPEG files, one text file and one sub-folder."""
    folder = tmp_path / "images"
    _make_image(folder / "red.png", color=(255, 0, 0))
    _make_image(folder / "green.JPG", color=(0, 255, 0), quality=95)
    _make_image(folder / "noise.jpeg", quality=90)
    _make_image(folder / "grey.png", color=128, mode="L")
    (folder / "notes.txt").write_text("not an image")
    _make_image(folder / "sub" / "inner.png", color=(0, 0, 255))
    return folder


@pytest.fixture
def make_class_images() -> Callable[..., dict[str, list[Path]]]:
    """``make(root, {label: count, ...}, first_seed=0)``: PNG files per class, each class a
    distinct block pattern and each image that pattern plus a little noise of its own."""

    def make(root: Path, counts: dict[str, int], first_seed: int = 0) -> dict[str, list[Path]]:
        result: dict[str, list[Path]] = {}
        for c, (label, count) in enumerate(counts.items()):
            seed = first_seed + c
            paths = []
            for i in range(count):
                array = pattern(seed, noise=6.0, noise_seed=1000 * seed + i)
                path = Path(root) / f"class{seed}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
                paths.append(path)
            result[label] = paths
        return result

    return make


def make_conv4(seed: int = 0, **overrides) -> Embedder:
    torch.manual_seed(seed)
    config = EmbedderConfig.for_backbone("conv4", **overrides)
    return build_embedder(config, pretrained=False).eval()


@pytest.fixture
def conv4_embedder() -> Embedder:
    """An untrained conv4 embedder (28 px grey, no head), the same weights in every test."""
    return make_conv4(0, embedding_dim=None)


@pytest.fixture
def conv4_factory() -> Callable[..., Embedder]:
    """``factory(seed=0, **config overrides)``: a seeded conv4 embedder in eval mode."""
    return make_conv4
