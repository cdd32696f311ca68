"""Distillation: a small student embedder trained to embed images as a big teacher does.

The student is an ordinary embedder, a backbone with no head: it embeds with its own features,
so before distillation it is its pretrained backbone as it is, and its model file works
wherever a trained one does. It learns from images alone, labelled or not: each image's teacher
embedding is the target. The loss is ``1 - cosine`` (or the squared distance, ``mse``) between
the two embeddings, plus ``relational`` times the squared difference between the batch's
pairwise cosine similarities as the student and as the teacher see them (relational knowledge
distillation, Park et al. 2019): what a few-shot library uses is how images relate, not where
each one lies. Where the two sizes differ, the first term compares the teacher's embeddings with
the student's mapped by a projection that belongs to the loss (:class:`DistillLoss`) and is
dropped after; the relational term needs none. A head onto the teacher's size, as this module
first had, made the student's embedding a new space learnt from the distillation images alone:
on PlantVillage every such student ended below its own backbone untrained (BENCHMARKS.md).

Teacher and student each decode and preprocess the images their own way (size, channels,
normalisation), so any pair works. The teacher embeds every image once, without augmentation,
which is why the student sees the images as they are.

Images or whole classes are held out to report on (kshot.embedder.distill_holdout).
Written by hand: neither pytorch-metric-learning nor timm has a feature-distillation loss.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kshot.embedder.distill_holdout import DistillHoldout, plan_holdout
from kshot.embedder.images import class_folders, list_images
from kshot.embedder.inference import embed_pixels, load_pixels
from kshot.embedder.model import Embedder
from kshot.embedder.runtime import tune_allocator
from kshot.embedder.training import seed_everything
from kshot.errors import KshotError

log = logging.getLogger("kshot")

DISTILL_LOSSES = ("cosine", "mse")


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-4  # kshot train's --finetune-lr: the student's backbone is pretrained
    loss: str = "cosine"
    relational: float = 1.0  # the weight of the relational term; 0: off
    holdout: float = 0.1  # the share of images kept out to report the loss on
    holdout_classes: int = 0  # with class folders: whole classes kept out to score on
    seed: int = 0

    def __post_init__(self):
        if self.loss not in DISTILL_LOSSES:
            raise KshotError(
                f"unknown distillation loss {self.loss!r}; known: {', '.join(DISTILL_LOSSES)}"
            )
        if self.relational < 0:
            raise KshotError(f"the relational weight must be at least 0, not {self.relational}")
        if not 0.0 <= self.holdout < 1.0:
            raise KshotError(f"the held-out share must be in [0, 1), not {self.holdout}")


def build_student(
    backbone: str,
    image_size: int | None = None,
    pretrained: bool = True,
    weights: Path | None = None,
) -> Embedder:
    """An embedder on ``backbone`` (its own preprocessing, at ``image_size`` if given), no head."""
    from kshot.embedder.backbones import get_backbone
    from kshot.embedder.model import build_embedder
    from kshot.embedder.recipe import TrainConfig
    from kshot.embedder.run import embedder_config

    config = embedder_config(TrainConfig(backbone=backbone, image_size=image_size))
    has_weights = pretrained and get_backbone(backbone).pretrained is not None
    return build_embedder(config, pretrained=has_weights, weights_file=weights)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    config: DistillConfig,
    mapped: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of unit-length ``student`` embeddings ``(n, D)`` against ``teacher``'s ``(n,
    T)``: the first term on ``mapped`` ``(n, T)`` (the student's mapped onto the teacher's size)
    where given, else on ``student`` (``D == T``); the relational term on ``student``."""
    direct = student if mapped is None else mapped
    if config.loss == "cosine":
        loss = (1 - F.cosine_similarity(direct, teacher, dim=1)).mean()
    else:
        loss = ((direct - teacher) ** 2).sum(1).mean()
    if config.relational and len(student) > 1:
        student_relations = student @ student.t()
        teacher_relations = teacher @ teacher.t()
        loss = loss + config.relational * F.mse_loss(student_relations, teacher_relations)
    return loss


