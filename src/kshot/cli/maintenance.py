"""Looking after a library: ``kshot info``, ``kshot compact``, and ``kshot forget --image``.
``info`` and ``forget`` read the library without importing torch or FAISS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from kshot.cli.console import outcome, say
from kshot.cli.options import (
    CENTRE_HELP,
    METHOD_HELP,
    AsJson,
    Centre,
    IndexKind,
    LibraryDir,
    Method,
)

_SHA256 = re.compile(r"[0-9a-f]{64}")


def forget_images(store, images: list[str]) -> int:
    """Remove each of ``images`` (an enrolled path, or a SHA-256) from ``store``; a path is
    matched by where it was enrolled from and, if it can be read, by its bytes."""
    from kshot.embedder.images import file_sha256

    keys_of: dict[str, set[str]] = {}
    for given in images:
        if _SHA256.fullmatch(given.lower()):
            keys_of[given] = {given.lower()}
            continue
        path = Path(given)
        keys_of[given] = {str(path.resolve())} | ({file_sha256(path)} - {None})
    removed = store.forget_images(sorted(set().union(*keys_of.values())))
    for row in removed:
        say(f"forgot {row.source} ({row.label!r}, sha256 {row.sha256[:12]})")
    matched = {
        given for given, keys in keys_of.items() for r in removed if keys & {r.source, r.sha256}
    }
    for given in keys_of.keys() - matched:
        say(f"kshot: {given}: no enrolled image has this path or these bytes")
    return outcome(len(matched), len(keys_of) - len(matched))


def info(library: LibraryDir, as_json: AsJson = False):
    """What a library holds: model, embedding size, index, classes and images, disk use."""
    import json

    from kshot.fewshot.store import INDEX, LibraryStore
    from kshot.index.header import header_of

    store = LibraryStore.open_store(library)
    manifest, counts = store.manifest, store.classes()
    try:
        header = header_of(store.root / INDEX)
    except (OSError, ValueError):
        header = None
    index = {"kind": manifest.index.kind}
    if header is not None and "last_id" in header:
        index["current"] = header.get("stamp") == store.catalogue.stamp()
        index["tombstones"] = len(header.get("removed", []))
    details = {
        "library": str(library),
        "model": dict(manifest.model, sha256=manifest.model_sha256),
        "embedding_dim": manifest.embedding_dim,
        "index": index,
        "classes": len(counts),
        "images": sum(n for _, n in counts),
        "disk_bytes": store.disk_use(),
        "decision": _decision(store) if counts else None,
        "tta": list(manifest.tta),
    }
    if as_json:
        typer.echo(json.dumps(details, ensure_ascii=False))
        return
    model = details["model"]
    backbone = model.get("backbone", "not recorded (library made before kshot recorded it)")
    trained = {True: ", trained", False: ", untrained"}.get(model.get("trained"), "")
    if adapted := model.get("adapted"):
        trained += f", adapted from {adapted['from']} on {adapted['photos']} photos"
    saved = {
        True: "saved index current",
        False: "saved index behind the catalogue (caught up "
        "in memory; a write or kshot compact saves it)",
    }.get(index.get("current"), "")
    typer.echo(f"library     {library}")
    typer.echo(f"model       {backbone}{trained}; sha256 {manifest.model_sha256[:16]}")
    typer.echo(f"embeddings  {manifest.embedding_dim} dimensions")
    typer.echo(f"index       {manifest.index.kind}" + (f"; {saved}" if saved else ""))
    typer.echo(f"contents    {details['images']} image(s) in {details['classes']} class(es)")
    decision = details["decision"]
    if decision is not None:
        rule = f"decisions   {decision['method']} (centring: {decision['centre']}); "
        if not decision["fitted"]:
            typer.echo(rule + "not fitted on the library as it is now (the next enroll or forget)")
        else:
            threshold = decision["threshold"]
            below = f"confidence {threshold:.3f}" if threshold is not None else "no own threshold"
            typer.echo(rule + "unknown below " + below)
    disk = details["disk_bytes"]
    typer.echo(
        f"disk        {sum(disk.values()) / 1e6:.1f} MB ("
        + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in disk.items())
        + ")"
    )


def _decision(store) -> dict:
    """How the library decides, and its own threshold: from the saved decision, never fitted
    here (``fitted`` False when it does not match the library as it is now)."""
    decider = store.saved_decider()
    if decider is None:
        settings = store.settings
        return {"method": settings.method, "centre": settings.centre, "fitted": False}
    calibration = decider.calibration
    return {
        "fitted": True,
        "method": decider.settings.method,
        "centre": decider.settings.centre,
        "threshold": calibration.threshold,
        "known_rejected": calibration.known_rejected,
        "unknown_accepted": calibration.unknown_accepted,
    }


def set_decision(
    library: LibraryDir,
    method: Annotated[Method | None, typer.Option(help=METHOD_HELP)] = None,
    centre: Annotated[Centre | None, typer.Option(help=CENTRE_HELP)] = None,
    neighbours: Annotated[int | None, typer.Option(min=1, help="k of --method knn.")] = None,
):
    """Change how a library decides (what kshot init chose; unchanged what is not given), then
    fit and save that decision. Nothing enrolled changes."""
    from kshot.cli import render
    from kshot.fewshot.decider import DecisionSettings
    from kshot.fewshot.store import LibraryStore

    store = LibraryStore.open_store(library)
    before = store.settings
    settings = DecisionSettings(
        method.value if method else before.method,
        neighbours or before.neighbours,
        centre.value if centre else before.centre,
    )
    store.change_settings(settings)
    say(f"{library} decides with {settings.method} (centring: {settings.centre}) from now on")
    if store.classes():
        render.decision_summary(store.saved_decider())


def compact(
    library: LibraryDir,
    index: Annotated[
        IndexKind | None,
        typer.Option(help="Rebuild the index as this kind (see BENCHMARKS.md for which suits)."),
    ] = None,
):
    """Save the library's index as its catalogue stands (folding in the changes made since it
    was saved, and dropping what an HNSW graph still holds of removed images)."""
    from kshot.fewshot.library import Library

    lib = Library.open(library, device="cpu")
    folded = lib.compact(index.value if index is not None else None)
    say(
        f"saved {library}'s {lib.manifest.index.kind} index: {len(lib.index)} vector(s), "
        f"{folded} change(s) folded in"
    )
