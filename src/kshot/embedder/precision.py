"""Embedding in bfloat16 where it pays: ``fp32``, ``bf16`` or ``auto``.

``bf16`` runs the embedder under ``torch.autocast`` (weights in channels-last, see
``Embedder.for_inference``): matrix products and convolutions in bfloat16, reductions and the
final normalisation in float32, so the vectors stored stay float32. On a CPU it needs native
bfloat16 instructions (AVX-512 BF16 or AMX); elsewhere it is emulated and slower than fp32, so
asking for it there is an error.

``auto`` decides per backbone and machine from a measurement: a one-off timing (CPU seconds) of
the embedder on a few random images in both precisions, cached in
``~/.cache/kshot/precision.json`` (or ``$KSHOT_CACHE``). A measurement rather than a table: the
gain depends on the CPU (AMX or not), the thread count and the architecture (depthwise
convolutions gain least), and a table measured on one machine would be wrong on the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from kshot.errors import KshotError

PRECISIONS = ("fp32", "bf16")
# Mean cosine between fp32 and bf16 embeddings of the same photos below which the two are not
# mixed in one library.
MIN_MIXING_COSINE = 0.999
# ``auto`` takes bf16 when it is at least this much faster.
AUTO_MIN_SPEEDUP = 1.2
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The native bfloat16 instruction sets this CPU announces (empty off Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return flags & set(CPU_BF16_FLAGS)


def check_precision(precision: str, device: torch.device) -> None:
    """``KshotError`` unless ``precision`` runs natively on ``device``."""
    if precision not in PRECISIONS:
        raise KshotError(f"unknown precision {precision!r}: use fp32, bf16 or auto")
    if precision == "fp32":
        return
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise KshotError(f"{device} has no bfloat16 support: use --precision fp32")
        return
    if not torch.backends.mkldnn.is_available() or not cpu_bf16_flags():
        raise KshotError(
            "--precision bf16: this CPU has no native bfloat16 instructions (neither "
            f"{' nor '.join(CPU_BF16_FLAGS)} in /proc/cpuinfo), where bf16 runs slower than "
            "fp32: use --precision fp32 (or auto, which picks fp32 here)"
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a forward pass in ``precision`` runs in."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mean_cosine(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and lowest cosine between the rows of ``a`` and ``b`` (unit vectors or not)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cosines = np.sum(a * b, axis=1)
    return float(cosines.mean()), float(cosines.min())


def _cache_file() -> Path:
    root = os.environ.get("KSHOT_CACHE") or Path.home() / ".cache" / "kshot"
    return Path(root) / "precision.json"


def _machine() -> str:
    threads = torch.get_num_threads()
    return (
        f"{platform.processor() or platform.machine()}|{threads} threads|torch {torch.__version__}"
    )


@contextlib.contextmanager
def _embedding_mode(embedder, precision: str) -> Iterator[None]:
    before = embedder.precision
    embedder.precision = precision
    try:
        yield
    finally:
        embedder.precision = before


def measure(embedder, images: torch.Tensor, repeats: int = 2) -> dict:
    """Best-of-``repeats`` CPU seconds of this process per batch in fp32 and in bf16, and the
    two embeddings' mean cosine, for ``images (N, C, H, W)`` (one warm-up pass each,
    uncounted). CPU time rather than wall time: on a machine busy with other work, wall time
    varied more than 10x between passes of the same model; CPU time agreed within 17% across
    two runs (BENCHMARKS.md)."""
    from kshot.embedder.inference import embed_batch

    result = {}
    vectors = {}
    for precision in PRECISIONS:
        with _embedding_mode(embedder, precision):
            vectors[precision] = embed_batch(embedder, images)
            times = []
            for _ in range(repeats):
                start = time.process_time()
                embed_batch(embedder, images)
                times.append(time.process_time() - start)
        result[f"{precision}_s"] = min(times)
    result["cosine"], result["lowest_cosine"] = mean_cosine(vectors["fp32"], vectors["bf16"])
    return result


def choose_auto(embedder, device: torch.device) -> str:
    """``bf16`` where it runs natively, is ``AUTO_MIN_SPEEDUP`` times faster for this backbone
    and keeps the embeddings (mean cosine >= ``MIN_MIXING_COSINE``); else ``fp32``. The
    measurement (4 random images, about 6 forward passes) is made once per backbone, input
    size and machine, then read from the cache."""
    try:
        check_precision("bf16", device)
    except KshotError:
        return "fp32"
    config = embedder.config
    key = f"{config.backbone}|{config.preprocess.input_size}|{device.type}|{_machine()}"
    path = _cache_file()
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        generator = torch.Generator().manual_seed(0)
        side, channels = config.preprocess.input_size, config.preprocess.channels
        images = torch.randn(4, channels, side, side, generator=generator)
        cache[key] = measure(embedder, images)
        with contextlib.suppress(OSError):  # a read-only home: measure again next time
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=1), encoding="utf-8")
    found = cache[key]
    faster = found["fp32_s"] >= AUTO_MIN_SPEEDUP * found["bf16_s"]
    return "bf16" if faster and found["cosine"] >= MIN_MIXING_COSINE else "fp32"


def resolve(precision: str, embedder, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (``auto`` measured); ``KshotError`` for bf16 where
    it is not native."""
    if precision == "auto":
        return choose_auto(embedder, device)
    check_precision(precision, device)
    return precision


def check_mixing(embedder, paths, built_with: str, asked: str, sample: int = 8) -> str:
    """Before embedding with ``asked`` into a library built with ``built_with``: the mean cosine
    between fp32 and bf16 embeddings of up to ``sample`` of ``paths``, as a sentence;
    ``KshotError`` below ``MIN_MIXING_COSINE`` (nothing is written then)."""
    from kshot.embedder.inference import embed_files

    vectors = {}
    for precision in PRECISIONS:
        with _embedding_mode(embedder, precision):
            embedded = embed_files(embedder, list(paths)[:sample])
        vectors[precision] = embedded.vectors
    if not len(vectors["fp32"]):
        raise KshotError("no readable photo to compare fp32 and bf16 embeddings on")
    mean, lowest = mean_cosine(vectors["fp32"], vectors["bf16"])
    said = (
        f"fp32 vs bf16 embeddings of {len(vectors['fp32'])} of these photos: mean cosine "
        f"{mean:.5f} (lowest {lowest:.5f})"
    )
    if mean < MIN_MIXING_COSINE:
        raise KshotError(
            f"{said}, below {MIN_MIXING_COSINE}: this library was built with {built_with}, and "
            f"{asked} embeddings would not be comparable with its own; use --precision {built_with}"
        )
    return f"{said}: {asked} embeddings mix with this {built_with} library"
