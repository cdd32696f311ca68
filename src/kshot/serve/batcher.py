"""Micro-batching: the images of concurrent requests embedded in one forward pass.

Each request hands its prepared images and a function that turns their embeddings into its
answer; the batcher takes the requests queued (up to ``max_batch`` images, waiting at most
``max_wait_s`` after the first), runs one forward pass and every request's function on the
library's own thread, and wakes each request with its answer. While a pass runs, the next
requests queue up, so batches grow with the load. Written by hand: FastAPI and uvicorn have no
batching, and the servers that do (Triton, BentoML, LitServe) are whole servers of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from kshot.serve.metrics import Metrics


class Overloaded(Exception):
    """More images are queued than the server accepts."""


@dataclass
class _Job:
    pixels: torch.Tensor  # (n, C, H, W), prepared
    then: Callable[[np.ndarray], object]  # embeddings (n, D) -> the answer, on the library thread
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        name: str,
        forward: Callable[[torch.Tensor], np.ndarray],
        executor: Executor,
        metrics: Metrics,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
    ):
        self.name = name
        self.forward = forward
        self.executor = executor
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # images in self._jobs
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, pixels: torch.Tensor, then: Callable[[np.ndarray], object]):
        """``then(embeddings of pixels)``, computed in a batch with other requests' images."""
        if self._queued + len(pixels) > self.max_queue:
            raise Overloaded(f"{self._queued} images are already waiting")
        job = _Job(pixels, then, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_queued(self._queued + len(pixels))
        self._arrived.set()
        if self._queued >= self.max_batch:
            self._full.set()
        return await job.future

    def _set_queued(self, count: int) -> None:
        self._queued = count
        self.metrics.queue.labels(self.name).set(count)

    def _take(self) -> list[_Job]:
        batch, images = [], 0
        while self._jobs and (not batch or images + len(self._jobs[0].pixels) <= self.max_batch):
            job = self._jobs.popleft()
            self._set_queued(self._queued - len(job.pixels))
            if not job.future.done():  # a request cut off by its time limit needs no answer
                batch.append(job)
                images += len(job.pixels)
        if self._queued < self.max_batch:
            self._full.clear()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
            if self._queued < self.max_batch and self.max_wait_s > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait_s)
            batch = self._take()
            if not batch:
                continue
            outcomes = await loop.run_in_executor(self.executor, self._process, batch)
            for job, (ok, value) in zip(batch, outcomes, strict=True):
                if job.future.done():
                    continue
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)

    def _process(self, batch: list[_Job]) -> list[tuple[bool, object]]:
        """On the library's thread: one forward pass, then each request's own answer."""
        started = time.perf_counter()
        pixels = torch.cat([job.pixels for job in batch])
        try:
            vectors = self.forward(pixels)
        except Exception as exc:  # every request of the batch gets the failure
            return [(False, exc)] * len(batch)
        outcomes, start = [], 0
        for job in batch:
            part = vectors[start : start + len(job.pixels)]
            start += len(job.pixels)
            try:
                outcomes.append((True, job.then(part)))
            except Exception as exc:
                outcomes.append((False, exc))
        self.metrics.batch_size.labels(self.name).observe(len(pixels))
        self.metrics.forward.labels(self.name).observe(time.perf_counter() - started)
        return outcomes
