"""The ``kshot train`` command line; the work is in ``kshot.cli.training``. Registered on the
app in ``app.py``. Nothing here imports torch, so that ``--help`` answers at once."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kshot.cli.options import Device, Normalization, TrainPrecision

# The names of kshot.embedder.losses.LOSSES, listed here so that --help needs no torch import
# (tests/cli/test_training.py checks the two agree).
LOSS_NAMES = (
    "contrastive",
    "triplet",
    "quadruplet",
    "sphereface",
    "cosface",
    "arcface",
    "softmax",
    "focal",
)


class OptimizerName(str, Enum):
    adam = "adam"
    adamw = "adamw"


class Schedule(str, Enum):
    none = "none"
    cosine = "cosine"
    plateau = "plateau"


class AugmentPreset(str, Enum):
    none = "none"
    photo = "photo"
    upright = "upright"


MODEL, RECIPE, AUGMENT, DATA, RUN = "Model", "Recipe", "Augmentation", "Data and validation", "Run"


def train(
    data: Annotated[Path, typer.Argument(help="A folder with a sub-folder of images per class.")],
    out: Annotated[Path, typer.Option(help="The model file to write.")],
    backbone: Annotated[
        str, typer.Option(help="See `kshot backbones`.", rich_help_panel=MODEL)
    ] = "efficientnet_lite0",
    embedding_dim: Annotated[
        int | None,
        typer.Option(help="Head output size; default: no head.", rich_help_panel=MODEL),
    ] = None,
    head_hidden: Annotated[
        int | None,
        typer.Option(
            help="A hidden layer in the head (Linear, ReLU, dropout 0.2, Linear).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    residual_head: Annotated[
        bool,
        typer.Option(
            help="The head adds a learnt correction to the backbone's features (starts at "
            "zero; --embedding-dim must be the feature size).",
            rich_help_panel=MODEL,
        ),
    ] = False,
    image_size: Annotated[
        int | None, typer.Option(help="Input side in pixels.", rich_help_panel=MODEL)
    ] = None,
    channels: Annotated[
        int | None, typer.Option(help="1 (grey) or 3; conv4 only.", rich_help_panel=MODEL)
    ] = None,
    normalization: Annotated[
        Normalization,
        typer.Option(
            help="Per-channel mean/std: the backbone's, ImageNet's, or measured on DATA.",
            rich_help_panel=MODEL,
        ),
    ] = Normalization.backbone,
    pretrained: Annotated[
        bool, typer.Option(help="Start from ImageNet weights.", rich_help_panel=MODEL)
    ] = True,
    weights: Annotated[
        Path | None,
        typer.Option(help="Backbone weights file (offline).", rich_help_panel=MODEL),
    ] = None,
    loss: Annotated[
        str, typer.Option(help=f"One of: {', '.join(LOSS_NAMES)}.", rich_help_panel=RECIPE)
    ] = "arcface",
    margin: Annotated[
        float | None,
        typer.Option(help="The loss's margin (default: the loss's own).", rich_help_panel=RECIPE),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option(help="The angular losses' scale (default: 32).", rich_help_panel=RECIPE),
    ] = None,
    loss_option: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=NUMBER for the loss, e.g. neg_margin=0.8, margin1=1.5; repeatable.",
            rich_help_panel=RECIPE,
        ),
    ] = None,
    head_epochs: Annotated[
        int,
        typer.Option(min=0, help="Stage 1: epochs on a frozen backbone.", rich_help_panel=RECIPE),
    ] = 30,
    epochs: Annotated[
        int,
        typer.Option(
            min=0, help="Stage 2: epochs with the backbone training.", rich_help_panel=RECIPE
        ),
    ] = 5,
    trainable_blocks: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Stage 2 trains only the backbone's last N blocks (default: all).",
            rich_help_panel=RECIPE,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=2, rich_help_panel=RECIPE)] = 64,
    samples_per_class: Annotated[
        int, typer.Option(min=1, help="Images of each class in a batch.", rich_help_panel=RECIPE)
    ] = 4,
    optimizer: Annotated[OptimizerName, typer.Option(rich_help_panel=RECIPE)] = OptimizerName.adam,
    lr: Annotated[
        float,
        typer.Option(
            help="Learning rate of stage 1 and of the loss's class weights.",
            rich_help_panel=RECIPE,
        ),
    ] = 1e-2,
    finetune_lr: Annotated[
        float,
        typer.Option(
            help="Learning rate of stage 2, where the backbone trains.", rich_help_panel=RECIPE
        ),
    ] = 3e-4,
    weight_decay: Annotated[
        float | None,
        typer.Option(help="Default: 0 for adam, 0.01 for adamw.", rich_help_panel=RECIPE),
    ] = None,
    schedule: Annotated[
        Schedule, typer.Option(help="Per stage.", rich_help_panel=RECIPE)
    ] = Schedule.cosine,
    patience: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Stop a stage after N epochs without a better validation precision@1.",
            rich_help_panel=RECIPE,
        ),
    ] = None,
    class_weights: Annotated[
        bool,
        typer.Option(
            help="Weigh each image by 1 / its class's size (for --no-balanced-batches).",
            rich_help_panel=RECIPE,
        ),
    ] = False,
    balanced_batches: Annotated[
        bool,
        typer.Option(
            help="Batches of --samples-per-class images per class (else shuffled).",
            rich_help_panel=RECIPE,
        ),
    ] = True,
    augment: Annotated[
        AugmentPreset,
        typer.Option(
            help="photo: flips, any turn, colour and exposure (leaves from above); "
            "upright: mirror, small turns, exposure.",
            rich_help_panel=AUGMENT,
        ),
    ] = AugmentPreset.none,
    augment_option: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=NUMBER over the preset: hflip, vflip (probabilities), rotation "
            "(degrees), rotation_p, hue, saturation, value, hsv_p, brightness, contrast, "
            "brightness_contrast_p; repeatable.",
            rich_help_panel=AUGMENT,
        ),
    ] = None,
    augment_head: Annotated[
        bool,
        typer.Option(
            help="Augment in stage 1 too (the frozen features are then computed every epoch).",
            rich_help_panel=AUGMENT,
        ),
    ] = False,
    rotation_classes: Annotated[
        bool,
        typer.Option(
            help="Each class turned 90/180/270 degrees becomes 3 more classes.",
            rich_help_panel=AUGMENT,
        ),
    ] = False,
    val: Annotated[
        Path | None,
        typer.Option(
            help="Validation folder of the same classes (default: held out of DATA).",
            rich_help_panel=DATA,
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Share of each class held out to validate.",
            rich_help_panel=DATA,
        ),
    ] = 0.2,
    holdout_classes: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Whole classes kept out of training to measure few-shot accuracy on new "
            "classes (default: a fifth, at most 5; 0: none).",
            rich_help_panel=DATA,
        ),
    ] = None,
    logdir: Annotated[
        Path | None, typer.Option(help="TensorBoard log folder.", rich_help_panel=RUN)
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue a stopped run from OUT.state, with the same options.",
            rich_help_panel=RUN,
        ),
    ] = False,
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.", rich_help_panel=RUN)] = True,
    precision: Annotated[
        TrainPrecision,
        typer.Option(
            help="On the CPU: bf16 autocast (needs AVX-512 BF16 or AMX).", rich_help_panel=RUN
        ),
    ] = TrainPrecision.fp32,
    seed: Annotated[int, typer.Option(rich_help_panel=RUN)] = 0,
    device: Device = "auto",
):
    """Train an embedder with a metric-learning loss on labelled images, in up to two stages
    (a head on the frozen backbone, then fine-tuning). Under `torchrun` it trains on every
    process with DistributedDataParallel."""
    from kshot.assignments import parse_assignments
    from kshot.cli.training import train_from_folder
    from kshot.embedder.augment import augment_config
    from kshot.embedder.precision import check_precision
    from kshot.embedder.runtime import resolve_device

    if precision is TrainPrecision.bf16 and resolve_device(device).type == "cpu":
        check_precision("bf16", resolve_device(device))
    loss_options = {k: v for k, v in {"margin": margin, "scale": scale}.items() if v is not None}
    loss_options |= parse_assignments(loss_option or [], "loss option", "margin=0.2")
    train_from_folder(
        data,
        out,
        backbone=backbone,
        embedding_dim=embedding_dim,
        head_hidden=head_hidden,
        residual_head=residual_head,
        image_size=image_size,
        channels=channels,
        normalization=normalization.value,
        pretrained=pretrained,
        weights=weights,
        val=val,
        val_fraction=val_fraction,
        holdout_classes=holdout_classes,
        logdir=logdir,
        resume=resume,
        device=device,
        loss=loss,
        loss_options=loss_options,
        head_epochs=head_epochs,
        epochs=epochs,
        trainable_blocks=trainable_blocks,
        batch_size=batch_size,
        samples_per_class=samples_per_class,
        optimizer=optimizer.value,
        lr=lr,
        finetune_lr=finetune_lr,
        weight_decay=weight_decay,
        schedule=schedule.value,
        patience=patience,
        class_weights=class_weights,
        balanced_batches=balanced_batches,
        augment=augment_config(augment.value, augment_option),
        augment_head=augment_head,
        rotation_classes=rotation_classes,
        amp=amp,
        precision=precision.value,
        seed=seed,
    )
