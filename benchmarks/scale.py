"""A library at scale, per index kind: enrollment cost per image, query latency, recall@10 against
exact search, bytes per vector, and ``kshot classes``' wall time.

The vectors are real embeddings, not i.i.d. random ones: the PlantVillage photos of
``../shared/data/plantvillage-leaf38`` through EfficientNet-Lite0 (ImageNet weights, as installed)
up to its last 7x7x1280 feature map, projected to 128 dimensions by a fixed random orthogonal
matrix. Each photo gives 225 vectors, the mean of every window of 3x3 to 7x7 cells of its map
(crops taken in feature space: projection and mean commute, so a window is the projected
embedding of that crop's features), made unit length. The windows of 90% of the photos fill the
library, labelled by the photo's class; those of the other 10% are the queries.

Each library is a real kshot library (``Library.create``; the catalogue filled in batches, the
index built and saved by ``compact``). "enroll" is the write path of one enrollment after the
embedding (one SQLite transaction under the lock, the index caught up in memory), the median of
``--enrolls`` single enrollments; "fold" is one save of the whole index, which a writer does every
``FOLD_AFTER`` changes, so it adds fold/FOLD_AFTER per image. Both are compared, as a ratio, with
the same measures on an empty library of that kind, in the same run.

    nice python benchmarks/scale.py --sizes 10000 100000 --cache /tmp/pv-maps.npz
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "plantvillage-leaf38"
DIM, QUERIES, SEED = 128, 200, 0
MIN_CELLS = 3  # the smallest window side, in feature-map cells (--min-cells)
WIDER = {"hnsw": ("hnsw_ef_search", 1024), "ivfpq": ("ivf_nprobe", 64)}


def feature_maps(cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """``(maps (n, 7, 7, DIM) float32, labels (n,) class index)`` of every photo."""
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        return stored["maps"], stored["labels"]
    import torch

    from kshot.embedder.images import class_folders
    from kshot.embedder.inference import load_pixels
    from kshot.embedder.model import EmbedderConfig, build_embedder

    folders = [(folder, images) for folder, images in class_folders(DATA) if images]
    paths = [path for _, images in folders for path in images]
    labels = np.array([c for c, (_, images) in enumerate(folders) for _ in images])
    embedder = build_embedder(EmbedderConfig.for_backbone("efficientnet_lite0"), pretrained=True)
    embedder.eval()
    pixels, kept, _ = load_pixels(embedder.config.preprocess, paths)
    projection = np.linalg.qr(np.random.default_rng(SEED).normal(size=(1280, DIM)))[0]
    maps = []
    with torch.inference_mode():
        for start in range(0, len(pixels), 32):
            batch = embedder.config.preprocess.normalize(pixels[start : start + 32])
            features = embedder.backbone.extract_features(batch)  # (b, 1280, 7, 7)
            maps.append(features.permute(0, 2, 3, 1).numpy() @ projection.astype(np.float32))
    maps, labels = np.concatenate(maps).astype(np.float32), labels[kept]
    if cache is not None:
        np.savez(cache, maps=maps, labels=labels)
    return maps, labels


def windows(maps: np.ndarray, min_cells: int = MIN_CELLS) -> np.ndarray:
    """Unit mean vectors of every window of at least ``min_cells`` cells a side:
    ``(n * windows, DIM)``, a photo's windows together (summed-area tables)."""
    n, side = maps.shape[0], maps.shape[1]
    table = np.zeros((n, side + 1, side + 1, maps.shape[3]), np.float64)
    table[:, 1:, 1:] = maps.cumsum(1).cumsum(2)
    out = []
    for h in range(min_cells, side + 1):
        for w in range(min_cells, side + 1):
            for y in range(side - h + 1):
                for x in range(side - w + 1):
                    total = (
                        table[:, y + h, x + w]
                        - table[:, y, x + w]
                        - table[:, y + h, x]
                        + table[:, y, x]
                    )
                    out.append(total.astype(np.float32))
    vectors = np.stack(out, axis=1).reshape(-1, maps.shape[3]).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # A window of single cells can be all zeros (ReLU): no direction, so it is left out (NaN)
    return np.divide(vectors, norms, out=np.full_like(vectors, np.nan), where=norms > 0)


