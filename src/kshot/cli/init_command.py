"""The ``kshot init`` command line: a new, empty library bound to one model. Registered on the
app in ``app.py``; nothing here imports torch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from kshot.cli.console import say
from kshot.cli.embedders import embedder_from, set_precision
from kshot.cli.options import (
    CENTRE_HELP,
    METHOD_HELP,
    Centre,
    Device,
    IndexKind,
    LibraryDir,
    Method,
    Precision,
    PrecisionOption,
)


def init(
    library: LibraryDir,
    model: Annotated[Path | None, typer.Option(help="A model file from `kshot train`.")] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="Untrained: the backbone's pretrained features (see `kshot backbones`); "
            "names joined by + make an ensemble."
        ),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Backbone weights file to use instead of downloading.")
    ] = None,
    pretrained: Annotated[bool, typer.Option(help="With --backbone: ImageNet weights.")] = True,
    index: Annotated[
        IndexKind | None,
        typer.Option(
            help="flat: exact (unless chosen here, it becomes an HNSW graph at 200,000 images); "
            "hnsw, ivfpq: large libraries.",
            show_default="flat",
        ),
    ] = None,
    method: Annotated[Method, typer.Option(help="How queries are decided. " + METHOD_HELP)] = (
        Method.prototype
    ),
    centre: Annotated[Centre, typer.Option(help=CENTRE_HELP)] = Centre.whiten,
    tta: Annotated[
        list[str] | None,
        typer.Option(
            help="Test-time augmentation view averaged in at enroll and query (repeatable): "
            "hflip, vflip, full. Each view costs one more forward pass per image.",
        ),
    ] = None,
    precision: PrecisionOption = Precision.fp32,
    device: Device = "auto",
):
    """Create an empty library bound to one model (with neither --model nor --backbone: the
    default embedder, which works offline)."""
    from kshot.fewshot.decider import DecisionSettings
    from kshot.fewshot.library import Library, check_new_library_path
    from kshot.index.vector_index import IndexSpec

    check_new_library_path(library)
    if model is None and backbone is None:
        from kshot.embedder.default_backbones import default_embedder

        backbone, notice = default_embedder()
        if notice:
            say(f"kshot: {notice}")
        say(f"no --model or --backbone: using the default embedder, {backbone}")
    embedder, info = embedder_from(model, backbone, weights, pretrained)
    chosen = set_precision(embedder, precision.value, device)
    settings = DecisionSettings(method.value, centre=centre.value)
    spec = IndexSpec(kind=(index or IndexKind.flat).value)
    if index is IndexKind.flat:  # chosen: it stays flat however large the library grows
        spec = dataclasses.replace(spec, graph_from=0)
    Library.create(
        library,
        embedder,
        info,
        spec,
        device=device,
        settings=settings,
        tta=tta or (),
        precision=chosen,
    )
    say(
        f"created library {library} ({embedder.embedding_dim}-d embeddings, {spec.kind} index, "
        f"{method.value} decisions, {chosen})"
    )
    say(f"next: kshot enroll {library} --label NAME IMAGE...   or   kshot enroll {library} DIR")