class DistillLoss(nn.Module):
    """:func:`distillation_loss`, through a projection ``D -> T`` (no bias, its output
    L2-normalised) where the student's size ``D`` and the teacher's ``T`` differ.

    The projection starts as the ridge regression of the teacher's embeddings on the student's
    initial ones (``start``: ``(n, D)`` and ``(n, T)``), so the first steps follow the teacher
    rather than a random map. Written by hand: pytorch-metric-learning and timm have no
    feature-distillation loss."""

    RIDGE = 1.0  # on unit-length rows; n images give the Gram matrix a trace of n

    def __init__(
        self, config: DistillConfig, start: tuple[torch.Tensor, torch.Tensor] | None = None
    ):
        super().__init__()
        self.config = config
        self.projection: nn.Linear | None = None
        if start is not None and start[0].shape[1] != start[1].shape[1]:
            student, teacher = (x.double() for x in start)
            gram = student.t() @ student + self.RIDGE * torch.eye(student.shape[1]).double()
            weight = torch.linalg.solve(gram, student.t() @ teacher)  # (D, T)
            self.projection = nn.Linear(student.shape[1], teacher.shape[1], bias=False)
            self.projection.weight.data = weight.t().float().contiguous()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        mapped = None
        if self.projection is not None:
            mapped = F.normalize(self.projection(student), dim=1)
        return distillation_loss(student, teacher, self.config, mapped)


def image_files(data: Path) -> list[Path]:
    """The images directly in ``data`` and in its sub-folders (classes or not)."""
    data = Path(data)
    if not data.is_dir():
        raise KshotError(f"{data}: no such directory")
    files = list_images(data) + [path for _, images in class_folders(data) for path in images]
    if not files:
        raise KshotError(f"{data}: no images, in it or in its sub-folders")
    return files


@dataclass(frozen=True)
class DistillImages:
    """The same images decoded for the teacher and for the student."""

    teacher: torch.Tensor  # uint8 crops, the teacher's size and channels
    student: torch.Tensor  # uint8 crops, the student's
    paths: list[Path]
    labels: np.ndarray | None = None  # each image's class, where they come in classes


def load_images(
    files: list[Path], teacher: Embedder, student: Embedder, labels: np.ndarray | None = None
) -> DistillImages:
    """Decode ``files`` (of classes ``labels``, if given) twice, once as each network expects;
    a file either cannot read is reported and left out."""
    teacher_pixels, teacher_kept, failed = load_pixels(teacher.config.preprocess, files)
    student_pixels, student_kept, _ = load_pixels(student.config.preprocess, files)
    for _, error in failed:
        log.warning("skipping %s", error)
    both = sorted(set(teacher_kept) & set(student_kept))
    if len(both) < 2:
        raise KshotError(f"distillation needs at least two readable images; {len(both)} are")
    t_index = {i: n for n, i in enumerate(teacher_kept)}
    s_index = {i: n for n, i in enumerate(student_kept)}
    return DistillImages(
        teacher_pixels[[t_index[i] for i in both]],
        student_pixels[[s_index[i] for i in both]],
        [files[i] for i in both],
        None if labels is None else np.asarray(labels)[both],
    )


def holdout_plan(images: DistillImages, config: DistillConfig) -> DistillHoldout:
    """What ``config`` holds out of ``images`` to report on."""
    return plan_holdout(
        images.student, images.labels, config.holdout, config.holdout_classes, config.seed
    )


@dataclass
class DistillResult:
    loss_before: float  # the student's loss on the held-out images, before training
    loss_after: float  # and after
    history: list[dict]  # per epoch: epoch, loss (batches' mean), seconds, eval_loss, scores
    held_out: int = 0  # images kept out of training; 0: the loss is the training images'
    scores_before: dict = dataclasses.field(default_factory=dict)  # held-out classes', if any
    scores_after: dict = dataclasses.field(default_factory=dict)
    held_classes: list[str] = dataclasses.field(default_factory=list)


