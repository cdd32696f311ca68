"""A library at scale, per index kind: enrollment cost per image, query latency, recall@1 and @10
against exact search, bytes per vector in memory and on disk, and ``kshot classes``' wall time;
up to 10^7 vectors.

The vectors are real embeddings, not i.i.d. random ones: the PlantVillage photos of
``../shared/data/plantvillage-leaf38`` (500x500 pixels) through EfficientNet-Lite0 (ImageNet
weights, as installed) up to its last feature map, projected to 128 dimensions by a fixed random
orthogonal matrix. At the usual 224-pixel input (``--input-size 224``) the map is 7x7x1280; at
448 pixels (``--input-size 448``: the photo resized to 512 and its centre 448 cropped, as the
224 preprocessing does at 256) it is 14x14x1280. Every vector is the mean of one rectangular
window of at least ``--min-cells`` cells a side of a photo's map (summed-area tables), made unit
length: a crop taken in feature space (projection and mean commute, so a window is the projected
embedding of that crop's features). A 7x7 map has 225 windows of 3x3 cells or more, 784 of 1x1
or more; a 14x14 map has 105^2 = 11,025 windows of 1x1 or more, 18.4 million over the 1,665
library photos, of which ``--pool`` (10^7 for the largest size) are drawn without replacement
with a fixed seed, in random order, written one window shape at a time to a float32 ``.npy`` map
(``--pool-dir``; 5.1 GB at 10^7, reused by later runs); windows all of whose cells are zero
(ReLU) have no direction and are never drawn. A library of n vectors holds the first n of that
order: a uniform sample of the windows, labelled by their photo's class. The photos are split
90/10 with a fixed seed: the library's windows come from the 90%, the ``QUERIES`` queries are
windows of the held-out 10% (photos the library has never seen). Recall@k is against exact
(float32 inner product) search over the same n vectors.

Three ways of measuring:

- ``--sizes``: each size a real kshot library (``Library.create``; the catalogue filled in
  batches, the index built and saved by ``compact``). "enroll" is the write path of one enrollment
  after the embedding (one SQLite transaction under the lock, the index caught up in memory, the
  decision refitted), the median of ``--enrolls`` single enrollments into an existing class, the
  library's photos and the new ones given random content hashes as real photos have; the refit
  for a new class's first photo is timed apart; "fold" is one save of the whole index, which a
  writer does every ``FOLD_AFTER`` changes, so it adds fold/FOLD_AFTER per image. Both are
  compared, as a ratio, with the same measures on an empty library of that kind, in the same run.
- ``--index-sizes``: the index kshot builds for an ivfpq library (``trained_ivfpq``: the same
  layout and training sample as ``compact``), filled in chunks from the memory map, searched
  through ``VectorIndex`` with its exact re-ranking reading the vectors from the memory-mapped
  float32 file: a stand-in for the catalogue, which a library of 10^7 (about 8.7 GB of SQLite)
  would read them from. Swept over ``ivf_nprobe`` and the re-ranked candidates (``--nprobes``,
  ``--reranks``); with ``--catalogue`` the same index also re-ranks from a real kshot catalogue
  of those vectors (the library's query path; filled in batches, its index never built: a
  ``compact`` of 10^7 reads every row into memory at once); then the same index with its
  inverted lists on disk (``faiss.read_index(..., IO_FLAG_MMAP)`` and
  ``faiss.OnDiskInvertedLists``; ``--disk-nprobe -1`` skips them): query time and resident
  memory against the index in memory. Also: exact search (``faiss.knn`` over the memory map:
  what a flat index does) at that size.
- ``--hnsw-build N``: an HNSW index (the library's spec) built to N vectors in chunks, the build
  rate per chunk, then searched: what a graph of 10^6 or 10^7 would cost, extrapolated.

One thread for torch, FAISS and BLAS (the machine is shared); run it under ``nice``.

    nice python benchmarks/scale.py --sizes 10000 100000 --cache /tmp/pv-maps.npz
    nice python benchmarks/scale.py --input-size 448 --min-cells 1 --pool 10000000 \
        --cache /tmp/pv-maps-448.npz --pool-dir /tmp --sizes --index-sizes 10000000 --catalogue
"""

