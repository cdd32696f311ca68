"""A training run from a folder of class sub-folders to a model file: what ``kshot train`` does.

It reads the folder, builds the embedder (the backbone's preprocessing, or the image size,
channels and normalisation asked for), splits the classes (held-out images of the training
classes, and whole held-out classes that training never sees), scores the untrained backbone,
trains (:func:`kshot.embedder.training.train_embedder`), optionally interpolates the backbone's
weights back toward the pretrained ones, and writes the model with how it was made.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kshot.embedder.backbones import get_backbone
from kshot.embedder.checkpoint import save_checkpoint
from kshot.embedder.default_backbones import default_embedder
from kshot.embedder.distributed import Distributed, start_from_env, stop
from kshot.embedder.ensemble import is_ensemble, normalization_error
from kshot.embedder.interpolation import apply_interpolation
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.precision import check_precision
from kshot.embedder.preprocess import IMAGENET_MEAN, IMAGENET_STD, dataset_mean_std
from kshot.embedder.recipe import TrainConfig
from kshot.embedder.training import Observer, seed_everything, train_embedder
from kshot.embedder.training_folder import read_training_folder, read_validation_folder
from kshot.embedder.trainset import split_data
from kshot.embedder.weights import read_torch_file
from kshot.errors import KshotError
from kshot.fewshot.validation import TrainingValidation

log = logging.getLogger("kshot")

# (epochs in all, the state file) -> what watches the run on the main process.
ConsoleFactory = Callable[[int, Path], Observer]


@dataclass(frozen=True)
class RunFiles:
    """The files a run reads besides its data: backbone weights (offline) and a validation
    folder of the training classes (replacing ``val_fraction`` of each class)."""

    weights: Path | None = None
    val: Path | None = None


def state_path(model: Path) -> Path:
    """Where a run writing ``model`` keeps its state while it trains."""
    return model.with_name(model.name + ".state")


def default_holdout_classes(classes: int) -> int:
    """A fifth of the classes, at most 5, and none unless at least 2 (a 2-way episode)."""
    count = min(5, classes // 5)
    return count if count >= 2 else 0


def resolve_backbone(config: TrainConfig) -> TrainConfig:
    """``config`` with its backbone named: with none given, the ensemble that scored best on new
    classes after training (BENCHMARKS.md, issue 9), and a notice when it falls back for want of
    MobileNetV2's weights."""
    if config.backbone is not None:
        return config
    backbone, notice = default_embedder(training=True)
    if notice:
        log.warning("%s", notice)
    return dataclasses.replace(config, backbone=backbone)


def embedder_config(config: TrainConfig, data_mean_std: tuple | None = None) -> EmbedderConfig:
    """``data_mean_std``: the training images' own statistics, for ``normalization="dataset"``."""
    if config.normalization != "backbone" and is_ensemble(config.backbone):
        raise normalization_error(config.backbone)
    preprocess = get_backbone(config.backbone).default_preprocess()
    image_size, channels = config.image_size, config.channels
    if image_size is not None:  # keep the backbone's resize-to-crop ratio
        resize = round(image_size * preprocess.resize_size / preprocess.input_size)
        preprocess = dataclasses.replace(preprocess, input_size=image_size, resize_size=resize)
    if channels is not None and channels != preprocess.channels:
        mean = preprocess.mean[:1] * channels
        std = preprocess.std[:1] * channels
        preprocess = dataclasses.replace(preprocess, channels=channels, mean=mean, std=std)
    if config.normalization == "imagenet":
        preprocess = preprocess.with_normalization(IMAGENET_MEAN, IMAGENET_STD)
    elif config.normalization == "dataset" and data_mean_std is not None:
        preprocess = preprocess.with_normalization(*data_mean_std)
    try:
        return EmbedderConfig(
            config.backbone,
            preprocess,
            embedding_dim=config.embedding_dim,
            head_hidden=config.head_hidden,
            residual=config.residual_head,
        )
    except ValueError as exc:
        raise KshotError(str(exc)) from None


