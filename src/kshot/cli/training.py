"""``kshot train``: from a folder of class sub-folders to a model file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kshot.cli.console import say
from kshot.embedder.backbones import get_backbone
from kshot.embedder.checkpoint import save_checkpoint
from kshot.embedder.images import class_folders
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.preprocess import IMAGENET_MEAN, IMAGENET_STD, dataset_mean_std
from kshot.embedder.training import EpochStats, TrainConfig, seed_everything, train_embedder
from kshot.errors import KshotError


def _config(
    backbone: str,
    embedding_dim: int | None,
    image_size: int | None,
    channels: int | None,
    normalization: str,
    images: list[Path],
) -> EmbedderConfig:
    preprocess = get_backbone(backbone).default_preprocess()
    if image_size is not None:  # keep the backbone's resize-to-crop ratio
        resize = round(image_size * preprocess.resize_size / preprocess.input_size)
        preprocess = dataclasses.replace(preprocess, input_size=image_size, resize_size=resize)
    if channels is not None and channels != preprocess.channels:
        mean = preprocess.mean[:1] * channels
        std = preprocess.std[:1] * channels
        preprocess = dataclasses.replace(preprocess, channels=channels, mean=mean, std=std)
    if normalization == "imagenet":
        preprocess = preprocess.with_normalization(IMAGENET_MEAN, IMAGENET_STD)
    elif normalization == "dataset":
        preprocess = preprocess.with_normalization(*dataset_mean_std(preprocess, images))
    try:
        return EmbedderConfig(backbone, preprocess, embedding_dim=embedding_dim)
    except ValueError as exc:
        raise KshotError(str(exc)) from None


def train_from_folder(
    data: Path,
    out: Path,
    *,
    backbone: str,
    embedding_dim: int | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    normalization: str = "backbone",
    pretrained: bool = True,
    weights: Path | None = None,
    **train_options,
) -> str:
    """Train on ``data`` (one sub-folder per class), save to ``out``; returns the model hash.

    Left at their defaults, the preprocessing options are the backbone's own; ``pretrained``
    applies to backbones that have pretrained weights. ``train_options`` go to ``TrainConfig``.
    """
    data = Path(data)
    if not data.is_dir():
        raise KshotError(f"{data}: no such directory")
    folders = [(folder, images) for folder, images in class_folders(data) if images]
    if len(folders) < 2:
        raise KshotError(f"{data} needs at least two sub-folders of images, one per class")
    images = [image for _, found in folders for image in found]
    labels = [code for code, (_, found) in enumerate(folders) for _ in found]
    config = _config(backbone, embedding_dim, image_size, channels, normalization, images)
    pretrained = pretrained and get_backbone(backbone).pretrained is not None
    train_config = TrainConfig(**train_options)
    seed_everything(train_config.seed)  # the new layers' initial weights too
    embedder = build_embedder(config, pretrained=pretrained, weights_file=weights)
    say(f"training {backbone} on {len(images)} images of {len(folders)} classes")

    def report(stats: EpochStats) -> None:
        epoch = f"epoch {stats.epoch}/{train_config.epochs}"
        say(f"{epoch}  loss {stats.loss:.4f}  {stats.seconds:.1f} s")

    history = train_embedder(embedder, images, labels, train_config, on_epoch=report)
    info = {
        "trained": True,
        "data": str(data.resolve()),
        "classes": [folder.name for folder, _ in folders],
        "train": dataclasses.asdict(train_config),
        "pretrained": pretrained,
        "final_loss": history[-1].loss,
    }
    digest = save_checkpoint(embedder, out, info)
    seconds = sum(s.seconds for s in history) / len(history)
    say(f"wrote {out} (model {digest[:12]}); mean epoch {seconds:.1f} s")
    return digest