from __future__ import annotations

import argparse
import hashlib
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
WIDER = {"hnsw": ("hnsw_ef_search", 1024), "ivfpq": ("ivf_nprobe", 128)}


def feature_maps(cache: Path | None, input_size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """``(maps (n, side, side, DIM) float32, labels (n,) class index)`` of every photo, ``side``
    = ``input_size`` / 32 (7 at 224 pixels, 14 at 448)."""
    side = input_size // 32
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        if stored["maps"].shape[1] != side:
            raise SystemExit(f"{cache} holds {stored['maps'].shape[1]}-cell maps, not {side}")
        return stored["maps"], stored["labels"]
    import torch

    from kshot.embedder.images import class_folders
    from kshot.embedder.inference import load_pixels
    from kshot.embedder.model import EmbedderConfig, build_embedder

    folders = [(folder, images) for folder, images in class_folders(DATA) if images]
    paths = [path for _, images in folders for path in images]
    labels = np.array([c for c, (_, images) in enumerate(folders) for _ in images])
    config = EmbedderConfig.for_backbone("efficientnet_lite0")
    preprocess = replace(config.preprocess, input_size=input_size, resize_size=input_size * 8 // 7)
    embedder = build_embedder(replace(config, preprocess=preprocess), pretrained=True)
    embedder.eval()
    backbone = embedder.backbone.to(memory_format=torch.channels_last)  # 1.8x as fast on CPU
    pixels, kept, _ = load_pixels(preprocess, paths)
    projection = np.linalg.qr(np.random.default_rng(SEED).normal(size=(1280, DIM)))[0]
    maps = []
    with torch.inference_mode():
        for start in range(0, len(pixels), 32):
            batch = preprocess.normalize(pixels[start : start + 32])
            features = backbone.extract_features(
                batch.contiguous(memory_format=torch.channels_last)
            )
            maps.append(features.permute(0, 2, 3, 1).numpy() @ projection.astype(np.float32))
    maps, labels = np.concatenate(maps).astype(np.float32), labels[kept]
    if cache is not None:
        np.savez(cache, maps=maps, labels=labels)
    return maps, labels


def window_boxes(side: int, min_cells: int) -> list[tuple[int, int, int, int]]:
    """Every window ``(height, width, top, left)`` of at least ``min_cells`` cells a side."""
    sides = range(min_cells, side + 1)
    return [
        (h, w, y, x)
        for h in sides
        for w in sides
        for y in range(side - h + 1)
        for x in range(side - w + 1)
    ]


def _box_sums(table: np.ndarray, rows, box: tuple[int, int, int, int]) -> np.ndarray:
    """Sums over ``box`` from summed-area tables ``table (n, side + 1, side + 1, ...)``."""
    h, w, y, x = box
    return (
        table[rows, y + h, x + w]
        - table[rows, y, x + w]
        - table[rows, y + h, x]
        + table[rows, y, x]
    )


def window_pool(
    maps: np.ndarray,
    labels: np.ndarray,
    count: int,
    min_cells: int,
    seed: int,
    path: Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` windows (all if fewer) drawn without replacement from those of ``maps`` that have
    a direction, in random order: ``(unit vectors (count, DIM) float32, labels (count,))``, the
    vectors a memory map at ``path`` (a ``.npy``; reused if it is there) when given."""
    labels_path = path.with_suffix(".labels.npy") if path is not None else None
    if path is not None and path.is_file() and labels_path.is_file():
        return np.load(path, mmap_mode="r"), np.load(labels_path)
    n, side = maps.shape[0], maps.shape[1]
    boxes = window_boxes(side, min_cells)
    # A window all of whose cells are zero (ReLU) has no direction: never drawn.
    alive = np.zeros((n, side + 1, side + 1), np.int32)
    alive[:, 1:, 1:] = (np.abs(maps).max(axis=3) > 0).cumsum(1).cumsum(2)
    valid = np.stack([_box_sums(alive, slice(None), box) > 0 for box in boxes])  # (boxes, n)
    candidates = np.flatnonzero(valid.ravel())  # box * n + photo
    del valid
    chosen = candidates[np.random.default_rng(seed).permutation(len(candidates))[:count]]
    del candidates
    if path is not None:
        out = np.lib.format.open_memmap(
            path.with_suffix(".tmp.npy"), "w+", np.float32, (len(chosen), DIM)
        )
    else:
        out = np.empty((len(chosen), DIM), np.float32)
    out_labels = np.empty(len(chosen), labels.dtype)
    table = np.zeros((n, side + 1, side + 1, maps.shape[3]), np.float64)
    table[:, 1:, 1:] = maps.astype(np.float64).cumsum(1).cumsum(2)
    order = np.argsort(chosen, kind="stable")  # one box at a time, every photo that drew it
    starts = np.searchsorted(chosen[order] // n, np.arange(len(boxes) + 1))
    for b, box in enumerate(boxes):
        rows = order[starts[b] : starts[b + 1]]
        if len(rows):
            photos = chosen[rows] % n
            sums = _box_sums(table, photos, box)
            out[rows] = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
            out_labels[rows] = labels[photos]
    if path is None:
        return out, out_labels
    out.flush()
    del out
    np.save(labels_path, out_labels)
    path.with_suffix(".tmp.npy").rename(path)
    return np.load(path, mmap_mode="r"), out_labels


def exact_neighbours(
    queries: np.ndarray, pool: np.ndarray, sizes, k: int = 10, chunk: int = 1 << 18
) -> dict[int, np.ndarray]:
    """For each size n, the ids (row + 1, as the library numbers them) of the ``k`` most similar
    of ``pool[:n]`` to each query, by exact float32 inner product; one pass over ``pool``."""
    last = max(sizes)
    stops = sorted({*sizes, *range(chunk, last, chunk), last})
    best_scores = np.zeros((len(queries), 0), np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    found, start = {}, 0
    for stop in stops:
        scores = queries @ np.asarray(pool[start:stop]).T
        top = np.argsort(-scores, axis=1)[:, :k] if stop - start <= k else None
        if top is None:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], 1)
        best_ids = np.concatenate([best_ids, top + start], 1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, 1)
        best_ids = np.take_along_axis(best_ids, keep, 1)
        if stop in sizes:
            found[stop] = best_ids + 1
        start = stop
    return found


def resident() -> dict[str, float]:
    """This process's resident memory, GB: all, anonymous (heap), file-backed (mapped files)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[name] = int(value.split()[0]) / 2**20
    return fields


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


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
                NewImage(labels[i], f"photo-window-{i}", photo_sha256(i), vectors[i])
                for i in range(start, stop)
            ]
        )
        grown = lib.index if first and len(vectors) > first else None  # caught up: trains once
    started = time.perf_counter()
    lib.compact()
    return lib, time.perf_counter() - started, grown


def photo_sha256(n: int) -> str:
    """A stand-in content hash, as random as a photo's: it decides whether an enrolled photo
    enters its class's decision sample (kshot.fewshot.class_sums)."""
    return hashlib.sha256(f"photo {n}".encode()).hexdigest()


def enroll_ms(lib, vectors: np.ndarray, first: int, label: str) -> tuple[float, float, float]:
    """Median ms of one enrollment into class ``label`` after the embedding, as ``kshot enroll``
    does it for one photo: ``(the commit under the lock, the index caught up, the decision's
    refit)``."""
    from kshot.fewshot.catalogue import NewImage

    commits, catch_ups, refits = [], [], []
    for i, vector in enumerate(vectors):
        image = NewImage(label, f"new-{first + i}", photo_sha256(first + i), vector)
        started = time.perf_counter()
        with lib.locked(), lib.catalogue.writing():
            lib.catalogue.add([image])
        committed = time.perf_counter()
        lib._after_write()  # the index caught up in memory (and saved every FOLD_AFTER)
        caught_up = time.perf_counter()
        lib.refit_decision()
        refits.append(time.perf_counter() - caught_up)
        catch_ups.append(caught_up - committed)
        commits.append(committed - started)
    return tuple(1000 * statistics.median(times) for times in (commits, catch_ups, refits))


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
    from kshot.fewshot import index_cache
    from kshot.index.vector_index import VectorIndex

    root = Path(tempfile.mkdtemp(prefix=f"kshot-scale-{kind}-{size}-"))
    try:
        names = [str(label) for label in labels[:size]]
        lib, build_s, grown = make_library(
            root / "lib", kind, np.asarray(pool[:size]), names, **args.spec
        )
        exact = args.exact[size]
        searches = {}
        if grown is not None:
            searches["grown, not yet compacted"] = search_quality(grown, queries, exact)
        searches["default"] = search_quality(lib.index, queries, exact)
        if kind in WIDER:  # the same index searched wider: what recall costs in time
            name, value = WIDER[kind]
            wider = VectorIndex(DIM, replace(lib.index.spec, **{name: value}), lib.index._index)
            wider.exact_vectors = lib.index.exact_vectors
            searches[f"{name}={value}"] = search_quality(wider, queries, exact)
        if lib.index.trained_kind == "ivfpq":  # the stand-in of --index-sizes, for comparison
            mapped = VectorIndex(DIM, lib.index.spec, lib.index._index)
            mapped.exact_vectors = mapped_reader(pool)
            searches["re-ranked from the memory map"] = search_quality(mapped, queries, exact)
        index_bytes = (root / "lib" / "index.faiss").stat().st_size
        catalogue_bytes = (root / "lib" / "catalogue.sqlite").stat().st_size
        commit, catch_up, refit = enroll_ms(lib, queries[: args.enrolls], size, names[0])
        started = time.perf_counter()
        with lib.locked():  # the save a writer makes every FOLD_AFTER changes
            lib._save_index(lib.index)
        fold_s = time.perf_counter() - started
        started = time.perf_counter()  # a new class's first photo: its sample is new
        enroll_ms(lib, queries[args.enrolls : args.enrolls + 1], 2 * size, "a new class")
        new_class_s = time.perf_counter() - started
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
            "fold_ms_per_image": 1000 * fold_s / index_cache.FOLD_AFTER,
            "classes_s": classes_s,
            "refit_ms": refit,
            "new_class_s": new_class_s,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def empty_enroll_ms(kind: str, queries: np.ndarray, args) -> tuple[float, float, float]:
    root = Path(tempfile.mkdtemp(prefix=f"kshot-scale-{kind}-empty-"))
    try:
        lib, _, _ = make_library(root / "lib", kind, queries[:0], [], **args.spec)
        return enroll_ms(lib, queries[: args.enrolls], 10**9, "a class")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mapped_reader(pool: np.ndarray):
    """``exact_vectors`` reading from ``pool`` (ids are rows + 1), in place of the catalogue."""
    return lambda ids: (ids, np.asarray(pool[ids - 1]))


def measure_index(size: int, pool: np.ndarray, labels, queries: np.ndarray, args) -> None:
    """The ivfpq index kshot builds for ``size`` vectors, filled from the memory map and
    re-ranking from it; then its inverted lists on disk. Prints markdown tables."""
    import faiss

    from kshot.index import vector_index as module
    from kshot.index.vector_index import IndexSpec, VectorIndex, ivfpq_layout, trained_ivfpq

    exact, vectors = args.exact[size], pool[:size]
    workdir = Path(tempfile.mkdtemp(prefix=f"kshot-scale-index-{size}-", dir=args.workdir))
    try:
        times = []
        for query in queries[: args.flat_queries]:  # what a flat index does: exact, linear
            started = time.perf_counter()
            faiss.knn(query[None], vectors, 10, faiss.METRIC_INNER_PRODUCT)
            times.append(time.perf_counter() - started)
        print(
            f"exact search (faiss.knn over the memory map) at {size:,}: "
            f"{1000 * statistics.median(times):.1f} ms a query (median of {len(times)}); "
            f"the 200 queries' ground truth in one pass: {args.exact_s:.1f} s; load {load()}",
            flush=True,
        )
        before = resident()
        started = time.perf_counter()
        index = trained_ivfpq(DIM, vectors)
        train_s = time.perf_counter() - started
        lists, subquantizers = ivfpq_layout(DIM, size)
        print(
            f"trained {lists} lists, PQ{subquantizers}, in {train_s:.0f} s; load {load()}",
            flush=True,
        )
        started, step = time.perf_counter(), 1 << 20
        for start in range(0, size, step):
            stop = min(size, start + step)
            index.add_with_ids(
                np.ascontiguousarray(vectors[start:stop]), np.arange(start + 1, stop + 1)
            )
        add_s = time.perf_counter() - started
        after = resident()
        path = workdir / "ivfpq.faiss"
        faiss.write_index(index, str(path))
        file_bytes = path.stat().st_size
        print(
            f"added {size:,} in {add_s:.0f} s ({size / add_s:,.0f}/s); index in memory "
            f"{(index.code_size + 8) + 4 * DIM * lists / size:.1f} B/vector (codes, ids and "
            f"centroids), {(after['RssAnon'] - before['RssAnon']) * 2**30 / size:.1f} B/vector "
            f"of anonymous resident growth while building, on disk "
            f"{file_bytes / size:.1f} B/vector "
            f"({file_bytes / 1e6:.0f} MB); exact vectors (the re-ranking's source) "
            f"{DIM * 4} B/vector ({size * DIM * 4 / 1e9:.2f} GB); process resident "
            f"{after['VmRSS']:.2f} GB (anonymous {after['RssAnon']:.2f}, files "
            f"{after['RssFile']:.2f}); load {load()}",
            flush=True,
        )
        spec = IndexSpec(kind="ivfpq", use_gpu=False, **args.spec)
        print(
            "\n| vectors | lists | nprobe | re-ranked candidates | query ms | recall@1 "
            "| recall@10 |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        default_factor = module.RERANK_FACTOR
        try:
            for nprobe in args.nprobes:
                for factor in [0, *args.reranks]:
                    module.RERANK_FACTOR = factor or default_factor
                    searched = VectorIndex(DIM, replace(spec, ivf_nprobe=nprobe), index)
                    searched.exact_vectors = mapped_reader(pool) if factor else None
                    result = search_quality(searched, queries, exact)
                    print(
                        f"| {size:,} | {lists} | {nprobe} | {10 * factor or 'none (PQ only)'} | "
                        f"{result['query_ms']:.2f} | {result['recall@1']:.3f} | "
                        f"{result['recall@10']:.3f} |",
                        flush=True,
                    )
            print(f"load {load()}", flush=True)
            if args.catalogue:
                module.RERANK_FACTOR = default_factor
                catalogue_rerank(index, spec, pool, labels, queries, exact, size, workdir)
            if args.disk_nprobe >= 0:
                module.RERANK_FACTOR = args.disk_rerank or default_factor
                disk_spec = replace(spec, ivf_nprobe=args.disk_nprobe or spec.ivf_nprobe)
                on_disk(index, path, workdir, disk_spec, pool, queries, exact, size)
        finally:
            module.RERANK_FACTOR = default_factor
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def catalogue_rerank(index, spec, pool, labels, queries, exact, size: int, workdir) -> None:
    """The same index re-ranking from a real kshot catalogue of the ``size`` vectors (filled in
    batches, as ``make_library`` does, its index never built): the library's query path."""
    import torch

    from kshot.embedder.model import EmbedderConfig, build_embedder
    from kshot.fewshot.catalogue import NewImage
    from kshot.fewshot.library import Library
    from kshot.index.vector_index import VectorIndex

    torch.manual_seed(SEED)  # the model is never run: it only sets the library's dimension
    embedder = build_embedder(EmbedderConfig.for_backbone("conv4", embedding_dim=DIM), False)
    lib = Library.create(workdir / "lib", embedder, {}, spec, device="cpu")
    started, step = time.perf_counter(), 250_000
    for start in range(0, size, step):
        rows = np.asarray(pool[start : min(size, start + step)])
        ids = lib.catalogue.add(
            [
                NewImage(
                    str(labels[start + i]), f"photo-window-{start + i}", f"{start + i:064x}", row
                )
                for i, row in enumerate(rows)
            ]
        )
        if ids[0] != start + 1 or ids[-1] != start + len(rows):
            raise SystemExit(
                f"the catalogue numbered rows {start}.. from {ids[0]}, not {start + 1}"
            )
    fill_s = time.perf_counter() - started
    path = workdir / "lib" / "catalogue.sqlite"
    print(
        f"\ncatalogue of {size:,} filled in {fill_s:.0f} s, {path.stat().st_size / size:.0f} "
        f"B/vector on disk ({path.stat().st_size / 1e9:.2f} GB); load {load()}\n",
        flush=True,
    )
    print("| vectors | re-ranked from | pass | query ms | recall@1 | recall@10 |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")
    searched = VectorIndex(DIM, spec, index)
    searched.exact_vectors = lib.catalogue.vectors_of
    _forget(path)
    for attempt in ("first (its pages dropped from the page cache)", "second"):
        result = search_quality(searched, queries, exact)
        print(
            f"| {size:,} | the catalogue (SQLite) | {attempt} | {result['query_ms']:.2f} | "
            f"{result['recall@1']:.3f} | {result['recall@10']:.3f} |",
            flush=True,
        )
    lib.catalogue.close()


def _forget(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (this file only), so that reads go to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def on_disk(index, path: Path, workdir: Path, spec, pool, queries, exact, size: int) -> None:
    """The in-memory ``index`` (saved at ``path``) against the same with its lists on disk."""
    import faiss

    from kshot.index import vector_index as module
    from kshot.index.vector_index import VectorIndex

    print(
        f"\nnprobe {spec.ivf_nprobe}, {10 * module.RERANK_FACTOR} candidates re-ranked from the "
        "memory map; resident = the process's growth from loading the index and running the "
        "queries (GB); the on-disk files' pages dropped from the page cache before their first "
        "pass (posix_fadvise), so it reads from disk\n"
    )
    print("| vectors | inverted lists | pass | query ms | recall@10 | resident GB | file GB |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")

    def rows(name: str, loaded, before: dict, file_bytes: int) -> None:
        searched = VectorIndex(DIM, spec, loaded)
        searched.exact_vectors = mapped_reader(pool)
        lists = faiss.downcast_InvertedLists(loaded.invlists)
        threads = getattr(lists, "prefetch_nthread", None)
        passes = [("first", 0), ("second", 0)] if threads is not None else [("first", None)]
        if threads:  # FAISS starts these threads at every search, to read the lists ahead
            passes.append((f"third, {threads} prefetch threads (FAISS's default)", threads))
        for attempt, prefetch in passes:
            if prefetch is not None:
                lists.prefetch_nthread = prefetch
            result = search_quality(searched, queries, exact)
            now = resident()
            print(
                f"| {size:,} | {name} ({type(lists).__name__}) | {attempt} | "
                f"{result['query_ms']:.2f} | {result['recall@10']:.3f} | "
                f"{now['VmRSS'] - before['VmRSS']:.3f} | {file_bytes / 1e9:.3f} |",
                flush=True,
            )

    # in memory: the index built above (its growth was measured when it was built)
    rows("in memory", index, resident(), path.stat().st_size)
    # the saved file, its lists memory-mapped (IO_FLAG_MMAP), read from disk as searches need them
    _forget(path)
    before = resident()
    mapped = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    rows("memory-mapped file (IO_FLAG_MMAP)", mapped, before, path.stat().st_size)
    del mapped
    # OnDiskInvertedLists: the lists in their own .ivfdata file, the index file only the quantiser
    data = workdir / "ivfpq.ivfdata"
    lists = faiss.OnDiskInvertedLists(index.nlist, index.code_size, str(data))
    sources = faiss.InvertedListsPtrVector()
    sources.push_back(index.invlists)
    lists.merge_from_multiple(sources.data(), sources.size(), False)
    index.replace_invlists(lists, True)
    lists.this.disown()
    head = workdir / "ivfpq-ondisk.faiss"
    faiss.write_index(index, str(head))
    del index
    _forget(data)
    before = resident()
    loaded = faiss.read_index(str(head))
    rows(
        "OnDiskInvertedLists (.ivfdata)", loaded, before, data.stat().st_size + head.stat().st_size
    )


def hnsw_build(size: int, pool: np.ndarray, queries: np.ndarray, args) -> None:
    """An HNSW index of the library's spec built to ``size`` vectors in chunks: the rate per
    chunk as the graph grows, then its searches."""
    from kshot.index.vector_index import IndexSpec, VectorIndex

    spec = IndexSpec(kind="hnsw", use_gpu=False, **args.spec)
    index = VectorIndex(DIM, spec)
    before, step, total = resident(), args.hnsw_chunk, 0.0
    print(f"\nHNSW M {spec.hnsw_m}, efConstruction {spec.hnsw_ef_construction}\n")
    print("| vectors in the graph | chunk s | vectors/s | load |")
    print("| ---: | ---: | ---: | --- |")
    for start in range(0, size, step):
        stop = min(size, start + step)
        started = time.perf_counter()
        index.add(np.ascontiguousarray(pool[start:stop]), np.arange(start + 1, stop + 1))
        took = time.perf_counter() - started
        total += took
        print(f"| {stop:,} | {took:.1f} | {(stop - start) / took:,.0f} | {load()} |", flush=True)
    grown = resident()["RssAnon"] - before["RssAnon"]
    print(f"built in {total:.0f} s; {grown * 2**30 / size:.0f} B/vector resident")
    for ef in (spec.hnsw_ef_search, 1024):
        result = search_quality(
            VectorIndex(DIM, replace(spec, hnsw_ef_search=ef), index._index),
            queries,
            args.exact[size],
        )
        print(
            f"| hnsw | {size:,} | efSearch {ef} | {result['query_ms']:.2f} ms | recall@1 "
            f"{result['recall@1']:.3f} | recall@10 {result['recall@10']:.3f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--enrolls", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=None, help="npz of the feature maps")
    parser.add_argument(
        "--input-size", type=int, default=224, help="pixels: 224 gives 7x7 maps, 448 14x14"
    )
    parser.add_argument(
        "--min-cells",
        type=int,
        default=MIN_CELLS,
        help="smallest window side: at 224 pixels 3 gives 225 vectors a photo (374,625 in all), "
        "1 gives 784 (1.3 million: single cells are crops too); at 448, 1 gives 11,025",
    )
    parser.add_argument(
        "--pool", type=int, default=0, help="library windows to draw (0: all of them)"
    )
    parser.add_argument(
        "--pool-dir", type=Path, default=None, help="where the drawn windows are memory-mapped"
    )
    parser.add_argument(
        "--index-sizes", type=int, nargs="*", default=[], help="ivfpq index only (see above)"
    )
    parser.add_argument("--nprobes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument(
        "--reranks", type=int, nargs="+", default=[20, 50, 100], help="candidates per neighbour"
    )
    parser.add_argument(
        "--disk-nprobe",
        type=int,
        default=0,
        help="on-disk lists' search (0: the spec's; -1: no on-disk lists)",
    )
    parser.add_argument(
        "--catalogue", action="store_true", help="--index-sizes: also re-rank from a catalogue"
    )
    parser.add_argument(
        "--disk-rerank", type=int, default=0, help="its candidates per neighbour (0: kshot's)"
    )
    parser.add_argument("--flat-queries", type=int, default=5)
    parser.add_argument("--hnsw-build", type=int, default=0, help="build HNSW to this size")
    parser.add_argument("--hnsw-chunk", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=None, help="for the index files")
    parser.add_argument(
        "--spec", nargs="*", default=[], metavar="NAME=INT", help="IndexSpec fields to change"
    )
    args = parser.parse_args()
    args.spec = {name: int(value) for name, value in (item.split("=") for item in args.spec)}
    import faiss
    import torch

    torch.set_num_threads(1)  # one thread for everything: the machine is shared
    faiss.omp_set_num_threads(1)
    try:  # numpy's and FAISS's BLAS too (exact search, k-means)
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        print("threadpoolctl is not installed: set OPENBLAS_NUM_THREADS=1", file=sys.stderr)
    started = time.perf_counter()
    print(f"load {load()}", flush=True)
    maps, classes = feature_maps(args.cache, args.input_size)
    order = np.random.default_rng(SEED).permutation(len(maps))
    held = order[: len(maps) // 10]
    kept = order[len(maps) // 10 :]
    per_photo = len(window_boxes(maps.shape[1], args.min_cells))
    features_s = time.perf_counter() - started
    count = args.pool or len(kept) * per_photo
    path = None
    if args.pool_dir is not None:
        name = f"kshot-pool-{args.input_size}px-{args.min_cells}cells-{count}.npy"
        path = args.pool_dir / name
    pool, labels = window_pool(maps[kept], classes[kept], count, args.min_cells, SEED + 1, path)
    queries, _ = window_pool(maps[held], classes[held], QUERIES, args.min_cells, SEED + 2)
    print(
        f"{len(maps)} photos, {maps.shape[1]}x{maps.shape[1]} maps, {per_photo} windows each: "
        f"{len(pool):,} library vectors drawn from {len(kept)} photos, {len(queries)} queries "
        f"from {len(held)} others; features in {features_s:.0f} s, windows "
        f"{time.perf_counter() - started - features_s:.0f} s; load {load()}",
        flush=True,
    )
    sizes = [size for size in args.sizes + args.index_sizes if size <= len(pool)]
    if args.hnsw_build:
        sizes.append(min(args.hnsw_build, len(pool)))
    began = time.perf_counter()
    args.exact = exact_neighbours(queries, pool, sizes) if sizes else {}
    args.exact_s = time.perf_counter() - began
    print(f"exact neighbours in {args.exact_s:.0f} s; {resident()}; load {load()}", flush=True)
    if args.sizes:
        library_tables(args, pool, labels, queries)
    for size in args.index_sizes:
        if size <= len(pool):
            measure_index(size, pool, labels, queries, args)
    if args.hnsw_build:
        hnsw_build(min(args.hnsw_build, len(pool)), pool, queries, args)
    print(f"total {time.perf_counter() - started:.0f} s; {resident()}; load {load()}")


def library_tables(args, pool: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> None:
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
            print(
                f"  (the decision's refit after one photo: {row['refit_ms']:.1f} ms into an "
                f"existing class ({empty[2]:.1f} ms into an empty library); "
                f"{row['new_class_s']:.2f} s for a new class's first photo; "
                f"load {load()})"
            )


if __name__ == "__main__":
    main()
