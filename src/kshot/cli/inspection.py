"""The commands people decide by: ``evaluate``, and for looking at a library, ``projector``,
``plot`` and ``outliers``. Registered on the app in ``app.py``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from kshot.cli.console import progress, say
from kshot.cli.embedders import embedder_from
from kshot.cli.options import AsJson, Device, LibraryDir, Method, Precision, PrecisionOption
from kshot.errors import KshotError


def evaluate(
    data: Annotated[
        Path,
        typer.Argument(help="A folder with a sub-folder per class (or a library, or support)."),
    ],
    queries: Annotated[
        Path | None,
        typer.Argument(
            help="Query folder (sub-folder per class), against DATA as a library or "
            "as the support folder."
        ),
    ] = None,
    model: Annotated[
        list[Path] | None, typer.Option(help="Model file; repeat it to compare models.")
    ] = None,
    backbone: Annotated[
        list[str] | None, typer.Option(help="Untrained backbone to evaluate (repeatable).")
    ] = None,
    shots: Annotated[int, typer.Option(min=1, help="Support images per class.")] = 5,
    unknown_classes: Annotated[
        int, typer.Option(min=0, help="Classes held out of the library, to test 'unknown'.")
    ] = 0,
    ways: Annotated[int | None, typer.Option(min=2, help="Episodic: classes per episode.")] = None,
    episodes: Annotated[int | None, typer.Option(min=1, help="Episodic: how many.")] = None,
    queries_per_class: Annotated[
        int, typer.Option("--queries", min=1, help="Episodic: queries per class.")
    ] = 15,
    method: Annotated[
        list[Method] | None,
        typer.Option(help="Decision rule (repeatable, side by side). Default: the library's own."),
    ] = None,
    neighbours: Annotated[int, typer.Option(min=1, help="k of --method knn.")] = 10,
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="Folder for the reports.")] = Path("kshot-report"),
    speed: Annotated[
        bool,
        typer.Option(help="Comparing: also ms/image at batch 1 and 32, and the model's size."),
    ] = True,
    precision: PrecisionOption = Precision.fp32,
    device: Device = "auto",
):
    """Measure accuracy, precision, recall, F1 and retrieval metrics; episodes; 'unknown'."""
    from kshot.embedder.speed import speed_report
    from kshot.fewshot import evaluation, reports
    from kshot.fewshot.library import MANIFEST, Library, folder_items

    methods = [m.value for m in method] if method else [None]
    if (data / MANIFEST).is_file():
        if queries is None:
            raise KshotError("give the folder of labelled queries to evaluate the library on")
        library = Library.open(data, device=device)
        items, _ = folder_items(queries)
        results = {}
        for chosen in methods:
            with progress("evaluating", len(items)) as advance:
                report = evaluation.evaluate_library(
                    library, items, chosen, neighbours, (), advance
                )
            results[_method_name(data.name, chosen, methods)] = report
        _publish_all(out, results)
        return
    candidates = _embedders(model or [], backbone or [], device, precision.value)
    items, _ = folder_items(data)
    if episodes is not None:
        for name, (embedder, _) in candidates.items():
            report = evaluation.evaluate_episodes(
                embedder,
                items,
                ways or 5,
                shots,
                queries_per_class,
                episodes,
                seed,
                neighbours,
                [m for m in methods if m is not None] or evaluation.METHODS,
            )
            _publish(out, f"{name}-episodes", report, reports.episodes_markdown(name, report))
        return
    if queries is not None:
        support, query_items, held_out = items, folder_items(queries)[0], []
    else:
        support, query_items, held_out = evaluation.split_items(items, shots, unknown_classes, seed)
    results = {}
    for name, (embedder, info) in candidates.items():
        with tempfile.TemporaryDirectory() as tmp, progress(name, len(query_items)) as advance:
            by_method = evaluation.evaluate_split(
                embedder,
                info,
                support,
                query_items,
                Path(tmp) / "library",
                methods,
                neighbours=neighbours,
                held_out=held_out,
                on_progress=advance,
            )
        timed = speed_report(embedder) if speed and len(candidates) > 1 else None
        for chosen, report in by_method.items():
            if timed is not None:
                report["speed"] = timed
            results[_method_name(name, chosen, methods)] = report
    _publish_all(out, results)


def _method_name(name: str, method: str | None, methods: list) -> str:
    """A report's name: the model's, with the rule when several are compared."""
    return f"{name}-{method}" if len(methods) > 1 and method is not None else name


def _publish_all(out: Path, results: dict) -> None:
    """Each report, then a side-by-side table when there are several."""
    from kshot.fewshot import reports

    for name, report in results.items():
        _publish(out, name, report, reports.split_markdown(name, report))
    if len(results) > 1:
        reports.write_report(out, "comparison", results, reports.comparison_markdown(results))
        typer.echo(reports.comparison_markdown(results))


def _embedders(models: list[Path], backbones: list[str], device: str, precision: str) -> dict:
    """``{name: (embedder, info)}`` for each model file and untrained backbone, on ``device``
    in ``precision`` (``auto``: each its own)."""
    from kshot.cli.embedders import set_precision

    if not models and not backbones:
        raise KshotError("give --model FILE or --backbone NAME (each may be repeated)")
    found = {}
    for path in models:  # keyed by the path as given: a/model.kshot and b/model.kshot both count
        found[_report_name(path, models)] = embedder_from(path, None, None, True)
    for name in backbones:
        found[name] = embedder_from(None, name, None, True)
    for embedder, _ in found.values():
        set_precision(embedder, precision, device)  # on the device, in inference mode
    return found


def _report_name(path: Path, models: list[Path]) -> str:
    """A model's name in reports: its file's stem, or its path (``/`` as ``-``) if another model
    of the comparison has the same stem."""
    if sum(other.stem == path.stem for other in models) == 1:
        return path.stem
    return str(path.with_suffix("")).strip("/").replace("/", "-")


def _publish(out: Path, name: str, report: dict, markdown: str) -> None:
    """Write the report (and its confusion matrix), print its markdown summary."""
    from kshot.fewshot import reports

    paths = reports.write_report(out, name, report, markdown)
    if "confusion" in report:
        from kshot.fewshot.plots import confusion_png

        confusion = report["confusion"]
        path = out / f"{name}-confusion.png"
        paths.append(confusion_png(confusion["matrix"], confusion["labels"], path))
    typer.echo(markdown.split("\n## ")[0].rstrip())
    say(f"report: {', '.join(str(p) for p in paths)}")


def projector(
    library: LibraryDir,
    logdir: Annotated[Path, typer.Option(help="Where `tensorboard --logdir` will look.")],
    thumbnail_size: Annotated[int, typer.Option(min=8, help="Sprite tile side in pixels.")] = 48,
):
    """Export the library's embeddings for TensorBoard's projector, with image thumbnails."""
    from kshot.embedder.images import read_image
    from kshot.errors import InputError
    from kshot.fewshot.library import Library
    from kshot.fewshot.projector import export_projector

    entries = Library.open(library).entries()
    thumbnails = []
    with progress("thumbnails", len(entries.sources)) as advance:
        for source in entries.sources:
            try:
                image = read_image(source, thumbnail_size, 3).image
                image.thumbnail(
                    (thumbnail_size, thumbnail_size)
                )  # bounds memory: PNGs decode whole
                thumbnails.append(image)
            except InputError:
                thumbnails.append(None)  # the file moved since it was enrolled: a grey tile
            advance(1)
    folder = export_projector(
        entries.vectors, entries.labels, entries.sources, thumbnails, logdir, thumbnail_size
    )
    missing = sum(t is None for t in thumbnails)
    say(
        f"wrote {len(entries.ids)} embeddings to {folder}"
        + (f" ({missing} without thumbnail)" if missing else "")
    )
    say(f"open with: tensorboard --logdir {logdir}  (Projector tab)")


def plot(
    library: LibraryDir,
    out: Annotated[Path, typer.Option(help="Folder for pca.png and tsne.png.")] = Path(
        "kshot-plots"
    ),
    seed: int = 0,
):
    """PCA and t-SNE scatter plots of the library's embeddings, coloured by class."""
    from kshot.fewshot.library import Library
    from kshot.fewshot.plots import embedding_plots

    entries = Library.open(library).entries()
    try:
        written = embedding_plots(entries.vectors, entries.labels, out, seed)
    except ValueError as exc:
        raise KshotError(str(exc)) from None
    say("wrote " + ", ".join(str(p) for p in written.values()))


