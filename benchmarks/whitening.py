"""Decisions far from PlantVillage: Omniglot's handwritten characters through ImageNet features,
with no training, for each rule and centring (whitening included).

The characters of ``images_background_small2`` (156, 20 drawings each) are the new classes:
N-way episodes (``--ways`` 20), 1 or 5 drawings enrolled, ``--queries`` (5) more of each
answered; the mean of ``--draws`` (10) seeded episodes. *Alone*: only the episode's classes are
enrolled. *In a library*: beside ``--known`` (10) drawings of each of
``images_background_small1``'s 136 characters, answered among all of them. Every decision goes
through ``kshot.fewshot.decider`` as a library's does (no calibration: accuracy only).

    python benchmarks/whitening.py --json /tmp/whitening.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from kshot.embedder.default_backbones import DEFAULT_EMBEDDER
from kshot.embedder.inference import embed_files
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.fewshot.decider import Decider, DecisionSettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
SETTINGS = [("prototype", c) for c in ("none", "library", "whiten")]
SETTINGS += [("logistic", c) for c in ("none", "library", "whiten")]


def drawings(data: Path, folder: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Every drawing of both small background sets, its character and whether it is new."""
    paths, labels, new = [], [], []
    for part, is_new in (("images_background_small1", False), ("images_background_small2", True)):
        with zipfile.ZipFile(data / f"{part}.zip") as archive:
            archive.extractall(folder)
        for character in sorted(p for p in (folder / part).glob("*/*") if p.is_dir()):
            for path in sorted(character.glob("*.png")):
                paths.append(path)
                labels.append(f"{character.parent.name}/{character.name}")
                new.append(is_new)
    return paths, np.asarray(labels), np.asarray(new)


def accuracy(settings, vectors, labels, support, query) -> float:
    decider = Decider.fit(settings, vectors[support], labels[support], calibrated=False)
    best = np.asarray(decider.classes)[decider.scores(vectors[query]).argmax(axis=1)]
    return float(np.mean(best == labels[query]))


def episodes(vectors, labels, new, args, settings, shots: int) -> dict:
    classes = np.unique(labels[new])
    known = np.concatenate(
        [np.flatnonzero(labels == name)[: args.known] for name in np.unique(labels[~new])]
    )
    alone, library = [], []
    for seed in range(args.draws):
        rng = np.random.default_rng(seed)
        support, query = [], []
        for name in rng.choice(classes, size=args.ways, replace=False):
            members = rng.permutation(np.flatnonzero(labels == name))
            support += list(members[:shots])
            query += list(members[shots : shots + args.queries])
        support, query = np.asarray(support), np.asarray(query)
        alone.append(accuracy(settings, vectors, labels, support, query))
        with_known = np.concatenate([support, known])
        library.append(accuracy(settings, vectors, labels, with_known, query))
    return {"alone": float(np.mean(alone)), "library": float(np.mean(library))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--backbone", default=DEFAULT_EMBEDDER)
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--known", type=int, default=10, help="drawings of each known character")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths, labels, new = drawings(args.data, Path(folder))
        embedder = build_embedder(EmbedderConfig.for_backbone(args.backbone))
        embedded = embed_files(embedder.for_inference(torch.device("cpu")), paths)
    if embedded.errors:
        raise SystemExit(f"unreadable: {embedded.errors[:3]}")
    labels, new = labels[embedded.indices], new[embedded.indices]
    rows = []
    for method, centre in SETTINGS:
        settings = DecisionSettings(method, centre=centre)
        row = {"method": method, "centre": centre}
        for shots in (1, 5):
            found = episodes(embedded.vectors, labels, new, args, settings, shots)
            row |= {f"{shots}shot_{where}": value for where, value in found.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"| rule | centring | {args.ways}-way 1-shot | 5-shot | in a library: 1-shot | 5-shot |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['centre']} | {r['1shot_alone']:.1%} | {r['5shot_alone']:.1%} "
            f"| {r['1shot_library']:.1%} | {r['5shot_library']:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