def train_from_folder(
    data: Path,
    out: Path,
    config: TrainConfig | None = None,
    *,
    files: RunFiles | None = None,
    resume: bool = False,
    device: str = "auto",
    console: ConsoleFactory | None = None,
) -> str | None:
    """Train on ``data`` (one sub-folder per class), save to ``out``; returns the model hash
    (``None`` in a process other than the main one under torchrun).

    ``config`` defaults to ``kshot train``'s defaults. ``resume`` continues from the state file
    a stopped run with the same settings left (see :func:`state_path`); ``console`` watches the
    run and keeps that state file (default: notices in the log, no state kept).
    """
    config = resolve_backbone(config or TrainConfig())
    world, torch_device = start_from_env(device)
    if config.precision == "bf16" and torch_device.type == "cpu":
        check_precision("bf16", torch_device)  # a clear error where the CPU has no bf16
    try:
        digest = _Run(Path(data), Path(out), config, files or RunFiles(), world).train(
            torch_device, resume, console
        )
        world.wait_for_all()
        return digest
    finally:
        stop(world)


class _Run:
    def __init__(self, data: Path, out: Path, config: TrainConfig, files: RunFiles, world):
        self.data, self.out, self.config, self.files = data, out, config, files
        self.world: Distributed = world
        self.pretrained = config.pretrained and get_backbone(config.backbone).pretrained is not None

    def train(self, device, resume: bool, console: ConsoleFactory | None) -> str | None:
        config, world = self.config, self.world
        if not world.is_main:
            log.setLevel(logging.ERROR)
        state_file = state_path(self.out)
        resume_from = _read_state(state_file) if resume else None
        # Decoding depends on the input size and channels only, not on the normalisation.
        classes, images = read_training_folder(self.data, embedder_config(config).preprocess)
        stats = dataset_mean_std(images.pixels) if config.normalization == "dataset" else None
        embedder_cfg = embedder_config(config, stats)
        seed_everything(config.seed)  # the new layers' initial weights too
        try:
            embedder = build_embedder(
                embedder_cfg, pretrained=self.pretrained, weights_file=self.files.weights
            )
        except ValueError as exc:  # a head that does not fit the backbone
            raise KshotError(str(exc)) from None
        original = None  # the pretrained backbone's weights, for --interpolate
        if config.interpolate is not None:
            original = {k: v.detach().clone() for k, v in embedder.backbone.state_dict().items()}
        split, validation = self._split(classes, images, embedder_cfg)
        labels = images.labels.numpy()
        trained_classes = sorted({classes[c] for c in labels[split.train]})
        held_classes = sorted({classes[c] for c in labels[split.holdout]})
        observer = (
            console(config.head_epochs + config.epochs, state_file)
            if console is not None and world.is_main
            else Observer()
        )
        rotations = f", {4 * len(trained_classes)} with their rotations"
        observer.notice(
            f"training {config.backbone} on {len(split.train)} images of "
            f"{len(trained_classes)} classes{rotations if config.rotation_classes else ''}; "
            f"validating on {validation.describe()}"
        )
        before = {}
        if validation.enabled and world.is_main:
            before = validation.untrained(embedder.to(device))
            observer.notice(
                f"before training (the backbone's own features): {format_scores(before)}"
            )
        try:
            result = train_embedder(
                embedder,
                images.subset(split.train),
                config,
                validate=validation if validation.enabled else None,
                observer=observer,
                device=device,
                world=world,
                resume_from=resume_from,
            )
        finally:
            observer.close()
        if not world.is_main:
            return None
        after = result.best_metrics or (result.history[-1].metrics if result.history else {})
        interpolation = apply_interpolation(
            embedder, original, config.interpolate, validation if validation.enabled else None
        )
        if interpolation is not None:
            after = interpolation.metrics or after
            observer.notice(interpolation.describe())
        _warn_if_new_classes_got_worse(before, after, held_classes)
        info = {
            "trained": True,
            # The folder's name only: a model file travels, and a full path tells where its
            # maker keeps files (a user name, a mount), which is not the model's business.
            "data": self.data.resolve().name,
            "classes": trained_classes,
            "holdout_classes": held_classes,
            "train": config.to_dict(),
            "pretrained": self.pretrained,
            "starting_weights": self._starting_weights(),
            "best_epoch": result.best_epoch,
            "interpolation": interpolation.to_dict() if interpolation is not None else None,
            "scores_before": before,
            "scores_after": after,
            "history": [dataclasses.asdict(stats) for stats in result.history],
        }
        digest = save_checkpoint(embedder, self.out, info)
        state_file.unlink(missing_ok=True)
        best = (
            f"; best epoch {result.best_epoch}: {format_scores(after)}" if result.best_epoch else ""
        )
        observer.notice(
            f"wrote {self.out} (model {digest[:12]}); {_epoch_times(result.history)}{best}"
        )
        return digest

    def _starting_weights(self) -> str:
        """Where the backbone's weights came from, for the model file's info."""
        if self.files.weights is not None:
            return f"weights file {self.files.weights}"
        spec = get_backbone(self.config.backbone)
        return spec.pretrained_source() if self.pretrained else "random weights"

    def _split(self, classes, images, embedder_cfg):
        config, val = self.config, self.files.val
        holdout_classes = config.holdout_classes
        if holdout_classes is None:
            holdout_classes = default_holdout_classes(len(classes))
        if len(classes) - holdout_classes < 2:
            raise KshotError(
                f"holding out {holdout_classes} of the {len(classes)} classes leaves fewer than "
                "two to train on; lower --holdout-classes"
            )
        labels = images.labels.numpy()
        fraction = 0.0 if val is not None else config.val_fraction
        split = split_data(labels, fraction, holdout_classes, config.seed)
        val_set = images.subset(split.val)
        if val is not None:
            val_set = read_validation_folder(val, classes, embedder_cfg.preprocess)
            trained = ~np.isin(val_set.labels.numpy(), labels[split.holdout])
            val_set = val_set.subset(np.flatnonzero(trained))
        holdout = images.subset(split.holdout)
        validation = TrainingValidation(
            val_set, images.subset(split.references), holdout, seed=config.seed
        )
        return split, validation


