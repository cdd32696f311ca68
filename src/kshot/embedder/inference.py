"""Embedding image files in batches: bad files are reported, good ones go on."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kshot.embedder.model import Embedder
from kshot.embedder.preprocess import PreprocessConfig
from kshot.embedder.runtime import tune_allocator
from kshot.embedder.tta import FLIPS, check_views, mean_of_views, view_pixels, with_flips
from kshot.errors import InputError


@dataclass
class Embedded:
    """The result of embedding a list of files.

    ``vectors[j]`` is the embedding of ``paths[indices[j]]``; ``errors`` holds ``(i, error)``
    for each file ``paths[i]`` that could not be read.
    """

    vectors: np.ndarray
    indices: list[int] = field(default_factory=list)
    sha256: list[str | None] = field(default_factory=list)
    errors: list[tuple[int, InputError]] = field(default_factory=list)


class _ImageFiles(Dataset):
    """Each file decoded and prepared (``pixels=True``: the uint8 crop, not normalised;
    ``views``: the stacked TTA views ``(1 + V, C, H, W)``, see :mod:`kshot.embedder.tta`)."""

    def __init__(
        self,
        paths: Sequence[Path],
        config: PreprocessConfig,
        digest: bool,
        pixels: bool = False,
        views: tuple[str, ...] = (),
    ):
        self.paths = list(paths)
        self.config = config
        self.digest = digest
        self.views = views
        if views:
            self.prepare = self._views
        else:
            self.prepare = config.pixels if pixels else config.prepare

    def _views(self, image) -> torch.Tensor:
        return self.config.normalize(view_pixels(self.config, image, self.views))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            loaded = self.config.read(self.paths[i], self.digest)
        except InputError as exc:
            return i, None, None, exc
        return i, self.prepare(loaded.image), loaded.sha256, None


def _collate(items):
    good = [item for item in items if item[3] is None]
    batch = torch.stack([item[1] for item in good]) if good else None
    errors = [(item[0], item[3]) for item in items if item[3] is not None]
    return [item[0] for item in good], batch, [item[2] for item in good], errors


def _batches(
    paths: Sequence[str | Path],
    config: PreprocessConfig,
    batch_size: int,
    workers: int,
    digest: bool,
    pixels: bool = False,
    views: tuple[str, ...] = (),
) -> Iterable:
    """Batches of ``(indices, images (B, C, H, W) or None, sha256s, [(index, InputError)])``;
    with ``views``, images are ``(B, 1 + V, C, H, W)``."""
    files = _ImageFiles([Path(p) for p in paths], config, digest, pixels, views)
    if workers == 0:  # in this process, sparing the DataLoader's 0.3 ms per call
        return (
            _collate([files[i] for i in range(start, min(start + batch_size, len(files)))])
            for start in range(0, len(files), batch_size)
        )
    return DataLoader(files, batch_size=batch_size, num_workers=workers, collate_fn=_collate)


def load_pixels(
    config: PreprocessConfig, paths: Sequence[str | Path]
) -> tuple[torch.Tensor, list[int], list[tuple[int, InputError]]]:
    """Decode and crop ``paths``: ``(uint8 crops (n, C, H, W), indices kept, errors)``;
    ``config.normalize`` turns the crops into the embedder's input."""
    chunks, kept, failed = [], [], []
    for indices, batch, _, errors in _batches(paths, config, 256, 0, False, pixels=True):
        if batch is not None:
            chunks.append(batch)
            kept += indices
        failed += errors
    size = (0, config.channels, config.input_size, config.input_size)
    return (torch.cat(chunks) if chunks else torch.zeros(size, dtype=torch.uint8)), kept, failed


@torch.inference_mode()
def embed_batch(embedder: Embedder, images: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` preprocessed images -> ``(N, D)`` float32 unit vectors.

    ``(N, V, C, H, W)``: V views of each image (TTA), run as one batch of N * V and averaged.
    """
    device = next(embedder.parameters()).device
    views = images.shape[1] if images.ndim == 5 else 0
    if views:
        images = images.flatten(0, 1)
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    vectors = embedder(images)
    if views:
        vectors = mean_of_views(vectors, views)
    return vectors.float().cpu().numpy()


@torch.inference_mode()
def _in_chunks(
    embedder: Embedder, network: Callable, width: int, pixels: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``network`` over uint8 crops ``pixels (n, C, H, W)``, normalised a batch at a time
    (only one batch is ever held as floats): ``(n, width)``, on the embedder's device."""
    device = next(embedder.parameters()).device
    normalize = embedder.config.preprocess.normalize
    outputs = [
        network(normalize(pixels[i : i + batch_size]).to(device))
        for i in range(0, len(pixels), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.zeros((0, width))


def embed_pixels(
    embedder: Embedder, pixels: torch.Tensor, batch_size: int = 64, tta: Sequence[str] = ()
) -> np.ndarray:
    """uint8 crops ``(n, C, H, W)`` -> ``(n, D)`` float32 unit vectors, in eval mode.

    ``tta``: flip views (``hflip``, ``vflip``) averaged with each crop (see
    :mod:`kshot.embedder.tta`); ``full`` needs the whole image, so only :func:`embed_files`
    takes it."""
    views = check_views(tta, tuple(FLIPS))
    embedder.eval()

    def averaged(images: torch.Tensor) -> torch.Tensor:
        stacked = with_flips(images, views).flatten(0, 1)
        return mean_of_views(embedder(stacked), 1 + len(views))

    network = averaged if views else embedder
    vectors = _in_chunks(embedder, network, embedder.embedding_dim, pixels, batch_size)
    return vectors.float().cpu().numpy()


def backbone_features(
    embedder: Embedder, pixels: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """uint8 crops ``(n, C, H, W)`` -> the backbone's features ``(n, feature_dim)``, with the
    backbone in eval mode (as a frozen backbone trains)."""
    embedder.backbone.eval()
    width = embedder.feature_dim
    return _in_chunks(embedder, embedder.backbone, width, pixels, batch_size).cpu()


def embed_files(
    embedder: Embedder,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    workers: int = 0,
    digest: bool = False,
    on_progress: Callable[[int], None] | None = None,
    tta: Sequence[str] = (),
) -> Embedded:
    """Embed ``paths`` with ``embedder`` (in eval mode); ``digest`` adds each file's SHA-256.

    ``workers`` > 0 decodes in that many background processes while the model runs.
    ``on_progress(n)`` is called after each batch with the number of files it held.
    ``tta``: views averaged with each image's own (see :mod:`kshot.embedder.tta`): each batch
    holds ``batch_size`` images, run as one batch of all their views.
    """
    views = check_views(tta)
    tune_allocator()
    if embedder.training:  # walking the modules costs ~1 ms per call
        embedder.eval()
    result = Embedded(np.zeros((0, embedder.embedding_dim), dtype=np.float32))
    chunks = [result.vectors]
    batches = _batches(paths, embedder.config.preprocess, batch_size, workers, digest, views=views)
    for indices, batch, shas, errors in batches:
        if batch is not None:
            chunks.append(embed_batch(embedder, batch))
            result.indices += indices
            result.sha256 += shas
        result.errors += errors
        if on_progress is not None:
            on_progress(len(indices) + len(errors))
    result.vectors = np.concatenate(chunks)
    return result