def make_library(root: Path, kind: str, vectors: np.ndarray, labels: list[str], **spec):
    """A kshot library of ``kind`` holding ``vectors``, its index built and saved by
    ``compact``: ``(library, build s, grown)``. ``grown`` is the ivfpq index as a library grown
    by enrollment has it before ``compact`` retrains it: trained on its first
    ``ivf_train_size`` vectors, the others added to those lists (``None`` for other kinds)."""
    import torch

    from kshot.embedder.model import EmbedderConfig, build_embedder
    from kshot.fewshot.catalogue import NewImage
    from kshot.fewshot.library import Library
    from kshot.index.vector_index import IndexSpec

    torch.manual_seed(SEED)  # the model is never run: it only sets the library's dimension
    embedder = build_embedder(EmbedderConfig.for_backbone("conv4", embedding_dim=DIM), False)
    spec = IndexSpec(kind=kind, use_gpu=False, **spec)
    lib = Library.create(root, embedder, {}, spec, device="cpu")
    first = min(spec.ivf_train_size, len(vectors)) if kind == "ivfpq" else 0
    grown = None
    for start, stop in [(0, first), (first, len(vectors))]:
        lib.catalogue.add(
            [
                NewImage(labels[i], f"photo-window-{i}", f"{i:064x}", vectors[i])
                for i in range(start, stop)
            ]
        )
        grown = lib.index if first and len(vectors) > first else None  # caught up: trains once
    started = time.perf_counter()
    lib.compact()
    return lib, time.perf_counter() - started, grown


def enroll_ms(lib, vectors: np.ndarray, first: int) -> tuple[float, float]:
    """Median ms of the write path of one enrollment, as ``Library.enroll`` runs it after the
    embedding: ``(the commit under the lock, the index caught up)``."""
    from kshot.fewshot.catalogue import NewImage

    commits, catch_ups = [], []
    for i, vector in enumerate(vectors):
        image = NewImage("enrolled", f"new-{first + i}", f"{first + i:064x}", vector)
        started = time.perf_counter()
        with lib.locked(), lib.catalogue.writing():
            lib.catalogue.add([image])
        committed = time.perf_counter()
        lib._after_write()  # the index caught up in memory (and saved every FOLD_AFTER)
        catch_ups.append(time.perf_counter() - committed)
        commits.append(committed - started)
    return 1000 * statistics.median(commits), 1000 * statistics.median(catch_ups)


def search_quality(index, queries: np.ndarray, exact: np.ndarray) -> dict:
    """Median ms of one query's 10 nearest, and recall@1 and @10 against ``exact`` ids."""
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        _, ids = index.search(query[None], 10)
        times.append(time.perf_counter() - started)
        found.append(ids[0])
    pairs = list(zip(found, exact, strict=True))
    return {
        "query_ms": 1000 * statistics.median(times),
        "recall@1": float(np.mean([f[0] == e[0] for f, e in pairs])),
        "recall@10": float(np.mean([len(set(f) & set(e)) / 10 for f, e in pairs])),
    }


