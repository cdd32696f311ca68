"""kshot: train an embedder, build a library of labelled images, enroll new classes from a
few photos and classify new photos against them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from kshot.cli import (
    adapt_command,
    distill_command,
    enroll_command,
    init_command,
    inspection,
    maintenance,
    render,
    serve_command,
    train_command,
)
from kshot.cli.console import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_SOME_INPUTS_FAILED,
    failure_message,
    outcome,
    progress,
    say,
    set_thread_count,
    setup_logging,
)
from kshot.cli.embedders import embedder_from, open_library, set_precision
from kshot.cli.options import (
    METHOD_HELP,
    AsJson,
    Device,
    LibraryDir,
    LibraryPrecision,
    Method,
    Precision,
    PrecisionOption,
)
from kshot.errors import KshotError

app = typer.Typer(
    name="kshot",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def command(fn):
    """Register ``fn`` as a command: a ``KshotError``, an OS error (permissions, disk full,
    read-only storage) or an SQLite failure becomes one line on stderr and exit 1 (see
    :func:`failure_message`); Ctrl-C exits 130; an int returned becomes the exit code."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        setup_logging()
        try:
            code = fn(*args, **kwargs)
        except KeyboardInterrupt:
            say("kshot: interrupted; what was committed before is kept")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            message = failure_message(exc)
            if message is None:
                raise
            say(f"kshot: error: {message}")
            raise typer.Exit(EXIT_FAILED) from None
        if code:
            raise typer.Exit(code)

    return app.command()(run)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"kshot {version('kshot')}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="KSHOT_THREADS",
            help="CPU threads for torch and FAISS (default: all cores; on a busy machine fewer "
            "are faster).",
        ),
    ] = None,
):
    """Options for every command."""
    if threads is not None:
        set_thread_count(threads)


command(init_command.init)
command(enroll_command.enroll)


@command
def query(
    library: LibraryDir,
    images: Annotated[
        list[str], typer.Argument(help="Image files to classify, or folders of images.")
    ],
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to list per image.")] = 5,
    method: Annotated[
        Method | None,
        typer.Option(help="Default: the library's own (see kshot classes). " + METHOD_HELP),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help='Answer "unknown" when the best confidence (0-1) is below this. Default: the '
            "library's own, chosen from its enrolled images; 0: never.",
        ),
    ] = None,
    neighbours: Annotated[int, typer.Option(min=1, help="k of --method knn.")] = 10,
    model: Annotated[
        Path | None, typer.Option(help="Refuse to run unless the library uses this model.")
    ] = None,
    as_json: AsJson = False,
    precision: LibraryPrecision = None,
    device: Device = "auto",
    server: Annotated[
        str | None,
        typer.Option(
            help="Ask a running `kshot serve` at this URL instead; LIBRARY is then its name "
            "there. The key, if one is needed, comes from KSHOT_API_KEY.",
        ),
    ] = None,
):
    """Classify images against a library's classes."""
    from kshot.embedder.images import images_in
    from kshot.fewshot.library import QueryResult

    chosen = method.value if method is not None else None
    if server is not None:
        return _query_server(server, library, images, top_k, chosen, threshold, neighbours, as_json)

    paths, refused = images_in(images)
    lib = open_library(library, precision and precision.value, paths, device, model)
    with progress("querying", len(paths)) as advance:
        results = lib.query(paths, chosen, top_k, threshold, neighbours, advance)
    results += [QueryResult(error.source, error=error) for error in refused]
    render.query_results(results, as_json)
    failed = sum(r.error is not None for r in results)
    return outcome(len(results) - failed, failed)


