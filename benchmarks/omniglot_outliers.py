"""Does ``kshot outliers`` find deliberately swapped labels? Omniglot, characters as classes.

Trains conv4 (as ``benchmarks/omniglot.py`` does) on the first small background set only, then
builds a library from the alphabets that only the second small set holds (Japanese katakana,
Sanskrit, Tagalog: characters the model never saw), with the labels of ``--swaps`` random images
exchanged for another character's, and counts how many of those images ``kshot outliers`` lists.

    python benchmarks/omniglot_outliers.py --out /tmp/omniglot-outliers
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from omniglot import DATA

from kshot.embedder.checkpoint import load_checkpoint
from kshot.embedder.recipe import TrainConfig
from kshot.embedder.run import train_from_folder
from kshot.fewshot.library import Library, folder_items
from kshot.index.vector_index import IndexSpec


def unpack(zip_path: Path, root: Path, alphabets: set[str] | None = None) -> set[str]:
    """Characters as ``root/<alphabet>__<character>/*.png``; returns the alphabets found."""
    found = set()
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.namelist():
            parts = Path(member).parts
            if member.endswith(".png") and len(parts) == 4:
                found.add(parts[1])
                if alphabets is None or parts[1] in alphabets:
                    target = root / f"{parts[1]}__{parts[2]}" / parts[3]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--margin", type=float, default=0.2, help="of the triplet loss")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train, novel = Path(tmp) / "train", Path(tmp) / "novel"
        seen = unpack(args.data / "images_background_small1.zip", train)
        all_small2 = unpack(args.data / "images_background_small2.zip", Path(tmp) / "unused", set())
        unpack(args.data / "images_background_small2.zip", novel, all_small2 - seen)
        model = args.out / "omniglot-small1.kshot"
        recipe = TrainConfig(
            backbone="conv4",
            rotation_classes=True,
            loss="triplet",
            loss_options={"margin": args.margin},
            head_epochs=0,
            epochs=args.epochs,
            lr=1e-3,
            finetune_lr=None,
            schedule="none",
            batch_size=128,
            seed=args.seed,
        )
        train_from_folder(train, model, recipe)
        items, _ = folder_items(novel)
        rng = random.Random(args.seed)
        labels = sorted({label for _, label in items})
        swapped = {}
        for i in rng.sample(range(len(items)), args.swaps):
            path, label = items[i]
            swapped[str(path.resolve())] = rng.choice([x for x in labels if x != label])
            items[i] = (path, swapped[str(path.resolve())])
        library = args.out / "library"
        embedder, info = load_checkpoint(model)
        Library.create(library, embedder, info, IndexSpec()).enroll(items)
        command = [sys.executable, "-m", "kshot", "outliers", str(library), "--json"]
        rows = [
            json.loads(line)
            for line in subprocess.run(
                command, capture_output=True, text=True, check=True
            ).stdout.splitlines()
        ]
    listed = [r["image"] for r in rows if r["kind"] == "disagreement"]
    ranks = sorted(i + 1 for i, image in enumerate(listed) if image in swapped)
    result = {
        "images": len(items),
        "classes": len(labels),
        "swapped": len(swapped),
        "found": len(ranks),
        "listed": len(listed),
        "ranks_of_swapped": ranks,  # 1 = first listed
        "found_in_first_25": sum(r <= 25 for r in ranks),
        "command": " ".join(command[2:]),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
