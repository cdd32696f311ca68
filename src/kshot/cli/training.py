"""``kshot train``: from a folder of class sub-folders to a model file."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kshot.cli.console import say
from kshot.cli.training_data import read_training_folder, read_validation_folder
from kshot.cli.training_observer import TrainingConsole, format_scores, state_path
from kshot.embedder.backbones import get_backbone
from kshot.embedder.checkpoint import save_checkpoint
from kshot.embedder.distributed import Distributed, start_from_env, stop
from kshot.embedder.ensemble import is_ensemble, normalization_error
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.preprocess import IMAGENET_MEAN, IMAGENET_STD, dataset_mean_std
from kshot.embedder.training import Observer, TrainConfig, seed_everything, train_embedder
from kshot.embedder.trainset import split_data
from kshot.embedder.weights import read_torch_file
from kshot.errors import KshotError
from kshot.fewshot.validation import TrainingValidation

log = logging.getLogger("kshot")


def default_holdout_classes(classes: int) -> int:
    """A fifth of the classes, at most 5, and none unless at least 2 (a 2-way episode)."""
    count = min(5, classes // 5)
    return count if count >= 2 else 0


def _config(model: ModelOptions, data_mean_std: tuple | None = None) -> EmbedderConfig:
    """``data_mean_std``: the training images' own statistics, for ``--normalization dataset``."""
    if model.normalization != "backbone" and is_ensemble(model.backbone):
        raise normalization_error(model.backbone)
    preprocess = get_backbone(model.backbone).default_preprocess()
    image_size, channels = model.image_size, model.channels
    if image_size is not None:  # keep the backbone's resize-to-crop ratio
        resize = round(image_size * preprocess.resize_size / preprocess.input_size)
        preprocess = dataclasses.replace(preprocess, input_size=image_size, resize_size=resize)
    if channels is not None and channels != preprocess.channels:
        mean = preprocess.mean[:1] * channels
        std = preprocess.std[:1] * channels
        preprocess = dataclasses.replace(preprocess, channels=channels, mean=mean, std=std)
    if model.normalization == "imagenet":
        preprocess = preprocess.with_normalization(IMAGENET_MEAN, IMAGENET_STD)
    elif model.normalization == "dataset" and data_mean_std is not None:
        preprocess = preprocess.with_normalization(*data_mean_std)
    try:
        return EmbedderConfig(
            model.backbone,
            preprocess,
            embedding_dim=model.embedding_dim,
            head_hidden=model.head_hidden,
            residual=model.residual_head,
        )
    except ValueError as exc:
        raise KshotError(str(exc)) from None


def _starting_weights(model: ModelOptions, pretrained: bool) -> str:
    """Where the backbone's weights came from, for the model file's info."""
    if model.weights is not None:
        return f"weights file {model.weights}"
    return get_backbone(model.backbone).pretrained_source() if pretrained else "random weights"


def train_from_folder(
    data: Path,
    out: Path,
    *,
    backbone: str,
    embedding_dim: int | None = None,
    head_hidden: int | None = None,
    residual_head: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
    normalization: str = "backbone",
    pretrained: bool = True,
    weights: Path | None = None,
    val: Path | None = None,
    val_fraction: float = 0.2,
    holdout_classes: int | None = None,
    logdir: Path | None = None,
    resume: bool = False,
    device: str = "auto",
    **train_options,
) -> str | None:
    """Train on ``data`` (one sub-folder per class), save to ``out``; returns the model hash
    (``None`` in a process other than the main one under torchrun).

    Left at their defaults, the preprocessing options are the backbone's own; ``pretrained``
    applies to backbones that have pretrained weights. ``val`` (a folder of the same classes)
    replaces the ``val_fraction`` of each class held out; ``holdout_classes`` whole classes are
    kept out of training to measure few-shot accuracy on new classes (default: see
    :func:`default_holdout_classes`). ``train_options`` go to ``TrainConfig``.
    """
    model = ModelOptions(
        backbone=backbone,
        embedding_dim=embedding_dim,
        head_hidden=head_hidden,
        residual_head=residual_head,
        image_size=image_size,
        channels=channels,
        normalization=normalization,
        pretrained=pretrained,
        weights=weights,
    )
    held_out = HeldOut(val, val_fraction, holdout_classes)
    world, device = start_from_env(device)
    try:
        return _train(
            Path(data), Path(out), model, held_out, logdir, resume, world, device, train_options
        )
    finally:
        stop(world)


@dataclass(frozen=True)
class ModelOptions:
    """What the embedder is built from (see :func:`train_from_folder`)."""

    backbone: str
    embedding_dim: int | None
    head_hidden: int | None
    residual_head: bool
    image_size: int | None
    channels: int | None
    normalization: str
    pretrained: bool
    weights: Path | None


@dataclass(frozen=True)
class HeldOut:
    """What training is validated on (see :func:`train_from_folder`)."""

    val: Path | None
    val_fraction: float
    holdout_classes: int | None


