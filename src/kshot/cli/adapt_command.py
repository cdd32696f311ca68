"""The ``kshot adapt`` command line; the work is in ``kshot.fewshot.adaptation``. Registered on
the app in ``app.py``; nothing here imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kshot.cli import render
from kshot.cli.console import outcome, progress, say
from kshot.cli.options import Device, LibraryDir
from kshot.embedder.adapt_config import AdaptConfig
from kshot.errors import EXIT_INTERRUPTED, KshotError


def adapt(
    library: LibraryDir,
    out: Annotated[Path, typer.Option(help="The new library to write (must not exist).")],
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = AdaptConfig.steps,
    batch_size: Annotated[
        int, typer.Option(min=2, help="Photos in a step (memory grows with it).")
    ] = AdaptConfig.batch_size,
    lr: Annotated[
        float, typer.Option(min=0.0, help="Learning rate of the network.")
    ] = AdaptConfig.lr,
    augment: Annotated[
        str, typer.Option(help="Augmentation preset (photo, upright, none; see kshot train).")
    ] = AdaptConfig.augment,
    seed: Annotated[int, typer.Option()] = AdaptConfig.seed,
    check: Annotated[
        Path | None,
        typer.Option(
            help="Labelled photos neither library holds (a sub-folder per class): both "
            "libraries are asked them and their accuracies compared."
        ),
    ] = None,
    device: Device = "auto",
):
    """Fine-tune a library's model on the photos it holds, then enroll them all in a new library
    bound to the adapted model. The library given is only read.

    New classes enrolled from a few photos gain most. The photos are read again from where they
    were enrolled; those that moved or whose bytes changed are named and left out. Compare the
    two libraries on photos neither holds (`--check`, or `kshot evaluate`) before you switch."""
    from kshot.fewshot.adaptation import adapt_library
    from kshot.fewshot.library import Library

    config = AdaptConfig(steps=steps, batch_size=batch_size, lr=lr, augment=augment, seed=seed)
    source = Library.open(library, device=device)
    checking = _check_items(source, check) if check is not None else None
    classes = source.classes()
    say(f"adapting {library}'s model to its {len(classes)} classes: {steps} steps")
    # One bar (rich draws one at a time): a training step counts as one photo enrolled.
    with progress("training, then enrolling", steps + sum(n for _, n in classes)) as advance:
        report = adapt_library(
            source, out, config, on_step=lambda step, loss: advance(1), on_enrolled=advance
        )
    say(
        f"trained on {report.trained} photos: loss {report.losses[0]:.3f} at the first step, "
        f"{report.losses[-1]:.3f} at the last"
    )
    render.enroll_report(report.enrolled, False)
    if report.enrolled.interrupted:
        say(
            f"kshot: interrupted while enrolling: {out} holds only part of {library}'s photos; "
            f"delete it and run the command again ({library} is unchanged)"
        )
        return EXIT_INTERRUPTED
    if checking is None:
        say(
            f"wrote {out}; {library} is unchanged. Compare the two on photos neither holds: "
            f"kshot evaluate {out} QUERIES, then kshot evaluate {library} QUERIES"
        )
    else:
        say(f"wrote {out}; {library} is unchanged")
        _say_check(source, Library.open(out, device=device), check, checking)
    added = len(report.enrolled.added) + len(report.enrolled.duplicates)
    return outcome(added, len(report.enrolled.errors))


def _check_items(library, folder: Path) -> list:
    """The labelled photos of ``--check`` that ``library`` does not hold, found before minutes
    of training; what was refused or left out is said."""
    from kshot.fewshot.adaptation import unseen_photos
    from kshot.fewshot.library import folder_items

    items, errors = folder_items(folder)
    for error in errors:
        say(f"kshot: left out of the check: {error}")
    fresh, enrolled = unseen_photos(library, items)
    if enrolled:
        say(f"{enrolled} of the photos in {folder} are enrolled, so they are left out of the check")
    if not fresh:
        raise KshotError(f"every photo in {folder} is enrolled: check with photos neither holds")
    return fresh


def _say_check(before, after, folder: Path, items: list) -> None:
    from kshot.fewshot.adaptation import check_adapted

    with progress("checking both libraries", 2 * len(items)) as advance:
        result = check_adapted(before, after, items, advance)
    say(
        f"on {result.queries} photos of {folder}, each library's own decision: "
        f"{before.root} {result.before:.1%}, {after.root} {result.after:.1%}"
    )
    if result.after < result.before:
        say(
            f"kshot: adapting lowered the accuracy on these photos: keep {before.root}, or "
            "try again with another --seed or fewer --steps"
        )