def outliers(
    library: LibraryDir,
    neighbours: Annotated[int, typer.Option(min=1, help="Neighbours consulted per image.")] = 5,
    min_disagreement: Annotated[
        float, typer.Option(help="Share of neighbours with another label to report an image.")
    ] = 0.6,
    duplicate_similarity: Annotated[
        float, typer.Option(help="Cosine at or above which two images count as near-duplicates.")
    ] = 0.97,
    as_json: AsJson = False,
):
    """Enrolled images whose neighbours disagree with their label, and near-duplicates filed
    under different labels: likely mislabelled or misleading images."""
    from kshot.fewshot.library import Library
    from kshot.fewshot.outliers import cross_label_duplicates, label_disagreements

    entries = Library.open(library).entries()
    source = dict(zip(entries.ids.tolist(), entries.sources, strict=True))
    suspects = label_disagreements(
        entries.vectors, entries.labels, entries.ids, neighbours, min_disagreement
    )
    pairs = cross_label_duplicates(
        entries.vectors, entries.labels, entries.ids, duplicate_similarity
    )
    # Duplicates first: the same photo under two labels is a certain finding, a disagreement a hint.
    if as_json:
        for row in pairs:
            images = [source[i] for i in row["ids"]]
            typer.echo(
                json.dumps({"kind": "duplicate", "images": images, **row}, ensure_ascii=False)
            )
        for row in suspects:
            typer.echo(
                json.dumps(
                    {"kind": "disagreement", "image": source[row["id"]], **row}, ensure_ascii=False
                )
            )
        return
    for row in pairs:
        a, b = (source[i] for i in row["ids"])
        typer.echo(
            f"{a}\t{b}\tnear-duplicates ({row['similarity']:.3f}) labelled "
            f"{row['labels'][0]} and {row['labels'][1]}"
        )
    for row in suspects:
        typer.echo(
            f"{source[row['id']]}\t{row['label']}\tneighbours say {row['suggested']} "
            f"({row['consensus']:.0%} of them)"
        )
    say(
        f"{len(pairs)} near-duplicate pair(s) under different labels; "
        f"{len(suspects)} image(s) whose neighbours say another label"
    )
