"""The ``kshot enroll`` command line; the work is in ``kshot.fewshot.library`` and, under
``torchrun``, ``kshot.fewshot.distributed_enroll``. Registered on the app in ``app.py``. Nothing
here imports torch, so that ``--help`` answers at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kshot.cli import render
from kshot.cli.console import outcome, progress, say
from kshot.cli.embedders import open_library
from kshot.cli.options import AsJson, Device, LibraryDir, LibraryPrecision
from kshot.errors import EXIT_INTERRUPTED, KshotError


def enroll(
    library: LibraryDir,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="With --label: image files or folders of images. Without: one folder holding a "
            "folder per class (or per group, holding a folder per class: group/class labels)."
        ),
    ],
    label: Annotated[
        str | None, typer.Option("--label", "-l", help="The class of the images.")
    ] = None,
    allow_relabel: Annotated[
        bool,
        typer.Option(help="Enroll bytes already enrolled under another label (refused if not)."),
    ] = False,
    as_json: AsJson = False,
    precision: LibraryPrecision = None,
    device: Device = "auto",
):
    """Add labelled images to a library: a new class from a few photos, no retraining.

    Commits as it goes: interrupted, it keeps what it enrolled, and run again it goes on
    (images already enrolled are skipped). Under `torchrun` every process embeds a share of
    the images and the first one writes."""
    from kshot.fewshot.distributed_enroll import run_sharded
    from kshot.fewshot.library import EnrollReport

    def main(chosen_device: str, shard) -> int:
        items, refused = _items(inputs, label)
        photos = [path for path, _ in items]
        lib = open_library(library, precision and precision.value, photos, chosen_device)
        embed = shard(lib) if shard is not None else None
        with progress("enrolling", len(items)) as advance:
            report = (
                lib.enroll(items, on_progress=advance, allow_relabel=allow_relabel, embed=embed)
                if items
                else EnrollReport()
            )
        report.errors[:0] = refused
        return _reported(report, as_json)

    return run_sharded(library, device, main)


def _items(inputs: list[str], label: str | None):
    """The ``(image, label)`` pairs the command line names, and the inputs refused."""
    from kshot.embedder.images import images_in
    from kshot.fewshot.labels import check_label
    from kshot.fewshot.library import folder_items

    if label is None:
        if len(inputs) == 1 and not Path(inputs[0]).exists():
            raise KshotError(f"{inputs[0]}: does not exist")
        if len(inputs) != 1 or not Path(inputs[0]).is_dir():
            raise KshotError(
                "give --label NAME with image files or folders of images, or one folder "
                "holding a folder per class"
            )
        return folder_items(Path(inputs[0]))
    try:
        label = check_label(label)
    except ValueError as exc:
        raise KshotError(str(exc)) from None
    paths, refused = images_in(inputs)
    return [(path, label) for path in paths], refused


def _reported(report, as_json: bool) -> int:
    """``report`` printed; the exit code it calls for."""
    render.enroll_report(report, as_json)
    if report.interrupted:
        say(
            f"kshot: interrupted: the {len(report.added)} image(s) enrolled are kept; run the "
            "same command again to go on (images already enrolled are skipped)"
        )
        return EXIT_INTERRUPTED
    return outcome(len(report.added) + len(report.duplicates), len(report.errors))
