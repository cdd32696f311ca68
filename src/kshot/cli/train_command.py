"""The ``kshot train`` command line; the work is in ``kshot.embedder.run``. Registered on the
app in ``app.py``. Nothing here imports torch, so that ``--help`` answers at once.

Most options are built from the fields of :class:`kshot.embedder.recipe.TrainConfig` (their
defaults, help and bounds live there, once); the function below declares only the options that
are not one field each: the files, and the loss's and augmentation's ``NAME=NUMBER`` options.
"""

from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kshot.cli.options import Device
from kshot.embedder.recipe import AUGMENT, DATA, MODEL, RECIPE, RUN, cli_fields

# The augmentation presets of kshot.embedder.augment.AUGMENT_PRESETS (a test checks they agree).
AUGMENT_PRESETS = ("none", "photo", "upright")


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {value: value for value in values}, type=str)


AugmentPreset = _choices("AugmentPreset", AUGMENT_PRESETS)
NO_AUGMENTATION = AugmentPreset("none")


def _recipe_parameters() -> list[inspect.Parameter]:
    """An option for each field of ``TrainConfig`` that has ``cli`` metadata."""
    parameters = []
    for spec, cli in cli_fields():
        kind, default = spec.type, spec.default
        if cli.choices is not None:
            kind = _choices(spec.name.title().replace("_", ""), cli.choices)
            default = kind(default)
        option = typer.Option(
            help=cli.help or None, rich_help_panel=cli.panel, min=cli.min, max=cli.max
        )
        parameters.append(
            inspect.Parameter(
                spec.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[kind, option],
            )
        )
    return parameters


def train(
    data: Annotated[Path, typer.Argument(help="A folder with a sub-folder of images per class.")],
    out: Annotated[Path, typer.Option(help="The model file to write.")],
    weights: Annotated[
        Path | None,
        typer.Option(help="Backbone weights file (offline).", rich_help_panel=MODEL),
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(help="The loss's margin (default: the loss's own).", rich_help_panel=RECIPE),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option(
            help="The angular losses' and protonet's scale (default: 32; protonet 64).",
            rich_help_panel=RECIPE,
        ),
    ] = None,
    loss_option: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=NUMBER for the loss, e.g. neg_margin=0.8, margin1=1.5, "
            "learn_scale=0, squared_distance=1; repeatable.",
            rich_help_panel=RECIPE,
        ),
    ] = None,
    augment: Annotated[
        AugmentPreset,
        typer.Option(
            help="photo: flips, any turn, colour and exposure (leaves from above); "
            "upright: mirror, small turns, exposure.",
            rich_help_panel=AUGMENT,
        ),
    ] = NO_AUGMENTATION,
    augment_option: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=NUMBER over the preset: hflip, vflip (probabilities), rotation "
            "(degrees), rotation_p, hue, saturation, value, hsv_p, brightness, contrast, "
            "brightness_contrast_p; repeatable.",
            rich_help_panel=AUGMENT,
        ),
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option(
            help="Validation folder of the same classes (default: held out of DATA).",
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
    device: Device = "auto",
    **recipe,
):
    """Train an embedder with a metric-learning loss on labelled images, in up to two stages
    (a head on the frozen backbone, then fine-tuning). Under `torchrun` it trains on every
    process with DistributedDataParallel."""
    from kshot.assignments import parse_assignments
    from kshot.cli.training_observer import TrainingConsole
    from kshot.embedder.augment import augment_config
    from kshot.embedder.recipe import TrainConfig
    from kshot.embedder.run import RunFiles, train_from_folder

    loss_options = {k: v for k, v in {"margin": margin, "scale": scale}.items() if v is not None}
    loss_options |= parse_assignments(loss_option or [], "loss option", "margin=0.2")
    values = {k: v.value if isinstance(v, Enum) else v for k, v in recipe.items()}
    config = TrainConfig(
        **values,
        loss_options=loss_options,
        augment=augment_config(augment.value, augment_option),
    )
    train_from_folder(
        data,
        out,
        config,
        files=RunFiles(weights=weights, val=val),
        resume=resume,
        device=device,
        console=lambda epochs, state: TrainingConsole(epochs, state, logdir),
    )


_signature = inspect.signature(train, eval_str=True)
train.__signature__ = _signature.replace(
    parameters=[p for p in _signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    + _recipe_parameters()
)