def _train(
    data: Path,
    out: Path,
    model: ModelOptions,
    held_out: HeldOut,
    logdir: Path | None,
    resume: bool,
    world: Distributed,
    device,
    train_options: dict,
) -> str | None:
    talk = say if world.is_main else (lambda message: None)
    if not world.is_main:
        log.setLevel(logging.ERROR)
    backbone = model.backbone
    pretrained = model.pretrained and get_backbone(backbone).pretrained is not None
    train_config = TrainConfig(**train_options)
    state_file = state_path(out)
    resume_from = _read_state(state_file) if resume else None
    # Decoding depends on the input size and channels only, not on the normalisation.
    classes, images = read_training_folder(data, _config(model).preprocess)
    config = _config(
        model, dataset_mean_std(images.pixels) if model.normalization == "dataset" else None
    )
    seed_everything(train_config.seed)  # the new layers' initial weights too
    try:
        embedder = build_embedder(config, pretrained=pretrained, weights_file=model.weights)
    except ValueError as exc:  # a head that does not fit the backbone
        raise KshotError(str(exc)) from None
    holdout_classes = held_out.holdout_classes
    if holdout_classes is None:
        holdout_classes = default_holdout_classes(len(classes))
    if len(classes) - holdout_classes < 2:
        raise KshotError(
            f"holding out {holdout_classes} of the {len(classes)} classes leaves fewer than two "
            "to train on; lower --holdout-classes"
        )
    labels = images.labels.numpy()
    val = held_out.val
    fraction = 0.0 if val is not None else held_out.val_fraction
    split = split_data(labels, fraction, holdout_classes, train_config.seed)
    val_set = images.subset(split.val)
    if val is not None:
        val_set = read_validation_folder(val, classes, config.preprocess)
        trained = ~np.isin(val_set.labels.numpy(), labels[split.holdout])
        val_set = val_set.subset(np.flatnonzero(trained))
    holdout = images.subset(split.holdout)
    validation = TrainingValidation(
        val_set, images.subset(split.references), holdout, seed=train_config.seed
    )
    trained_classes = sorted({classes[c] for c in labels[split.train]})
    held_classes = sorted({classes[c] for c in labels[split.holdout]})
    talk(
        f"training {backbone} on {len(split.train)} images of {len(trained_classes)} classes; "
        f"validating on {validation.describe()}"
    )
    before = {}
    if validation.enabled and world.is_main:
        before = validation.untrained(embedder.to(device))
        talk(f"before training (the backbone's own features): {format_scores(before)}")
    total = train_config.head_epochs + train_config.epochs
    console = TrainingConsole(total, state_file, logdir) if world.is_main else Observer()
    try:
        result = train_embedder(
            embedder,
            images.subset(split.train),
            train_config,
            validate=validation if validation.enabled else None,
            observer=console,
            device=device,
            world=world,
            resume_from=resume_from,
        )
    finally:
        if world.is_main:
            console.close()
    if not world.is_main:
        return None
    after = result.best_metrics or (result.history[-1].metrics if result.history else {})
    _warn_if_new_classes_got_worse(before, after, held_classes)
    info = {
        "trained": True,
        # The folder's name only: a model file travels, and a full path tells where its
        # maker keeps files (a user name, a mount), which is not the model's business.
        "data": data.resolve().name,
        "classes": trained_classes,
        "holdout_classes": held_classes,
        "train": train_config.to_dict(),
        "pretrained": pretrained,
        "starting_weights": _starting_weights(model, pretrained),
        "best_epoch": result.best_epoch,
        "scores_before": before,
        "scores_after": after,
        "history": [dataclasses.asdict(stats) for stats in result.history],
    }
    digest = save_checkpoint(embedder, out, info)
    state_file.unlink(missing_ok=True)
    seconds = np.mean([stats.seconds for stats in result.history]) if result.history else 0.0
    best = f"; best epoch {result.best_epoch}: {format_scores(after)}" if result.best_epoch else ""
    talk(f"wrote {out} (model {digest[:12]}); mean epoch {seconds:.1f} s{best}")
    return digest


def _read_state(path: Path) -> dict:
    if not path.exists():
        raise KshotError(
            f"nothing to resume: {path} does not exist (it is removed when a run ends)"
        )
    state = read_torch_file(path, "kshot training state")
    if not isinstance(state, dict) or "stage_index" not in state:
        raise KshotError(f"{path}: not a kshot training state file")
    return state


def _warn_if_new_classes_got_worse(before: dict, after: dict, held: list[str]) -> None:
    key = "fewshot_accuracy"
    if key in before and key in after and after[key] < before[key]:
        log.warning(
            "training made new classes worse: few-shot accuracy on the %d held-out classes "
            "(%s) fell from %.1f%% with the untrained backbone's features to %.1f%%. "
            "Try fewer epochs, --head-epochs with a frozen backbone, a --residual-head, "
            "more augmentation, or no training at all.",
            len(held),
            ", ".join(held),
            100 * before[key],
            100 * after[key],
        )
