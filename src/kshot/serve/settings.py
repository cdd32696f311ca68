"""What a server is started with: its libraries, keys and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kshot.embedder.images import MAX_PIXELS
from kshot.serve.auth import Keys


@dataclass(frozen=True)
class Limits:
    """Per request: its body's bytes, images and seconds; per image: pixels. Requests beyond
    ``max_in_flight`` at once are refused with 503, queued images beyond ``max_queue`` with 429,
    rather than left to wait."""

    max_request_bytes: int = 64 * 1024 * 1024
    max_images: int = 64
    max_pixels: int = MAX_PIXELS
    request_seconds: float = 60.0
    max_queue: int = 512
    max_in_flight: int = 512


@dataclass(frozen=True)
class Batching:
    """A forward pass takes up to ``max_batch`` queued images, waiting at most ``max_wait_s``
    after the first for more to arrive. By default it waits for none: requests that arrive while
    a pass runs queue up and make the next batch, so batches grow with the load anyway, and a
    lone request pays no wait.

    ``max_batch`` defaults to 32 on a GPU, where a batch costs little more than one image, and
    to 8 on a CPU, where an image in a batch still costs less CPU time than one alone (Lite0's
    bare forward on 2 cores: 25 ms of CPU alone, 15 in a batch of 16), and 16 clients of a
    2-core server were answered fastest with batches of 8 (BENCHMARKS.md).
    """

    max_batch: int | None = None
    max_wait_s: float = 0.0

    def batch_size(self, device_type: str) -> int:
        if self.max_batch is not None:
            return self.max_batch
        return 32 if device_type == "cuda" else 8


@dataclass(frozen=True)
class Settings:
    libraries: tuple[Path, ...]
    keys: Keys = field(default_factory=Keys)
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)
    device: str = "auto"
