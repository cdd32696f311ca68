"""A library as the server holds it: opened once for reading and once for writing, each on a
thread of its own, queried in batches.

A library's SQLite connection and index belong to the thread that opened them, so each opening
runs every call on its own single-thread executor. Queries (and their forward passes) run on
the reader's; enrollments and forgetting on the writer's, so that a write's disk syncs and its
refit of the decision never hold up the queries queued behind it (with one thread for both,
a writer enrolling a few photos a second cost a quarter of the query throughput). The reader
notices the writer's changes, and those of other processes (``kshot enroll``), through SQLite's
``data_version``, as any reader does: no restart. The writer embeds on one thread, so that the
reader's forward passes keep the only OpenMP team (``embedder/runtime.py``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from kshot.embedder.runtime import one_thread_for_tensors, resolve_device
from kshot.serve.batcher import MicroBatcher
from kshot.serve.errors import ApiError
from kshot.serve.metrics import Metrics
from kshot.serve.settings import Settings

LOADING, READY, FAILED = "loading", "ready", "failed"


class ServedLibrary:
    def __init__(self, root: Path, settings: Settings, metrics: Metrics):
        self.root = Path(root)
        self.name = self.root.resolve().name  # "kshot serve ." serves it by its real name
        self.settings = settings
        self.metrics = metrics
        self.state = LOADING
        self.failure = ""
        self.library = None  # kshot.fewshot.library.Library, once loaded: the reader
        self.writer = None  # the same library opened for enrollments, unless read-only
        self.read_only = not os.access(self.root, os.W_OK)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"kshot-{self.name}")
        self.writing = ThreadPoolExecutor(
            1, thread_name_prefix=f"kshot-{self.name}-writer", initializer=one_thread_for_tensors
        )
        batching = settings.batching
        device = resolve_device(settings.device)
        self.batcher = MicroBatcher(
            self.name,
            self._forward,
            self.executor,
            metrics,
            batching.batch_size(device.type),
            batching.max_wait_s,
            settings.limits.max_queue,
        )

    async def load(self) -> None:
        """Open the library, load its model and run it once, on the library's thread."""
        self.batcher.start()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self._open)
            if not self.read_only:
                self.writer = await loop.run_in_executor(self.writing, self._open_writer)
        except Exception as exc:
            self.state, self.failure = FAILED, str(exc)
            raise
        self.state = READY

    def _open(self) -> None:
        from kshot.embedder.inference import embed_batch
        from kshot.fewshot.library import Library

        _import_solver()
        library = Library.open(self.root, device=self.settings.device)
        config = library.embedder.config.preprocess
        views = (1 + len(library.manifest.tta),) if library.manifest.tta else ()
        shape = (1, *views, config.channels, config.input_size, config.input_size)
        embed_batch(library.embedder, torch.zeros(shape))  # the first pass allocates: do it now
        self.library = library
        self._update_sizes()

    def _open_writer(self):
        from kshot.fewshot.library import Library

        _import_solver()
        return Library.open(self.root, device=self.settings.device)

    async def close(self) -> None:
        await self.batcher.stop()
        self.writing.shutdown(wait=True)
        self.executor.shutdown(wait=True)

    def _forward(self, pixels: torch.Tensor) -> np.ndarray:
        from kshot.embedder.inference import embed_batch

        return embed_batch(self.library.embedder, pixels)

    @property
    def preprocess(self):
        return self.library.embedder.config.preprocess

    def ready(self) -> ServedLibrary:
        if self.state == LOADING:
            raise ApiError(
                503, "loading", f"library {self.name!r} is still loading", {"Retry-After": "1"}
            )
        if self.state == FAILED:
            raise ApiError(
                503, "unavailable", f"library {self.name!r} failed to load: {self.failure}"
            )
        return self

    def writable(self) -> ServedLibrary:
        if self.read_only:
            raise ApiError(
                403, "read_only_library", f"library {self.name!r} is on read-only storage"
            )
        return self.ready()

    async def call(self, fn: Callable, *args):
        """``fn(library, *args)`` on the library's thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, lambda: fn(self.library, *args)
        )

    async def write(self, fn: Callable, *args):
        """``fn(library, *args)`` on the writer's thread, with the library opened for writing."""
        return await asyncio.get_running_loop().run_in_executor(
            self.writing, lambda: fn(self.writer, *args)
        )

    async def embed_then(self, pixels: torch.Tensor, then: Callable):
        """``then(library, embeddings)`` for prepared images, batched with other requests."""
        return await self.batcher.submit(pixels, lambda vectors: then(self.library, vectors))

    def _update_sizes(self) -> None:
        counts = self.library.classes()
        self.metrics.classes.labels(self.name).set(len(counts))
        self.metrics.images.labels(self.name).set(sum(n for _, n in counts))

    async def update_sizes(self) -> None:
        if self.state == READY:
            await self.call(lambda library: self._update_sizes())


def _import_solver() -> None:
    """Import what fitting a decision needs now, at start-up: 1.3 s, not at a request."""
    import sklearn.linear_model  # noqa: F401