def student_loss(
    student: Embedder, pixels: torch.Tensor, targets: torch.Tensor, loss_fn: DistillLoss
) -> float:
    """The loss over all images at once, the student in eval mode."""
    return _loss_of(torch.from_numpy(embed_pixels(student, pixels)), targets, loss_fn)


def _loss_of(vectors: torch.Tensor, targets: torch.Tensor, loss_fn: DistillLoss) -> float:
    """The loss of embeddings already made, on the loss's device."""
    device = next(loss_fn.parameters(), targets).device
    with torch.no_grad():
        return float(loss_fn(vectors.to(device), targets.to(device)))


def distill(
    teacher: Embedder,
    student: Embedder,
    images: DistillImages,
    config: DistillConfig,
    device: torch.device | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    plan: DistillHoldout | None = None,
) -> DistillResult:
    """Train ``student`` in place for ``config.epochs`` epochs to embed ``images`` as
    ``teacher`` does, scoring after each what ``plan`` holds out (by default
    :func:`holdout_plan`'s). The student keeps its last weights: see distill_holdout for why
    no score picks an epoch."""
    device = device or torch.device("cpu")
    tune_allocator()  # embedding the teacher's targets took 3.4x as long without (256 images)
    teacher = teacher.for_inference(device)  # channels-last: 1.9x faster again
    student.to(device)
    plan = plan or holdout_plan(images, config)
    train, held = plan.train, plan.held
    targets = torch.from_numpy(embed_pixels(teacher, images.teacher))
    initial = torch.from_numpy(embed_pixels(student, images.student))
    loss_fn = DistillLoss(config, (initial[train], targets[train])).to(device)
    before = _loss_of(initial[held], targets[held], loss_fn)  # the start: embedded once
    scores_before = plan.validation(student) if plan.validation is not None else {}
    optimizer = torch.optim.Adam([*student.parameters(), *loss_fn.parameters()], lr=config.lr)
    normalize = student.config.preprocess.normalize
    history = []
    for epoch in range(1, config.epochs + 1):
        seed_everything(config.seed + epoch)
        student.train()
        start, losses = time.perf_counter(), []
        order = train[torch.randperm(len(train))]
        batch = max(2, min(config.batch_size, len(order)))
        for begin in range(0, len(order) - batch + 1, batch):
            chosen = order[begin : begin + batch]
            inputs = normalize(images.student[chosen]).to(device)
            loss = loss_fn(student(inputs), targets[chosen].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        stats = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - start,
        }
        stats["eval_loss"] = student_loss(student, images.student[held], targets[held], loss_fn)
        stats["scores"] = plan.validation(student) if plan.validation is not None else {}
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    student.eval()
    last = history[-1] if history else {"eval_loss": before, "scores": scores_before}
    return DistillResult(
        before, last["eval_loss"], history, plan.held_out, scores_before, last["scores"],
        plan.classes,
    )  # fmt: skip


def distill_info(
    teacher_file: Path, teacher_hash: str, data: Path, config: DistillConfig, result
) -> dict:
    """What the student's model file says about how it was made."""
    return {
        "trained": True,
        "distilled": True,
        # Names only: a model file travels, and a full path tells where its maker keeps files.
        "teacher": Path(teacher_file).name,
        "teacher_model": teacher_hash,
        "data": Path(data).resolve().name,
        "distill": dataclasses.asdict(config),
        "loss_before": result.loss_before,
        "loss_after": result.loss_after,
        "held_out_images": result.held_out,
        "holdout_classes": result.held_classes,
        "scores_before": result.scores_before,
        "scores_after": result.scores_after,
        "history": result.history,
    }
