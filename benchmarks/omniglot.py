"""Omniglot one-shot classification: train on the background sets, test on Lake et al.'s runs.

Trains a conv4 embedder with ``kshot train``'s code on the two small background sets of
``../shared/data/omniglot`` (their union: 8 alphabets, 242 characters as classes, each character
turned by 90/180/270 degrees as three more classes), then runs the 20 one-shot runs of
``all_runs.zip``: 20-way, 1-shot, within an alphabet; each of the 20 test drawings is matched to
the most similar of the 20 training drawings. Error = misclassified drawings / 400.

``--export-runs DIR`` also writes each run as folders ``kshot evaluate`` reads
(``DIR/runNN/support/classNN/`` and ``DIR/runNN/queries/classNN/``), so the same number can be
checked through the command line.

    python benchmarks/omniglot.py --out /tmp/omniglot --export-runs /tmp/omniglot/runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from kshot.embedder.augment import augment_config
from kshot.embedder.checkpoint import load_checkpoint
from kshot.embedder.inference import embed_files
from kshot.embedder.recipe import TrainConfig
from kshot.embedder.run import train_from_folder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


def unpack_background(data: Path, root: Path) -> Path:
    """The union of the two small background sets as ``root/<alphabet>__<character>/*.png``."""
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        with zipfile.ZipFile(data / name) as archive:
            for member in archive.namelist():
                parts = Path(member).parts
                if member.endswith(".png") and len(parts) == 4:
                    target = root / f"{parts[1]}__{parts[2]}" / parts[3]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))  # overlapping sets: same file
    return root


def unpack_runs(data: Path, root: Path) -> list[dict]:
    """Each run: its support images by class and its (query image, true class) pairs."""
    with zipfile.ZipFile(data / "all_runs.zip") as archive:
        archive.extractall(root)
    runs = []
    for folder in sorted(root.glob("run*")):
        pairs = [line.split() for line in (folder / "class_labels.txt").read_text().splitlines()]
        queries = [(root / test, Path(train).stem) for test, train in pairs if test]
        support = {p.stem: p for p in sorted((folder / "training").glob("*.png"))}
        runs.append({"name": folder.name, "support": support, "queries": queries})
    return runs


def one_shot_errors(model: Path, runs: list[dict]) -> list[int]:
    """Misclassified queries per run: nearest support drawing by cosine similarity."""
    embedder, _ = load_checkpoint(model)
    errors = []
    for run in runs:
        classes = list(run["support"])
        support = embed_files(embedder, [run["support"][c] for c in classes]).vectors
        queries = embed_files(embedder, [path for path, _ in run["queries"]]).vectors
        predicted = [classes[i] for i in (queries @ support.T).argmax(axis=1)]
        errors.append(sum(p != t for p, (_, t) in zip(predicted, run["queries"], strict=True)))
    return errors


def export_runs(runs: list[dict], out: Path) -> None:
    """Each run as ``support/<class>/`` and ``queries/<class>/`` folders for kshot evaluate."""
    for run in runs:
        for label, path in run["support"].items():
            target = out / run["name"] / "support" / label / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        for path, label in run["queries"]:
            target = out / run["name"] / "queries" / label / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True, help="folder for the model")
    parser.add_argument("--loss", default="triplet")
    parser.add_argument("--margin", type=float, default=None, help="default: the loss's own")
    parser.add_argument("--scale", type=float, default=None, help="default: the loss's own")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embedding-dim", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None, help="default: conv4's 28 px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--val-fraction", type=float, default=0.0, help="held out to pick the best epoch"
    )
    parser.add_argument("--ways", type=int, default=20, help="protonet's episodes")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--lookahead", action="store_true")
    parser.add_argument("--schedule", default="none", help="learning-rate schedule (cosine...)")
    parser.add_argument("--augment", default="none", help="augmentation preset (kshot train's)")
    parser.add_argument(
        "--augment-option", action="append", default=[], help="NAME=VALUE over the preset"
    )
    parser.add_argument("--export-runs", type=Path, default=None)
    args = parser.parse_args()
    model = args.out / f"omniglot-{args.loss}.kshot"
    with tempfile.TemporaryDirectory() as tmp:
        background = unpack_background(args.data, Path(tmp) / "background")
        recipe = TrainConfig(
            backbone="conv4",  # 28 px grey by default
            image_size=args.image_size,
            embedding_dim=args.embedding_dim,
            rotation_classes=True,
            augment=augment_config(args.augment, args.augment_option),
            loss=args.loss,
            loss_options={
                k: v
                for k, v in {"margin": args.margin, "scale": args.scale}.items()
                if v is not None
            },
            head_epochs=0,
            epochs=args.epochs,
            lr=args.lr,
            finetune_lr=None,
            schedule=args.schedule,
            batch_size=args.batch_size,
            ways=args.ways,
            shots=args.shots,
            queries=args.queries,
            lookahead=args.lookahead,
            seed=args.seed,
            val_fraction=args.val_fraction,
            holdout_classes=0,
        )
        train_from_folder(background, model, recipe)
        history = load_checkpoint(model)[1]["history"]
        seconds = sum(epoch["seconds"] for epoch in history) / len(history)
        runs = unpack_runs(args.data, Path(tmp) / "runs")
        errors = one_shot_errors(model, runs)
        if args.export_runs:
            export_runs(runs, args.export_runs)
    result = {
        "loss": args.loss,
        "epochs": args.epochs,
        "seconds_per_epoch": round(seconds, 1),
        "errors_per_run": errors,
        "wrong": sum(errors),
        "error_rate": sum(errors) / 400,
        "model": str(model),
    }
    print(json.dumps(result))
    print(
        f"| {args.loss} | {sum(errors)}/400 = {100 * sum(errors) / 400:.2f}% "
        f"| {args.epochs} | {seconds:.1f} s |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
