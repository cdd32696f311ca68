"""The ``kshot distill`` command line; the work is in ``kshot.embedder.distill``. Registered on
the app in ``app.py``; nothing here imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kshot.cli.options import Device


def distill(
    data: Annotated[
        Path, typer.Argument(help="A folder of images, or of class sub-folders (labels unused).")
    ],
    teacher: Annotated[Path, typer.Option(help="The model file to learn from.")],
    backbone: Annotated[str, typer.Option(help="The student's backbone (`kshot backbones`).")],
    out: Annotated[Path, typer.Option(help="The student's model file to write.")],
    image_size: Annotated[
        int | None, typer.Option(help="The student's input side (default: its backbone's).")
    ] = None,
    pretrained: Annotated[
        bool, typer.Option(help="The student starts from ImageNet weights.")
    ] = True,
    weights: Annotated[Path | None, typer.Option(help="Student backbone weights file.")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=2)] = 64,
    lr: Annotated[float, typer.Option()] = 3e-4,
    loss: Annotated[
        str, typer.Option(help="cosine: 1 - cosine; mse: squared distance of the embeddings.")
    ] = "cosine",
    relational: Annotated[
        float,
        typer.Option(
            min=0.0, help="Weight of matching the batch's pairwise similarities (0: off)."
        ),
    ] = 1.0,
    holdout_classes: Annotated[
        int,
        typer.Option(
            min=0,
            help="With class sub-folders: whole classes kept out of training and scored after "
            "each epoch as kshot train scores its held-out classes (0: none).",
        ),
    ] = 0,
    holdout: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99,
            help="Without --holdout-classes: the share of images kept out of training to "
            "report the loss on (at least 8 images, else none).",
        ),
    ] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    device: Device = "auto",
):
    """Train a small student embedder to embed images as a teacher model does; the student is
    an ordinary model file (`kshot init --model`)."""
    from kshot.cli.console import say
    from kshot.embedder.checkpoint import load_checkpoint, model_hash, save_checkpoint
    from kshot.embedder.distill import (
        DistillConfig,
        build_student,
        distill_info,
        holdout_plan,
        image_files,
        load_images,
    )
    from kshot.embedder.distill import distill as run_distillation
    from kshot.embedder.distill_holdout import folder_labels
    from kshot.embedder.run import format_scores
    from kshot.embedder.runtime import resolve_device

    config = DistillConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        loss=loss,
        relational=relational,
        holdout=holdout,
        holdout_classes=holdout_classes,
        seed=seed,
    )
    teacher_model, _ = load_checkpoint(teacher)
    student = build_student(backbone, image_size, pretrained, weights)
    files = image_files(data)
    images = load_images(files, teacher_model, student, folder_labels(data, files))
    plan = holdout_plan(images, config)
    say(
        f"distilling {teacher} ({teacher_model.config.backbone}, {teacher_model.embedding_dim} "
        f"dimensions) into {backbone} on {len(images.paths)} images; {plan.describe()}"
    )
    judged = "held-out images" if plan.held_out else "training images"

    def on_epoch(stats: dict) -> None:
        scores = f"  {format_scores(stats['scores'])}" if stats["scores"] else ""
        say(
            f"epoch {stats['epoch']}/{epochs}  loss {stats['loss']:.4f}  {judged} "
            f"{stats['eval_loss']:.4f}{scores}  {stats['seconds']:.1f} s"
        )

    result = run_distillation(
        teacher_model, student, images, config, resolve_device(device), on_epoch, plan
    )
    _warn_if_held_out_classes_got_worse(result, say)
    info = distill_info(teacher, model_hash(teacher_model), data, config, result)
    digest = save_checkpoint(student.cpu(), out, info)
    scores = (
        f"; held-out classes {format_scores(result.scores_before)} before, "
        f"{format_scores(result.scores_after)} after"
        if result.scores_before
        else ""
    )
    say(
        f"wrote {out} (model {digest[:12]}); {judged} loss {result.loss_before:.4f} before "
        f"(its projection fitted in closed form), {result.loss_after:.4f} after{scores}"
    )


def _warn_if_held_out_classes_got_worse(result, say) -> None:
    from kshot.embedder.run import fell
    from kshot.embedder.training import selection_score

    before, after = selection_score(result.scores_before), selection_score(result.scores_after)
    if before is not None and after is not None and fell(before, after):
        say(
            f"kshot: warning: the student scores lower on the {len(result.held_classes)} "
            f"held-out classes ({', '.join(result.held_classes)}) than before distillation "
            f"({before:.1%} -> {after:.1%}). A few classes speak for others poorly (on "
            "PlantVillage 4 fell while 15 others rose); check the student on your own new "
            "classes (`kshot evaluate`) against its untrained backbone before using it."
        )
