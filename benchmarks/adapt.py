"""``kshot adapt`` on PlantVillage (or Omniglot): new classes before and after a library adapts
its model.

The 15 Tomato, Potato and Pepper classes of ``../shared/data/plantvillage-leaf38`` are enrolled
from 1 or 5 photos each (a seeded draw from the photos that are not queries; every other photo
of theirs is a query), in a library on ``--model`` or ``--backbone`` (default: ``kshot init``'s
default embedder). ``--known N`` (default 20) also enrolls the first N photos of each of the 23
other crops' classes, as a user's library holds them ("in a library"; 0: the new classes alone);
their other photos are queries too, to see whether adapting costs the classes the library
already knew.

Each draw's library is adapted with ``kshot adapt``'s defaults (``adapt_library``) and both are
asked every query with the library's own decision, no threshold (closed-set accuracy). Run on
one torch thread per process if the machine is busy (``--threads``).

``--set omniglot``, far from leaves: 20 of the 156 characters of Omniglot's
``images_background_small2`` (a seeded draw) enrolled from 1 or 5 drawings, 10 more of each
asked; ``--known N`` enrolls N drawings of each of ``images_background_small1``'s 136 and asks
up to 5 more (each has 20: give ``--known 10``, not the default 20). The augmentation is
``upright`` there (characters have an upright), ``photo`` here.

    python benchmarks/adapt.py --draws 3 --json /tmp/adapt.json
    python benchmarks/adapt.py --set omniglot --known 0 --draws 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from kshot.cli.embedders import embedder_from
from kshot.embedder.adapt_config import AdaptConfig
from kshot.embedder.default_backbones import default_embedder
from kshot.fewshot.adaptation import adapt_library
from kshot.fewshot.library import Library
from kshot.index.vector_index import IndexSpec

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEW_CROPS = ("Tomato", "Potato", "Pepper")
OMNIGLOT_WAYS, OMNIGLOT_QUERIES, OMNIGLOT_KNOWN_QUERIES = 20, 10, 5


def plantvillage_draw(data: Path, shots: int, known: int, seed: int):
    """``(enrolled, new queries, known queries)``: lists of ``(path, label)``."""
    rng = np.random.default_rng(seed)
    enrolled, new_queries, known_queries = [], [], []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        photos = [(path, folder.name) for path in sorted(folder.iterdir())]
        if folder.name.startswith(NEW_CROPS):
            new_queries += photos[1::2]
            chosen = rng.choice(len(photos[0::2]), size=shots, replace=False)
            enrolled += [photos[0::2][i] for i in chosen]
        elif known:
            enrolled += photos[:known]
            known_queries += photos[known:]
    return enrolled, new_queries, known_queries


def omniglot_draw(data: Path, shots: int, known: int, seed: int):
    """As :func:`plantvillage_draw`, from the two small background sets unpacked in ``data``."""
    rng = np.random.default_rng(seed)
    characters = sorted(p for p in (data / "images_background_small2").glob("*/*") if p.is_dir())
    enrolled, new_queries, known_queries = [], [], []
    for i in rng.choice(len(characters), size=OMNIGLOT_WAYS, replace=False):
        label = f"{characters[i].parent.name}/{characters[i].name}"
        drawings = [(path, label) for path in rng.permutation(sorted(characters[i].glob("*.png")))]
        enrolled += drawings[:shots]
        new_queries += drawings[shots : shots + OMNIGLOT_QUERIES]
    known_characters = (data / "images_background_small1").glob("*/*") if known else ()
    for character in sorted(p for p in known_characters if p.is_dir()):
        label = f"{character.parent.name}/{character.name}"
        drawings = [(path, label) for path in sorted(character.glob("*.png"))]
        enrolled += drawings[:known]
        known_queries += drawings[known : known + OMNIGLOT_KNOWN_QUERIES]
    return enrolled, new_queries, known_queries


def accuracy(library: Library, queries: list[tuple[Path, str]]) -> float | None:
    if not queries:
        return None
    results = library.query([path for path, _ in queries], threshold=0.0)
    right = [r.decision.label == label for r, (_, label) in zip(results, queries, strict=True)]
    return float(np.mean(right))


def one_draw(args, data: Path, shots: int, known: int, seed: int, root: Path) -> dict:
    draw = omniglot_draw if args.set == "omniglot" else plantvillage_draw
    enrolled, new_queries, known_queries = draw(data, shots, known, seed)
    if args.model is None:
        embedder, info = embedder_from(None, args.backbone or default_embedder()[0], None, True)
    else:
        embedder, info = embedder_from(args.model, None, None, True)
    library = Library.create(root / "library", embedder, info, IndexSpec(), device="cpu")
    library.enroll(enrolled)
    start = time.perf_counter()
    augment = "upright" if args.set == "omniglot" else "photo"
    adapted = adapt_library(library, root / "adapted", AdaptConfig(augment=augment))
    seconds = time.perf_counter() - start
    row = {"shots": shots, "known": known, "seed": seed, "adapt_s": seconds}
    for name, lib in (("before", library), ("after", Library.open(root / "adapted", device="cpu"))):
        row[f"new_{name}"] = accuracy(lib, new_queries)
        row[f"known_{name}"] = accuracy(lib, known_queries)
    row["trained"] = adapted.trained
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("plantvillage", "omniglot"), default="plantvillage")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--model", type=Path, help="a kshot model file (default: the default)")
    chosen.add_argument("--backbone", help="an untrained backbone (default: the default's)")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--known", type=int, nargs="+", default=[0, 20])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = SHARED / ("omniglot" if args.set == "omniglot" else "plantvillage-leaf38")
    if not data.is_dir():
        print(f"{data} is missing: this benchmark reads ../shared/data", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as unpacked:
        if args.set == "omniglot":
            for part in ("images_background_small1", "images_background_small2"):
                with zipfile.ZipFile(data / f"{part}.zip") as archive:
                    archive.extractall(unpacked)
            data = Path(unpacked)
        rows = []
        for known in args.known:
            for shots in args.shots:
                for seed in range(args.draws):
                    with tempfile.TemporaryDirectory() as tmp:
                        rows.append(one_draw(args, data, shots, known, seed, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
                    if args.json:
                        args.json.write_text(json.dumps(rows, indent=1))
    table(rows)
    return 0


def table(rows: list[dict]) -> None:
    """The means over draws, one line per scenario and shot count, as Markdown."""
    columns = ("new_before", "new_after", "known_before", "known_after")
    print("| scenario | shots | new before | new after | known before | known after | adapt s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for known, shots in sorted({(r["known"], r["shots"]) for r in rows}):
        group = [r for r in rows if r["known"] == known and r["shots"] == shots]
        cells = [
            f"{100 * np.mean([r[k] for r in group]):.1f}%" if group[0][k] is not None else "-"
            for k in columns
        ]
        scenario = f"in a library ({known}/class)" if known else "alone"
        seconds = np.mean([r["adapt_s"] for r in group])
        print(f"| {scenario} | {shots} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
