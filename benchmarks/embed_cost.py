"""What an embedder costs per image, with test-time augmentation views, against its bare forward.

For one backbone name (an ensemble ``a+b`` too) and a tuple of TTA views, on PlantVillage's
500x500 JPEGs read in place, at batch sizes 1 and 32, in ONE run:

- pipeline: ``embed_files(paths, batch_size=B, tta=views)``, end to end (decode, crop, the views,
  the forward pass of all views, the averaging), in ms per image;
- bare: the embedder alone (``embedder(x)`` under ``torch.inference_mode()``, channels-last as
  kshot runs it) on an already prepared ``(B, 3, S, S)`` tensor: one view, no decoding.

Each timed repeat runs the bare pass and the pipeline back to back, so both see the same machine
state; the median and the best (minimum) over repeats are reported, and "x bare" is pipeline /
bare for each. On a busy machine the best is the steadier estimate of what each costs. The
embedders have their installed ImageNet weights where there are any (timings do not depend on
weight values).

    python benchmarks/embed_cost.py                                  # the table in BENCHMARKS.md
    python benchmarks/embed_cost.py --backbones mobilenet_v2 --tta hflip,vflip --repeats 3

``measure`` is importable: ``from benchmarks.embed_cost import measure``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kshot.embedder.backbones import get_backbone
from kshot.embedder.images import class_folders
from kshot.embedder.inference import embed_files
from kshot.embedder.model import Embedder, EmbedderConfig, build_embedder
from kshot.embedder.runtime import tune_allocator

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "plantvillage-leaf38"
BACKBONES = ("efficientnet_lite0", "mobilenet_v2", "efficientnet_lite0+mobilenet_v2")
VIEW_SETS = ((), ("hflip",))
BATCH_SIZES = (1, 32)


@dataclass(frozen=True)
class Row:
    backbone: str
    tta: str  # the views joined with "+", or "none"
    batch: int
    bare_ms: float  # per image, median over repeats
    pipeline_ms: float
    bare_best_ms: float  # per image, minimum over repeats
    pipeline_best_ms: float

    @property
    def ratio(self) -> float:
        return self.pipeline_ms / self.bare_ms

    @property
    def best_ratio(self) -> float:
        return self.pipeline_best_ms / self.bare_best_ms


def photos(data: Path, count: int) -> list[Path]:
    """``count`` JPEGs taken round-robin across the class folders, read once (page cache)."""
    folders = [images for _, images in class_folders(data) if images]
    picked = [folder[i] for i in range(count) for folder in folders if i < len(folder)][:count]
    for path in picked:
        path.read_bytes()
    return picked


def embedder_for(backbone: str) -> Embedder:
    pretrained = get_backbone(backbone).pretrained is not None
    embedder = build_embedder(EmbedderConfig.for_backbone(backbone), pretrained=pretrained)
    return embedder.for_inference(torch.device("cpu"))


def measure(
    backbone: str,
    tta: Sequence[str],
    files: Sequence[Path],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = 5,
    embedder: Embedder | None = None,
) -> list[Row]:
    """ms per image of ``embed_files(tta=...)`` and of the bare forward, per batch size."""
    embedder = embedder or embedder_for(backbone)
    size = embedder.config.preprocess.input_size
    rows = []
    for batch in batch_sizes:
        prepared = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        chunks = [files[(i * batch) % len(files) :][:batch] for i in range(repeats + 1)]
        bare, pipeline = [], []
        with torch.inference_mode():
            embedder(prepared)  # warm-up
        embed_files(embedder, chunks[0], batch_size=batch, tta=tta)
        for chunk in chunks[1:]:
            start = time.perf_counter()
            with torch.inference_mode():
                embedder(prepared)
            middle = time.perf_counter()
            embed_files(embedder, chunk, batch_size=batch, tta=tta)
            end = time.perf_counter()
            bare.append((middle - start) / batch)
            pipeline.append((end - middle) / len(chunk))
        rows.append(
            Row(
                backbone,
                "+".join(tta) or "none",
                batch,
                1000 * statistics.median(bare),
                1000 * statistics.median(pipeline),
                1000 * min(bare),
                1000 * min(pipeline),
            )
        )
    return rows


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| backbone | TTA views | batch | bare ms/img median (best) "
        "| embed_files ms/img median (best) | x bare median (best) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.backbone} | {row.tta} | {row.batch} "
            f"| {row.bare_ms:.1f} ({row.bare_best_ms:.1f}) "
            f"| {row.pipeline_ms:.1f} ({row.pipeline_best_ms:.1f}) "
            f"| {row.ratio:.2f} ({row.best_ratio:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated")
    parser.add_argument(
        "--tta", action="append", help="views joined by ',' (repeatable; default: none and hflip)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    view_sets = [tuple(v for v in s.split(",") if v) for s in args.tta] if args.tta else VIEW_SETS
    tune_allocator()
    files = photos(args.data, max(BATCH_SIZES) * (args.repeats + 1))
    load_before = os.getloadavg()
    rows = []
    for backbone in [b for b in args.backbones.split(",") if b]:
        embedder = embedder_for(backbone)
        for views in view_sets:
            rows += measure(backbone, views, files, repeats=args.repeats, embedder=embedder)
            print(table(rows[-len(BATCH_SIZES) :]).splitlines()[-1], flush=True)
    load_after = os.getloadavg()
    print(
        f"\ntorch threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
        f"1-min load {load_before[0]:.1f} before, {load_after[0]:.1f} after\n"
    )
    print(table(rows))
    if args.json:
        data = [asdict(r) | {"ratio": r.ratio, "best_ratio": r.best_ratio} for r in rows]
        args.json.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
