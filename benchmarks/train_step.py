"""kshot's training step against a bare PyTorch loop: same model, loss, miner and batch.

The bare loop is what one writes by hand: forward, mine, loss, zero_grad, backward, step of
the model's and the loss's optimisers. kshot's is ``kshot.embedder.step.Stepper`` around
``LossModel``, as ``train_embedder`` runs it. The two alternate in rounds (so drift in machine
speed hits both alike), from the same starting weights; the figure is the median step time.
A third row times kshot's whole epoch loop per step: the class-balanced sampler and the
per-image normalisation of the uint8 crops as well (no augmentation), which the bare loop,
given a ready float batch, does not do.

    python benchmarks/train_step.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

from kshot.embedder.augment import AugmentConfig, build_augment
from kshot.embedder.batches import epoch_loader
from kshot.embedder.distributed import Distributed
from kshot.embedder.losses import build_loss
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.optim import build_optimizer
from kshot.embedder.recipe import TrainConfig
from kshot.embedder.runtime import tune_allocator
from kshot.embedder.step import LossModel, Stepper
from kshot.embedder.trainset import AugmentedImages, ImageSet


def setup(backbone: str, loss_name: str, batch: int, classes: int):
    torch.manual_seed(0)
    config = EmbedderConfig.for_backbone(backbone)
    embedder = build_embedder(config, pretrained=False).train()
    pre = config.preprocess
    side = pre.input_size
    pixels = torch.randint(0, 256, (batch * 4, pre.channels, side, side), dtype=torch.uint8)
    labels = torch.arange(batch * 4) % classes
    loss, miner = build_loss(loss_name, classes, embedder.embedding_dim)
    return embedder, loss, miner, ImageSet(pixels, labels), pre


def bare_step(embedder, loss_fn, miner, optimizers, x, y) -> None:
    embeddings = embedder(x)
    pairs = miner(embeddings, y) if miner is not None else None
    loss = loss_fn(embeddings, y, pairs)
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


def optimizers_for(embedder, loss_fn) -> list:
    found = [build_optimizer("adam", list(embedder.parameters()), 1e-4, None)]
    if list(loss_fn.parameters()):
        found.append(build_optimizer("adam", list(loss_fn.parameters()), 1e-3, None))
    return found


def measure(backbone: str, loss_name: str, batch: int, rounds: int, steps: int) -> dict:
    # 4 images of each of batch / 4 classes, in the bare batch as in kshot's sampled ones
    embedder, loss_fn, miner, images, pre = setup(backbone, loss_name, batch, batch // 4)
    x = pre.normalize(images.pixels[:batch])
    y = images.labels[:batch]
    bare = (copy.deepcopy(embedder), copy.deepcopy(loss_fn))
    bare_opts = optimizers_for(*bare)
    ours = LossModel(embedder, loss_fn, miner)
    stepper = Stepper(ours, optimizers_for(embedder, loss_fn), torch.device("cpu"), amp=True)
    config = TrainConfig(batch_size=batch, samples_per_class=4)
    dataset = AugmentedImages(images, build_augment(AugmentConfig()), pre)
    times = {"bare": [], "kshot_step": [], "kshot_loop": []}
    for round_ in range(rounds + 1):  # round 0 warms up and is not counted
        start = time.perf_counter()
        for _ in range(steps):
            bare_step(*bare, miner, bare_opts, x, y)
        times["bare"].append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        for _ in range(steps):
            stepper(x, y).item()
        times["kshot_step"].append((time.perf_counter() - start) / steps)
        loader = iter(epoch_loader(dataset, images.labels, config, Distributed()))
        start = time.perf_counter()
        for _ in range(steps):
            inputs, labels = next(loader)
            stepper(inputs, labels).item()
        times["kshot_loop"].append((time.perf_counter() - start) / steps)
        if round_ == 0:
            times = {k: [] for k in times}
    medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return (
        {"backbone": backbone, "loss": loss_name, "batch": batch}
        | {f"{k}_ms": round(v, 1) for k, v in medians.items()}
        | {
            "step_overhead": round(medians["kshot_step"] / medians["bare"] - 1, 4),
            "loop_overhead": round(medians["kshot_loop"] / medians["bare"] - 1, 4),
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    tune_allocator()
    cases = [("conv4", "triplet", 128), ("efficientnet_lite0", "arcface", 32)]
    rows = [measure(b, loss, batch, args.rounds, args.steps) for b, loss, batch in cases]
    print(
        "| backbone | loss | batch | bare ms | kshot step ms | overhead "
        "| kshot loop ms | overhead |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(json.dumps(r), file=sys.stderr)
        print(
            f"| {r['backbone']} | {r['loss']} | {r['batch']} | {r['bare_ms']} "
            f"| {r['kshot_step_ms']} | {r['step_overhead']:+.1%} | {r['kshot_loop_ms']} "
            f"| {r['loop_overhead']:+.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