def _query_server(url, library, images, top_k, method, threshold, neighbours, as_json) -> int:
    """``kshot query --server``: the images sent to a running ``kshot serve``, its answers
    printed as the local ones are."""
    import os

    from kshot.embedder.images import images_in
    from kshot.errors import InputError
    from kshot.serve.client import Client

    found, refused = images_in(images)
    paths = [path for path in found if Path(path).is_file()]
    refused += [InputError(path, "does not exist") for path in found if path not in paths]
    client = Client(url, api_key=os.environ.get("KSHOT_API_KEY"))
    results = (
        client.query(str(library), paths, top_k, threshold, method, neighbours) if paths else []
    )
    results += [{"image": error.source, "error": error.reason} for error in refused]
    render.query_result_lines(results, as_json)
    failed = sum("error" in result for result in results)
    return outcome(len(results) - failed, failed)


@command
def classes(library: LibraryDir, as_json: AsJson = False):
    """List a library's classes and how many images each holds."""
    from kshot.fewshot.store import LibraryStore

    store = LibraryStore.open_store(library)
    counts = store.classes()
    render.class_counts(counts, as_json)
    if counts and not as_json:
        render.decision_summary(store.saved_decider())


@command
def forget(
    library: LibraryDir,
    label: Annotated[
        str | None, typer.Argument(help="The class to remove, with all its images.")
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            help="Remove one image: the path it was enrolled from, or its SHA-256 (repeatable).",
        ),
    ] = None,
):
    """Remove a class, or single images, from a library."""
    from kshot.fewshot.store import LibraryStore

    store = LibraryStore.open_store(library)
    if (label is None) == (not image):
        raise KshotError("give the class to forget, or --image PATH_OR_SHA256 (not both)")
    if label is not None:
        if label not in dict(store.classes()):
            raise KshotError(f"{library} has no class {label!r} (see kshot classes {library})")
        say(f"forgot {label!r}: {store.forget(label)} image(s) removed")
        return 0
    return maintenance.forget_images(store, image)


@command
def backbones(
    details: Annotated[
        bool, typer.Option(help="Also parameters and GFLOPs per image (builds each model).")
    ] = False,
):
    """List the backbones an embedder can be built on (any timm model too, as timm:NAME), and
    whether their pretrained weights are on this machine (nothing is downloaded)."""
    from kshot.embedder.backbone_info import describe, listed_backbones
    from kshot.embedder.default_backbones import default_embedder

    for name in listed_backbones():
        info = describe(name, details)
        size = f"{info.feature_dim:>5}-d  {info.input_size:>3}px"
        weights = {
            "installed": "ImageNet weights installed",
            "cached": "pretrained weights cached",
            "absent": "weights not on this machine (downloaded on first use)",
            "none": "trained from scratch",
        }[info.weights]
        extra = (
            f"  {info.parameters / 1e6:6.1f}M params {info.gflops:6.1f} GFLOPs" if details else ""
        )
        typer.echo(f"{name:<42} {size}{extra}  {weights}")
    typer.echo(f"default for kshot init: {default_embedder()[0]}")
    typer.echo(f"default for kshot train: {default_embedder(training=True)[0]}")


@command
def embed(
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, or folders with a sub-folder per class.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for embeddings.npy and images.csv.")],
    model: Annotated[Path | None, typer.Option(help="A model file.")] = None,
    backbone: Annotated[
        str | None, typer.Option(help="An untrained backbone (a+b: an ensemble).")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Backbone weights file.")] = None,
    precision: PrecisionOption = Precision.fp32,
    device: Device = "auto",
):
    """Write embeddings of images (.npy) and their labels (.csv) for tools of your own."""
    import csv

    import numpy as np

    from kshot.atomic import atomic_path
    from kshot.embedder.inference import embed_files
    from kshot.fewshot.library import folder_items

    embedder, _ = embedder_from(model, backbone, weights, pretrained=True)
    set_precision(embedder, precision.value, device)  # on the device, in inference mode
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
    adapt_command.adapt,
    inspection.evaluate,
    inspection.projector,
    inspection.plot,
    inspection.outliers,
    maintenance.info,
    maintenance.set_decision,
    maintenance.compact,
    serve_command.serve,
):
    command(extra)


def main() -> None:
    app()
