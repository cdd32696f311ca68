"""Training an embedder with a metric-learning loss, in up to two stages.

Stage 1 (``head_epochs``) trains what sits on a frozen backbone: the projection head and the
loss's own parameters (the angular losses' class weights). It does not augment (unless
``augment_head``), so the frozen backbone's features are computed once and it trains on them.
Stage 2 (``epochs``) unfreezes the backbone's last ``trainable_blocks`` blocks (all by
default) at ``finetune_lr``.

Batches are class-balanced (``m`` images of each of ``batch_size / m`` classes, from
pytorch-metric-learning's ``MPerClassSampler``) so that every batch holds positive pairs; the
prototypical loss gets episodes instead (:mod:`kshot.embedder.episodic_sampler`). Every
epoch reseeds from ``(seed, epoch)``, and the state after each epoch (weights, optimisers,
schedules, best score) can be saved, so a run resumed from its state file continues exactly as
if it had not stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pytorch_metric_learning.reducers import ClassWeightedReducer
from pytorch_metric_learning.utils import common_functions
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from kshot.embedder.augment import AugmentConfig, build_augment
from kshot.embedder.batches import epoch_loader
from kshot.embedder.distributed import Distributed
from kshot.embedder.episodic_sampler import episode_sizes, warn_about_small_classes
from kshot.embedder.freezing import freeze_backbone, set_train_mode, trainable_parameters
from kshot.embedder.inference import backbone_features
from kshot.embedder.layer_decay import layer_decay_groups
from kshot.embedder.losses import build_loss
from kshot.embedder.model import Embedder
from kshot.embedder.optim import build_optimizer, build_schedule, step_schedule
from kshot.embedder.recipe import TrainConfig
from kshot.embedder.runtime import tune_allocator
from kshot.embedder.step import LossModel, Stepper, _FromFeatures
from kshot.embedder.trainset import AugmentedImages, ImageSet, with_rotation_classes
from kshot.errors import KshotError

log = logging.getLogger("kshot")


SELECTION_ORDER = ("library_accuracy", "fewshot_accuracy", "precision_at_1")


def selection_score(metrics: dict) -> float | None:
    """What picks the best epoch, stops a stage early, drives ``plateau`` and chooses
    ``--interpolate auto``'s weight: the held-out classes' few-shot accuracy (what a few-shot
    embedder is for) when classes are held out, in the library of all classes where the
    known classes have references, else among the held-out classes alone; without held-out
    classes, the known classes' precision@1 (which stays in the log either way)."""
    for name in SELECTION_ORDER:
        if name in metrics:
            return metrics[name]
    return None


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    lr: float
    trainable_blocks: int | None  # of the backbone: 0 frozen, None all


def plan_stages(config: TrainConfig) -> list[Stage]:
    stages = []
    if config.head_epochs > 0:
        stages.append(Stage("head", config.head_epochs, config.lr, 0))
    finetune_lr = config.finetune_lr
    if finetune_lr is None:
        finetune_lr = config.lr / 10 if stages else config.lr
    if config.epochs > 0:
        name = "finetune" if stages else "train"
        stages.append(Stage(name, config.epochs, finetune_lr, config.trainable_blocks))
    if not stages:
        raise KshotError("nothing to train: epochs and head epochs are both 0")
    return stages


@dataclass(frozen=True)
class EpochStats:
    stage: str
    epoch: int  # counted over all stages, from 1
    loss: float
    seconds: float  # the training steps, without validation
    lr: float
    metrics: dict = field(default_factory=dict)  # the validation's, if any


@dataclass
class TrainResult:
    history: list[EpochStats]
    best_epoch: int | None  # the epoch whose weights the embedder ends with (None: the last)
    best_metrics: dict


class Observer:
    """What a training run tells its caller; the default does nothing.

    ``save_state`` gets a dict of tensors and plain values after every epoch, to write where a
    later run can :func:`train_embedder` it back as ``resume_from``."""

    def epoch_started(self, stage: str, epoch: int, steps: int) -> None: ...
    def step_done(self) -> None: ...
    def epoch_done(self, stats: EpochStats) -> None: ...
    def save_state(self, state: dict) -> None: ...
    def close(self) -> None: ...

    def notice(self, message: str) -> None:
        """A line for the person training (what is trained on, what was written)."""
        log.info(message)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    common_functions.NUMPY_RANDOM = np.random.RandomState(seed)  # pml's samplers and miners


def _class_codes(images: ImageSet, rotation_classes: bool) -> ImageSet:
    """Labels recoded 0..C-1: the angular losses index their class weights by them."""
    codes = torch.as_tensor(np.unique(images.labels.numpy(), return_inverse=True)[1].reshape(-1))
    images = ImageSet(images.pixels, codes)
    return with_rotation_classes(images) if rotation_classes else images


def _class_weights(labels: torch.Tensor) -> torch.Tensor:
    """1 / class frequency, scaled to average 1 over the images."""
    counts = torch.bincount(labels).float()
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return weights * len(labels) / weights[labels].sum()


