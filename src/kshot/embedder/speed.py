"""How fast and how big an embedder is: what ``kshot evaluate`` adds to its comparison so a
backbone can be picked by accuracy per millisecond, and what ``benchmarks/backbones.py`` tables."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from kshot.embedder.inference import embed_batch
from kshot.embedder.model import Embedder


def model_size(embedder: Embedder) -> dict:
    """Parameters, and megabytes of the tensors a model file holds."""
    state = embedder.state_dict().values()
    return {
        "parameters": sum(p.numel() for p in embedder.parameters()),
        "megabytes": sum(t.numel() * t.element_size() for t in state) / 1e6,
    }


def ms_per_image(
    embedder: Embedder,
    batch_size: int,
    repeats: int = 1,
    warmup: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Milliseconds per image of embedding random images in batches of ``batch_size``, in the
    embedder's precision on its device: best of ``repeats`` passes (after one warm-up pass),
    by ``clock`` (wall time; ``time.process_time`` counts only this process's CPU time, steadier
    on a shared machine). Decoding files is left out: it is the same for every backbone."""
    config = embedder.config.preprocess
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, config.channels, config.input_size, config.input_size)
    images = torch.randn(shape, generator=generator)
    if warmup:
        embed_batch(embedder, images)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        embed_batch(embedder, images)
        best = min(best, clock() - start)
    return 1000 * best / batch_size


def speed_report(embedder: Embedder) -> dict:
    """ms/image at batch 1 (best of 3) and batch 32 (one pass after a warm-up), and the size."""
    return {
        "precision": embedder.precision,
        "ms_per_image_batch1": ms_per_image(embedder, 1, repeats=3),
        "ms_per_image_batch32": ms_per_image(embedder, 32, repeats=1),
        **model_size(embedder),
    }
