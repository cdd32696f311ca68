"""The micro-batcher: concurrent requests share forward passes, each gets its own answer."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from kshot.serve.batcher import MicroBatcher, Overloaded
from kshot.serve.metrics import Metrics


def run(coroutine):
    return asyncio.run(coroutine)


class Recorder:
    """A "forward pass" that records its batch sizes: each image's vector is its own value."""

    def __init__(self, fail_on: float | None = None):
        self.sizes: list[int] = []
        self.fail_on = fail_on

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        self.sizes.append(len(pixels))
        if self.fail_on is not None and (pixels == self.fail_on).any():
            raise RuntimeError("the model failed")
        return pixels.reshape(len(pixels), -1)[:, :1].numpy().copy()


def make(forward, **options) -> tuple[MicroBatcher, ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1)
    settings = {"max_batch": 8, "max_wait_s": 0.05, "max_queue": 100, **options}
    return MicroBatcher("lib", forward, executor, Metrics(), **settings), executor


def images(*values: float) -> torch.Tensor:
    return torch.tensor(values).reshape(-1, 1, 1, 1)


def test_concurrent_requests_share_one_pass_and_get_their_own_answers():
    forward = Recorder()

    async def main():
        batcher, executor = make(forward)
        batcher.start()
        answers = await asyncio.gather(
            *[batcher.submit(images(i, i + 0.5), lambda v: v[:, 0].tolist()) for i in range(3)]
        )
        await batcher.stop()
        executor.shutdown()
        return answers

    assert run(main()) == [[0, 0.5], [1, 1.5], [2, 2.5]]
    assert forward.sizes == [6]  # three requests, one pass


def test_batches_hold_at_most_max_batch_images_and_a_full_one_goes_at_once():
    forward = Recorder()

    async def main():
        batcher, executor = make(forward, max_batch=4, max_wait_s=5.0)
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*[batcher.submit(images(i, i), lambda v: v) for i in range(4)])
        waited = loop.time() - started
        await batcher.stop()
        executor.shutdown()
        return waited

    assert run(main()) < 2.5  # never the 5 s wait: each batch was full
    assert forward.sizes == [4, 4]


def test_failures_reach_only_their_own_requests():
    forward = Recorder(fail_on=99.0)

    def explode(vectors):
        raise ValueError("this request's own failure")

    async def main():
        batcher, executor = make(forward)
        batcher.start()
        outcomes = await asyncio.gather(
            batcher.submit(images(1), lambda v: "fine"),
            batcher.submit(images(2), explode),
            return_exceptions=True,
        )
        failed_pass = await asyncio.gather(
            batcher.submit(images(99), lambda v: v), return_exceptions=True
        )
        after = await batcher.submit(images(3), lambda v: "still serving")
        await batcher.stop()
        executor.shutdown()
        return outcomes, failed_pass, after

    (fine, own), (model_failure,), after = run(main())
    assert fine == "fine" and isinstance(own, ValueError)
    assert isinstance(model_failure, RuntimeError) and after == "still serving"


def test_a_full_queue_refuses_and_an_abandoned_request_is_skipped():
    forward = Recorder()

    async def main():
        batcher, executor = make(forward, max_queue=3, max_wait_s=0.2)
        with pytest.raises(Overloaded):
            await batcher.submit(images(1, 2, 3, 4), lambda v: v)
        abandoned = asyncio.ensure_future(batcher.submit(images(7), lambda v: v))
        await asyncio.sleep(0)
        abandoned.cancel()
        batcher.start()
        answer = await batcher.submit(images(8), lambda v: v[:, 0].tolist())
        await batcher.stop()
        executor.shutdown()
        return answer

    assert run(main()) == [8.0]
    assert forward.sizes == [1]  # the abandoned image was never embedded