def measure(kind: str, size: int, pool: np.ndarray, labels: list[str], queries, args) -> dict:
    from kshot.fewshot import library as library_module
    from kshot.index.vector_index import VectorIndex

    root = Path(tempfile.mkdtemp(prefix=f"kshot-scale-{kind}-{size}-"))
    try:
        lib, build_s, grown = make_library(
            root / "lib", kind, pool[:size], labels[:size], **args.spec
        )
        exact = np.argsort(-(queries @ pool[:size].T), axis=1)[:, :10] + 1  # ids start at 1
        searches = {}
        if grown is not None:
            searches["grown, not yet compacted"] = search_quality(grown, queries, exact)
        searches["default"] = search_quality(lib.index, queries, exact)
        if kind in WIDER:  # the same index searched wider: what recall costs in time
            name, value = WIDER[kind]
            wider = VectorIndex(DIM, replace(lib.index.spec, **{name: value}), lib.index._index)
            wider.exact_vectors = lib.index.exact_vectors
            searches[f"{name}={value}"] = search_quality(wider, queries, exact)
        index_bytes = (root / "lib" / "index.faiss").stat().st_size
        catalogue_bytes = (root / "lib" / "catalogue.sqlite").stat().st_size
        commit, catch_up = enroll_ms(lib, queries[: args.enrolls], size)
        started = time.perf_counter()
        with lib.locked():  # the save a writer makes every FOLD_AFTER changes
            lib._save_index(lib.index)
        fold_s = time.perf_counter() - started
        started = time.perf_counter()
        lib.refit_decision()  # what a writer does after an enrollment: the default rule
        refit_s = time.perf_counter() - started
        started = time.perf_counter()
        kshot = Path(sys.executable).with_name("kshot")
        listed = subprocess.run([str(kshot), "classes", str(root / "lib")], capture_output=True)
        if listed.returncode != 0:
            raise SystemExit(f"kshot classes failed: {listed.stderr.decode()[-2000:]}")
        classes_s = time.perf_counter() - started
        return {
            "kind": kind,
            "size": size,
            "build_s": build_s,
            "searches": searches,
            "index_bytes_per_vector": index_bytes / size,
            "catalogue_bytes_per_vector": catalogue_bytes / size,
            "commit_ms": commit,
            "index_ms": catch_up,
            "fold_s": fold_s,
            "fold_ms_per_image": 1000 * fold_s / library_module.FOLD_AFTER,
            "classes_s": classes_s,
            "refit_s": refit_s,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def empty_enroll_ms(kind: str, queries: np.ndarray, args) -> tuple[float, float]:
    root = Path(tempfile.mkdtemp(prefix=f"kshot-scale-{kind}-empty-"))
    try:
        lib, _, _ = make_library(root / "lib", kind, queries[:0], [], **args.spec)
        return enroll_ms(lib, queries[: args.enrolls], 10**9)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--enrolls", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=None, help="npz of the feature maps")
    parser.add_argument(
        "--min-cells",
        type=int,
        default=MIN_CELLS,
        help="smallest window side: 3 gives 225 vectors a photo (374,625 in all), 1 gives 784 "
        "(1.3 million: single cells are crops too)",
    )
    parser.add_argument(
        "--spec", nargs="*", default=[], metavar="NAME=INT", help="IndexSpec fields to change"
    )
    args = parser.parse_args()
    args.spec = {name: int(value) for name, value in (item.split("=") for item in args.spec)}
    import faiss
    import torch

    torch.set_num_threads(1)  # one thread for everything: the machine is shared
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    maps, classes = feature_maps(args.cache)
    order = np.random.default_rng(SEED).permutation(len(maps))
    held = order[: len(maps) // 10]
    kept = order[len(maps) // 10 :]
    per_photo = len(windows(maps[:1], args.min_cells))
    pool = windows(maps[kept], args.min_cells)
    labels = [str(classes[p]) for p in kept for _ in range(per_photo)]
    usable = np.flatnonzero(np.isfinite(pool).all(axis=1))  # see windows()
    pool, labels = pool[usable], [labels[i] for i in usable]
    shuffle = np.random.default_rng(SEED + 1).permutation(len(pool))
    pool, labels = pool[shuffle], [labels[i] for i in shuffle]
    queries = windows(maps[held], args.min_cells)
    queries = queries[np.isfinite(queries).all(axis=1)]
    queries = queries[np.random.default_rng(SEED + 2).permutation(len(queries))[:QUERIES]]
    print(
        f"{len(maps)} photos, {per_photo} windows each: {len(pool)} library vectors available; "
        f"features in {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(
        "| kind | vectors | build s | search | query ms | recall@1 | recall@10 | index B/vector "
        "| catalogue B/vector | enroll: commit ms (empty) | enroll: index ms (empty) "
        "| fold s (/1000 = ms/image) | `kshot classes` s |"
    )
    print("| --- | ---: | ---: | --- |" + " ---: |" * 9)
    for kind in args.kinds:
        empty = empty_enroll_ms(kind, queries, args)
        for size in args.sizes:
            if size > len(pool):
                print(f"| {kind} | {size} | not enough windows ({len(pool)}) |", flush=True)
                continue
            row = measure(kind, size, pool, labels, queries, args)
            for n, (setting, search) in enumerate(row["searches"].items()):
                rest = (
                    f"{row['index_bytes_per_vector']:.0f} | "
                    f"{row['catalogue_bytes_per_vector']:.0f} | {row['commit_ms']:.1f} "
                    f"({empty[0]:.1f}) | {row['index_ms']:.2f} ({empty[1]:.2f}) | "
                    f"{row['fold_s']:.2f} ({row['fold_ms_per_image']:.2f}) | "
                    f"{row['classes_s']:.2f} |"
                    if n == 0
                    else "|" * 6
                )
                print(
                    f"| {kind} | {size:,} | {row['build_s']:.1f} | {setting} | "
                    f"{search['query_ms']:.2f} | {search['recall@1']:.3f} | "
                    f"{search['recall@10']:.3f} | {rest}",
                    flush=True,
                )
            print(f"  (the decision's refit after an enrollment: {row['refit_s']:.1f} s)")
    print(f"total {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
