"""PlantVillage as a few-shot task: train on 23 crops' classes, enroll 15 new ones from 1 or 5.

``../shared/data/plantvillage-leaf38`` holds 38 leaf-disease classes (40-50 photos each). The
23 classes of the crops other than Tomato, Potato and Pepper train the embedder with ``kshot
train``'s code (``train_from_folder``); the 15 Tomato, Potato and Pepper classes are then
enrolled from 1 and from 5 photos each and every other photo of theirs is a query: 15-way
accuracy, the mean of 5 seeded draws of the enrolled photos (drawn from the photos that are
not queries). Decisions are kshot's class prototypes; ``logreg`` columns fit a logistic
regression on the enrolled photos' embeddings instead (a small classifier per enrollment).

Each loss is trained twice from the same seed: stage 1 alone (the head, or the loss's class
weights, on the frozen backbone) and stage 1 then stage 2 (fine-tuning), so the table shows
where each stage helps or hurts. The zero-training baseline is the backbone's ImageNet features.

    python benchmarks/plantvillage.py --out /tmp/pv --loss arcface --loss triplet
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from kshot.embedder.augment import augment_config
from kshot.embedder.checkpoint import load_checkpoint
from kshot.embedder.images import class_folders
from kshot.embedder.inference import embed_files
from kshot.embedder.interpolation import interpolate_state
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.recipe import TrainConfig
from kshot.embedder.run import train_from_folder
from kshot.fewshot.rules.prototype import PrototypeRule

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "plantvillage-leaf38"
NEW_CROPS = ("Tomato", "Potato", "Pepper")
DRAWS = 5


def split_classes(data: Path) -> tuple[list[Path], list[Path]]:
    """The base classes' folders and the new (Tomato, Potato, Pepper) classes' folders."""
    folders = [folder for folder, images in class_folders(data) if images]
    new = [f for f in folders if f.name.startswith(NEW_CROPS)]
    return [f for f in folders if f not in new], new


def base_folder(base: list[Path], root: Path) -> Path:
    """The base classes as one training folder of links (the data is not copied)."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in base:
        (root / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    return root


def few_shot_accuracy(embedder, new: list[Path]) -> dict:
    """15-way accuracy at 1 and 5 shots: mean over seeded draws, prototypes and logreg."""
    paths, labels = [], []
    for folder in new:
        for path in sorted(folder.iterdir()):
            paths.append(path)
            labels.append(folder.name)
    embedded = embed_files(embedder, paths)
    vectors, labels = embedded.vectors, np.asarray(labels)[embedded.indices]
    result = {}
    for shots in (1, 5):
        proto, logreg = [], []
        for draw in range(DRAWS):
            rng = np.random.default_rng(draw)
            support, query = [], []
            for name in np.unique(labels):
                members = np.flatnonzero(labels == name)
                query.extend(members[1::2])  # every other photo is a query
                support.extend(rng.choice(members[0::2], size=shots, replace=False))
            rule = PrototypeRule().fit(vectors[support], labels[support].tolist())
            predicted = np.asarray(rule.classes)[rule.scores(vectors[query]).argmax(axis=1)]
            proto.append(float(np.mean(predicted == labels[query])))
            classifier = LogisticRegression(C=10.0, max_iter=1000)
            classifier.fit(vectors[support], labels[support])
            logreg.append(float(np.mean(classifier.predict(vectors[query]) == labels[query])))
        result[f"{shots}shot"] = float(np.mean(proto))
        result[f"{shots}shot_logreg"] = float(np.mean(logreg))
    return result


def interpolated_scores(model: Path, alphas: list[float], new: list[Path]) -> dict:
    """The new classes' accuracy with the trained backbone interpolated toward the pretrained
    one (WiSE-FT) at each of ``alphas``: the same training run, scored after the fact."""
    embedder, _ = load_checkpoint(model)
    original = build_embedder(embedder.config).backbone.state_dict()
    tuned = {k: v.clone() for k, v in embedder.backbone.state_dict().items()}
    scores = {}
    for alpha in alphas:
        embedder.backbone.load_state_dict(interpolate_state(original, tuned, alpha))
        scores[str(alpha)] = few_shot_accuracy(embedder, new)
    return scores


def train_and_score(args, loss: str, base: Path, new: list[Path], stage2: bool) -> dict:
    model = args.out / f"plantvillage-{loss}{args.tag}-{'both' if stage2 else 'stage1'}.kshot"
    start = time.perf_counter()
    recipe = TrainConfig(
        backbone=args.backbone,
        embedding_dim=args.embedding_dim,
        head_hidden=args.head_hidden,
        residual_head=args.residual_head,
        loss=loss,
        head_epochs=args.head_epochs,
        epochs=args.epochs if stage2 else 0,
        trainable_blocks=args.trainable_blocks,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        batch_size=args.batch_size,
        ways=args.ways,
        shots=args.shots,
        queries=args.queries,
        lookahead=args.lookahead,
        interpolate=args.interpolate,
        feature_distillation=args.feature_distillation,
        layer_decay=args.layer_decay,
        augment=augment_config(args.augment),
        schedule=args.schedule,
        val_fraction=args.val_fraction,
        holdout_classes=args.holdout_classes,
        seed=args.seed,
    )
    train_from_folder(base, model, recipe)
    seconds = time.perf_counter() - start
    embedder, info = load_checkpoint(model)
    history = info["history"]
    epochs = [h["seconds"] for h in history if h["stage"] != "head"]
    row = {}
    if stage2 and args.alphas:
        row["interpolated"] = interpolated_scores(model, args.alphas, new)
    return (
        row
        | few_shot_accuracy(embedder, new)
        | {
            "minutes": round(seconds / 60, 2),
            "best_epoch": info["best_epoch"],
            "seconds_per_finetune_epoch": round(float(np.mean(epochs)), 1) if epochs else None,
            "scores_before": info["scores_before"],
            "scores_after": info["scores_after"],
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True, help="folder for models and JSON")
    parser.add_argument("--loss", action="append", help="repeatable; default: arcface")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--embedding-dim", type=int, default=None)
    parser.add_argument("--head-hidden", type=int, default=None)
    parser.add_argument("--residual-head", action="store_true")
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trainable-blocks", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ways", type=int, default=20, help="protonet's episodes")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--lookahead", action="store_true")
    parser.add_argument("--interpolate", default=None, help="WiSE-FT: a weight or auto")
    parser.add_argument("--feature-distillation", type=float, default=0.0)
    parser.add_argument("--layer-decay", type=float, default=1.0)
    parser.add_argument("--tag", default="", help="added to the model files' names")
    parser.add_argument(
        "--alphas", type=float, nargs="*", default=[], help="score WiSE-FT at these weights"
    )
    parser.add_argument("--augment", default="photo")
    parser.add_argument("--schedule", default="none")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--holdout-classes", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-stage1-only", action="store_true")
    parser.add_argument("--baseline", action="store_true", help="also score ImageNet features")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base_classes, new = split_classes(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = base_folder(base_classes, Path(tmp) / "base")
        if args.baseline:
            config = EmbedderConfig.for_backbone(args.backbone)
            baseline = few_shot_accuracy(build_embedder(config), new)
            rows.append({"loss": "none (ImageNet features)", "stage": "-"} | baseline)
            print(json.dumps(rows[-1]), flush=True)
        for loss in args.loss or ["arcface"]:
            stages = [True] if args.skip_stage1_only else [False, True]
            if args.epochs == 0:  # stage 1 alone
                stages = [False]
            for stage2 in stages:
                row = {"loss": loss, "stage": "1+2" if stage2 else "1"}
                rows.append(row | train_and_score(args, loss, base, new, stage2))
                print(json.dumps(rows[-1]), flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}))
    print("| loss | stages | 1-shot | 5-shot | 1-shot logreg | 5-shot logreg | s/epoch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['loss']} | {r['stage']} | {r['1shot']:.1%} | {r['5shot']:.1%} "
            f"| {r['1shot_logreg']:.1%} | {r['5shot_logreg']:.1%} "
            f"| {r.get('seconds_per_finetune_epoch') or '-'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