def _check_resumable(state: dict, config: TrainConfig, images: ImageSet) -> None:
    # A setting added since the state was written counts as its default.
    saved = TrainConfig().to_dict() | state["config"]
    now = config.to_dict()
    changed = sorted(k for k in now if saved[k] != now[k] and k != "patience")
    if changed:
        raise KshotError(
            "cannot resume: the training settings differ from the stopped run's in "
            + ", ".join(f"{k} ({saved.get(k)!r} then, {now[k]!r} now)" for k in changed)
        )
    if state["images"] != len(images):
        raise KshotError(
            f"cannot resume: the stopped run trained on {state['images']} images, "
            f"this one has {len(images)}"
        )


def train_embedder(
    embedder: Embedder,
    images: ImageSet,
    config: TrainConfig,
    *,
    validate: Callable[[Embedder], dict] | None = None,
    observer: Observer | None = None,
    device: torch.device | None = None,
    world: Distributed | None = None,
    resume_from: dict | None = None,
) -> TrainResult:
    """Train ``embedder`` in place on ``images``; returns the history.

    ``validate(embedder) -> metrics`` runs after every epoch (on the main process); if its
    metrics hold a score (:func:`selection_score`), the embedder ends with the weights of the
    epoch that scored best, and ``patience`` stops a stage that has stopped improving.
    """
    observer, world = observer or Observer(), world or Distributed()
    device = device or torch.device("cpu")
    if len(torch.unique(images.labels)) < 2:
        raise KshotError("training needs at least two classes")
    tune_allocator()
    images = _class_codes(images, config.rotation_classes)
    classes = int(images.labels.max()) + 1
    extra = {}
    if config.class_weights:
        extra["reducer"] = ClassWeightedReducer(_class_weights(images.labels))
    if config.loss == "protonet":
        ways, shots, queries = episode_sizes(
            images.labels, config.ways, config.shots, config.queries
        )
        config = dataclasses.replace(config, ways=ways, shots=shots, queries=queries)
        warn_about_small_classes(images.labels, shots, queries)
        extra["shots"] = shots
    loss_fn, miner = build_loss(
        config.loss, classes, embedder.embedding_dim, **{**config.loss_options, **extra}
    )
    anchor = None
    if config.feature_distillation > 0:  # the pretrained backbone, before any resumed state
        anchor = copy.deepcopy(embedder.backbone).eval().requires_grad_(False).to(device)
    embedder.to(device)
    loss_fn.to(device)
    run = _Run(embedder, loss_fn, miner, images, config, observer, device, world, validate)
    run.anchor = anchor
    if resume_from is not None:
        _check_resumable(resume_from, config, images)
        run.restore(resume_from)
    for index, stage in enumerate(plan_stages(config)):
        if index >= run.stage_index:
            run.train_stage(index, stage)
    if run.best_state is not None:
        embedder.load_state_dict(run.best_state)
    embedder.eval()
    return TrainResult(run.history, run.best_epoch, run.best_metrics)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Each epoch's own seed: a resumed run draws the same batches as an unbroken one."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class _Run:
    """The state of one training run across its stages and epochs."""

    def __init__(self, embedder, loss_fn, miner, images, config, observer, device, world, validate):
        self.embedder, self.loss_fn, self.miner = embedder, loss_fn, miner
        self.images, self.config, self.observer = images, config, observer
        self.device, self.world, self.validate = device, world, validate
        self.history: list[EpochStats] = []
        self.best_state: dict | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict = {}
        self.best_score = float("-inf")
        self.stage_index, self.stage_epoch, self.stale = 0, 0, 0
        self.saved_optimizers: dict | None = None
        self.anchor: nn.Module | None = None  # see LossModel

    def restore(self, state: dict) -> None:
        self.embedder.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.history = [EpochStats(**stats) for stats in state["history"]]
        self.best_state, self.best_epoch = state["best_state"], state["best_epoch"]
        self.best_metrics, self.best_score = state["best_metrics"], state["best_score"]
        self.stage_index, self.stage_epoch = state["stage_index"], state["stage_epoch"]
        self.stale = state["stale"]
        self.saved_optimizers = state["optimizers"]
        if state["stage_finished"]:
            self.stage_index, self.stage_epoch, self.stale = self.stage_index + 1, 0, 0
            self.saved_optimizers = None

    def _inputs(self, cached: bool, augment: bool) -> tuple[nn.Module, torch.utils.data.Dataset]:
        """The network a stage trains and what it reads: frozen-backbone features computed
        once, or the images, augmented if ``augment``."""
        if cached:
            features = backbone_features(self.embedder, self.images.pixels)
            return _FromFeatures(self.embedder), TensorDataset(features, self.images.labels)
        preprocess = self.embedder.config.preprocess
        augment = build_augment(
            self.config.augment if augment else AugmentConfig(), preprocess.input_size
        )
        return self.embedder, AugmentedImages(self.images, augment, preprocess)

    def _optimizers(self, stage: Stage) -> list[torch.optim.Optimizer]:
        """One for the embedder's trainable weights, one for the loss's own (the class weights
        of the angular losses; pytorch-metric-learning has them optimised separately)."""
        config, optimizers = self.config, []
        embedder_params = trainable_parameters(self.embedder)
        if config.layer_decay != 1.0 and stage.trainable_blocks != 0 and embedder_params:
            embedder_params = layer_decay_groups(self.embedder, stage.lr, config.layer_decay)
        for params, lr in (
            (embedder_params, stage.lr),
            (trainable_parameters(self.loss_fn), config.lr),
        ):
            if params:
                optimizers.append(
                    build_optimizer(
                        config.optimizer, params, lr, config.weight_decay, config.lookahead
                    )
                )
        return optimizers

    def train_stage(self, index: int, stage: Stage) -> None:
        config, world = self.config, self.world
        frozen = freeze_backbone(self.embedder, stage.trainable_blocks)
        optimizers = self._optimizers(stage)
        if not optimizers:
            log.info("stage %r skipped: it has nothing to train", stage.name)
            return
        augment = config.augment.active and (stage.trainable_blocks != 0 or config.augment_head)
        net, dataset = self._inputs(
            cached=stage.trainable_blocks == 0 and not augment, augment=augment
        )
        anchor = self.anchor if net is self.embedder and stage.trainable_blocks != 0 else None
        distill = config.feature_distillation
        model: nn.Module = LossModel(net, self.loss_fn, self.miner, anchor, distill)
        if world.enabled:
            ids = [self.device] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        schedules = [build_schedule(config.schedule, o, stage.epochs) for o in optimizers]
        if self.saved_optimizers is not None:
            for optimizer, state in zip(
                optimizers, self.saved_optimizers["optimizers"], strict=True
            ):
                optimizer.load_state_dict(state)
            for schedule, state in zip(schedules, self.saved_optimizers["schedules"], strict=True):
                if schedule is not None:
                    schedule.load_state_dict(state)
        step = Stepper(model, optimizers, self.device, config.amp)
        for stage_epoch in range(self.stage_epoch + 1, stage.epochs + 1):
            epoch = len(self.history) + 1
            seed_everything(_epoch_seed(config.seed, epoch, world.rank))
            loader = epoch_loader(dataset, self.images.labels, config, world)
            set_train_mode(self.embedder, frozen)
            self.observer.epoch_started(stage.name, epoch, len(loader))
            start, total, steps = time.perf_counter(), torch.zeros((), device=self.device), 0
            for inputs, labels in loader:
                total += step(inputs, labels)
                steps += 1
                self.observer.step_done()
            seconds = time.perf_counter() - start
            loss = total.item() / max(steps, 1)
            lr = optimizers[0].param_groups[0]["lr"]
            # A stage that trains only the loss's class weights leaves the embedding as it was.
            metrics = self._validated() if trainable_parameters(self.embedder) else {}
            score = selection_score(metrics)
            score = -loss if score is None else score
            for schedule in schedules:
                step_schedule(schedule, score)
            stats = EpochStats(stage.name, epoch, loss, seconds, lr, metrics)
            self.history.append(stats)
            self._keep_if_best(stats)
            finished = stage_epoch == stage.epochs or (
                config.patience is not None and self.stale >= config.patience
            )
            self.observer.epoch_done(stats)
            if world.is_main:
                state = self._state(index, stage_epoch, finished, optimizers, schedules)
                self.observer.save_state(state)
            if finished:
                break
        self.stage_epoch, self.stale, self.saved_optimizers = 0, 0, None

    def _validated(self) -> dict:
        if self.validate is None:
            return {}
        metrics = self.validate(self.embedder) if self.world.is_main else None
        return self.world.share_from_main(metrics)

    def _keep_if_best(self, stats: EpochStats) -> None:
        score = selection_score(stats.metrics)
        if score is None:
            return
        if score > self.best_score:
            self.best_score, self.best_epoch, self.best_metrics = (
                score,
                stats.epoch,
                dict(stats.metrics),
            )
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in self.embedder.state_dict().items()
            }
            self.stale = 0
        else:
            self.stale += 1

    def _state(self, index, stage_epoch, finished, optimizers, schedules) -> dict:
        """Everything a resumed run needs, as tensors and plain values (``weights_only``)."""
        return {
            "config": self.config.to_dict(),
            "images": len(self.images),
            "model": {k: v.detach().cpu().clone() for k, v in self.embedder.state_dict().items()},
            "loss": {k: v.detach().cpu().clone() for k, v in self.loss_fn.state_dict().items()},
            "optimizers": {
                "optimizers": [copy.deepcopy(o.state_dict()) for o in optimizers],
                "schedules": [s.state_dict() if s is not None else None for s in schedules],
            },
            "stage_index": index,
            "stage_epoch": stage_epoch,
            "stage_finished": finished,
            "stale": self.stale,
            "history": [dataclasses.asdict(stats) for stats in self.history],
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "best_score": self.best_score,
        }