def format_scores(metrics: dict) -> str:
    names = {
        "precision_at_1": "P@1",
        "accuracy": "acc",
        "fewshot_accuracy": "new-class acc",
        "library_accuracy": "new-class acc in library",
    }
    return "  ".join(f"{names.get(k, k)} {v:.1%}" for k, v in metrics.items())


def _epoch_times(history) -> str:
    """The mean epoch time of each stage: a head epoch on cached features takes seconds, a
    fine-tuning epoch minutes, and one mean of both would describe neither."""
    stages: dict[str, list[float]] = {}
    for stats in history:
        stages.setdefault(stats.stage, []).append(stats.seconds)
    times = ", ".join(f"{name} {np.mean(seconds):.1f} s" for name, seconds in stages.items())
    return f"mean epoch: {times}" if times else "no epoch trained"


def _read_state(path: Path) -> dict:
    if not path.exists():
        raise KshotError(
            f"nothing to resume: {path} does not exist (it is removed when a run ends)"
        )
    state = read_torch_file(path, "kshot training state")
    if not isinstance(state, dict) or "stage_index" not in state:
        raise KshotError(f"{path}: not a kshot training state file")
    return state


def fell(before: float, after: float) -> bool:
    """Whether a score fell by as much as its printed form (0.1%) shows."""
    return round(after, 3) < round(before, 3)


def _warn_if_new_classes_got_worse(before: dict, after: dict, held: list[str]) -> None:
    names = {
        "library_accuracy": "few-shot accuracy in the library of all classes",
        "fewshot_accuracy": "few-shot accuracy among themselves",
    }
    worse = [
        f"{what} fell from {before[key]:.1%} with the untrained backbone's features to "
        f"{after[key]:.1%}"
        for key, what in names.items()
        if key in before and key in after and fell(before[key], after[key])
    ]
    if worse:
        log.warning(
            "training made new classes worse: on the %d held-out classes (%s), %s. "
            "Try fewer epochs, --head-epochs with a frozen backbone, a --residual-head, "
            "--interpolate auto, --feature-distillation 1, more augmentation, or no training.",
            len(held),
            ", ".join(held),
            "; ".join(worse),
        )
