"""kshot: train an embedder, build a library of labelled images, enroll new classes from a
few photos and classify new photos against them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from kshot.cli import distill_command, inspection, render, train_command
from kshot.cli.console import (
    EXIT_FAILED,
    EXIT_SOME_INPUTS_FAILED,
    progress,
    say,
    setup_logging,
)
from kshot.cli.embedders import embedder_from
from kshot.cli.options import AsJson, Device, IndexKind, LibraryDir, Method
from kshot.errors import KshotError

app = typer.Typer(
    name="kshot",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def command(fn):
    """Register ``fn`` as a command: a ``KshotError`` becomes one line on stderr and exit 1; an
    int returned becomes the exit code."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        setup_logging()
        try:
            code = fn(*args, **kwargs)
        except KshotError as exc:
            say(f"kshot: error: {exc}")
            raise typer.Exit(EXIT_FAILED) from None
        if code:
            raise typer.Exit(code)

    return app.command()(run)


@command
def init(
    library: LibraryDir,
    model: Annotated[Path | None, typer.Option(help="A model file from `kshot train`.")] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="Untrained: the backbone's pretrained features (see `kshot backbones`)."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Backbone weights file to use instead of downloading.")
    ] = None,
    pretrained: Annotated[bool, typer.Option(help="With --backbone: ImageNet weights.")] = True,
    index: Annotated[
        IndexKind, typer.Option(help="flat: exact; hnsw, ivfpq: large libraries.")
    ] = IndexKind.flat,
    device: Device = "auto",
):
    """Create an empty library bound to one model."""
    from kshot.fewshot.library import Library, check_new_library_path
    from kshot.index.vector_index import IndexSpec

    check_new_library_path(library)
    embedder, info = embedder_from(model, backbone, weights, pretrained)
    Library.create(library, embedder, info, IndexSpec(kind=index.value), device=device)
    say(f"created library {library} ({embedder.embedding_dim}-d embeddings, {index.value} index)")
    say(f"next: kshot enroll {library} --label NAME IMAGE...   or   kshot enroll {library} DIR")


@command
def enroll(
    library: LibraryDir,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files (with --label), or one folder with a sub-folder per class."
        ),
    ],
    label: Annotated[
        str | None, typer.Option("--label", "-l", help="The class of the images.")
    ] = None,
    as_json: AsJson = False,
    device: Device = "auto",
):
    """Add labelled images to a library: a new class from a few photos, no retraining."""
    from kshot.fewshot.labels import check_label
    from kshot.fewshot.library import EnrollReport, Library, folder_items

    if label is None:
        if len(inputs) != 1 or not Path(inputs[0]).is_dir():
            raise KshotError(
                "give --label NAME with image files, or one folder holding a sub-folder per class"
            )
        items, refused = folder_items(Path(inputs[0]))
    else:
        try:
            label = check_label(label)
        except ValueError as exc:
            raise KshotError(str(exc)) from None
        items, refused = [(Path(p), label) for p in inputs], []
    lib = Library.open(library, device=device)
    with progress("enrolling", len(items)) as advance:
        report = lib.enroll(items, on_progress=advance) if items else EnrollReport()
    report.errors[:0] = refused
    render.enroll_report(report, as_json)
    return EXIT_SOME_INPUTS_FAILED if report.errors else 0


@command
def query(
    library: LibraryDir,
    images: Annotated[list[str], typer.Argument(help="Image files to classify.")],
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to list per image.")] = 5,
    method: Annotated[
        Method,
        typer.Option(help="prototype: nearest class mean; knn: weighted vote of neighbours."),
    ] = Method.prototype,
    threshold: Annotated[
        float | None,
        typer.Option(help='Answer "unknown" when the best score (cosine) is below this.'),
    ] = None,
    neighbours: Annotated[int, typer.Option(min=1, help="k of --method knn.")] = 10,
    model: Annotated[
        Path | None, typer.Option(help="Refuse to run unless the library uses this model.")
    ] = None,
    as_json: AsJson = False,
    device: Device = "auto",
):
    """Classify images against a library's classes."""
    from kshot.fewshot.library import Library

    lib = Library.open(library, model=model, device=device)
    with progress("querying", len(images)) as advance:
        results = lib.query(images, method.value, top_k, threshold, neighbours, advance)
    render.query_results(results, as_json)
    return EXIT_SOME_INPUTS_FAILED if any(r.error for r in results) else 0


@command
def classes(library: LibraryDir, as_json: AsJson = False):
    """List a library's classes and how many images each holds."""
    from kshot.fewshot.library import Library

    render.class_counts(Library.open(library).classes(), as_json)


@command
def forget(
    library: LibraryDir,
    label: Annotated[str, typer.Argument(help="The class to remove, with all its images.")],
):
    """Remove a class from a library."""
    from kshot.fewshot.library import Library

    lib = Library.open(library)
    if label not in dict(lib.classes()):
        raise KshotError(f"{library} has no class {label!r} (see kshot classes {library})")
    say(f"forgot {label!r}: {lib.forget(label)} image(s) removed")


@command
def backbones():
    """List the backbones an embedder can be built on."""
    from kshot.embedder.backbones import BACKBONES, DEFAULT_BACKBONE

    for name, spec in BACKBONES.items():
        config = spec.default_preprocess()
        pretrained = "ImageNet weights" if spec.pretrained else "trained from scratch"
        default = "  (default)" if name == DEFAULT_BACKBONE else ""
        size = f"{spec.feature_dim(config):>5}-d  {config.input_size}px"
        typer.echo(f"{name:<20} {size}  {pretrained}{default}")


@command
def embed(
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, or folders with a sub-folder per class.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for embeddings.npy and images.csv.")],
    model: Annotated[Path | None, typer.Option(help="A model file.")] = None,
    backbone: Annotated[str | None, typer.Option(help="An untrained backbone.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Backbone weights file.")] = None,
    device: Device = "auto",
):
    """Write embeddings of images (.npy) and their labels (.csv) for tools of your own."""
    import csv

    import numpy as np

    from kshot.atomic import atomic_path
    from kshot.embedder.inference import embed_files
    from kshot.embedder.runtime import resolve_device
    from kshot.fewshot.library import folder_items

    embedder, _ = embedder_from(model, backbone, weights, pretrained=True)
    embedder.for_inference(resolve_device(device))
    items: list[tuple[Path, str]] = []
    refused = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found, bad = folder_items(entry)
            items += found
            refused += bad
        else:
            items.append((entry, ""))
    with progress("embedding", len(items)) as advance:
        embedded = embed_files(embedder, [p for p, _ in items], on_progress=advance)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "embeddings.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, embedded.vectors)
    with atomic_path(out / "images.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "image", "label"])
        for row, i in enumerate(embedded.indices):
            writer.writerow([row, str(items[i][0]), items[i][1]])
    errors = refused + [error for _, error in embedded.errors]
    for error in errors:
        say(f"kshot: {error}")
    say(f"wrote {len(embedded.indices)} embeddings of {embedder.embedding_dim} dims to {out}")
    return EXIT_SOME_INPUTS_FAILED if errors else 0


@command
def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write data, model and library (default: a new temporary folder)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 4,
):
    """Train, enroll and query end to end on scikit-learn's handwritten digits (offline)."""
    from kshot.cli.demo import run_demo

    run_demo(workdir, epochs)


for extra in (
    train_command.train,
    distill_command.distill,
    inspection.evaluate,
    inspection.projector,
    inspection.plot,
    inspection.outliers,
):
    command(extra)


def main() -> None:
    app()
