"""How long a library's decision takes to fit, per rule, on real embeddings.

Embeds every PlantVillage photo of ``../shared/data/plantvillage-leaf38`` (or the first
``--photos``) with the default embedder of ``kshot init`` (``--backbone``), then times
``Decider.fit`` for each rule and centring (whitening included), calibration included: what
``kshot enroll`` and ``kshot forget`` pay once per call, and a reader that finds the saved decision
stale pays in memory. The median of ``--repeats`` fits; the first fit is not timed (imports).

    python benchmarks/decision_fit.py --cache /tmp/pv-embeddings.npz
    python benchmarks/decision_fit.py --cache /tmp/pv-embeddings.npz --photos 75
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from kshot.embedder.default_backbones import DEFAULT_EMBEDDER
from kshot.fewshot.decider import Decider, DecisionSettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "plantvillage-leaf38"


def embeddings(backbone: str, cache: Path | None) -> tuple[np.ndarray, list[str]]:
    """``(vectors (n, D), labels)`` of every photo, from ``cache`` when it holds them."""
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        return stored["vectors"], stored["labels"].tolist()
    from kshot.embedder.images import class_folders
    from kshot.embedder.inference import embed_files
    from kshot.embedder.model import EmbedderConfig, build_embedder

    items = [(path, folder.name) for folder, images in class_folders(DATA) for path in images]
    embedder = build_embedder(EmbedderConfig.for_backbone(backbone), pretrained=True)
    result = embed_files(embedder, [path for path, _ in items])
    labels = [items[i][1] for i in result.indices]
    if cache is not None:
        np.savez(cache, vectors=result.vectors, labels=np.asarray(labels))
    return result.vectors, labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=DEFAULT_EMBEDDER)
    parser.add_argument("--cache", type=Path, help="npz of the embeddings, made if missing")
    parser.add_argument("--photos", type=int, help="fit on the first N photos (a few shots)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vectors, labels = embeddings(args.backbone, args.cache)
    if args.photos:
        pick = np.random.default_rng(0).permutation(len(vectors))[: args.photos]
        vectors, labels = vectors[pick], [labels[i] for i in pick]
    print(f"{len(vectors)} photos, {len(set(labels))} classes, {vectors.shape[1]} dimensions")
    print("| rule | centring | fit s (median) |\n|---|---|---:|")
    for method, centre in [
        (m, c) for m in ("logistic", "prototype") for c in ("library", "whiten")
    ]:
        settings = DecisionSettings(method, centre=centre)
        Decider.fit(settings, vectors, labels)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            Decider.fit(settings, vectors, labels)
            times.append(time.perf_counter() - started)
        print(f"| {method} | {centre} | {statistics.median(times):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
