"""A library adapted to its own classes: its model fine-tuned on the photos it holds
(:mod:`kshot.embedder.adapt`), and a new library built with that model from the same photos.

The library it starts from is only read. Its photos are read again from the paths they were
enrolled from, so those that moved, are unreadable or whose bytes are no longer those enrolled
(another photo saved under the same name) are named and left out, neither trained on nor
enrolled under a label that was given to other bytes; the new library has the same classes,
decision settings, index kind, test-time views and precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kshot.embedder.adapt import adapt_embedder
from kshot.embedder.adapt_config import AdaptConfig
from kshot.embedder.checkpoint import load_checkpoint
from kshot.embedder.images import file_sha256
from kshot.embedder.inference import load_pixels
from kshot.errors import InputError, KshotError
from kshot.fewshot.evaluation import evaluate_library
from kshot.fewshot.library import EnrollReport, Library
from kshot.fewshot.rules.base import class_means
from kshot.fewshot.store import MODEL, check_new_library_path

# Photos of one class that train: 80 steps of 32 photos see ~2,600, so more would only cost
# decoding time and memory (3 x 224 x 224 bytes each).
MOST_PER_CLASS = 50


@dataclass
class AdaptReport:
    trained: int = 0  # photos the model trained on (an unreadable one is named by ``enrolled``)
    losses: list[float] = field(default_factory=list)
    enrolled: EnrollReport | None = None


@dataclass
class AdaptCheck:
    """Both libraries asked the same labelled photos, each with its own decision."""

    queries: int  # photos of classes the libraries hold, asked
    before: float  # top-1 accuracy of the library adapted from
    after: float  # of the adapted library


def training_photos(labels: list[str], most: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Indices of at most ``most`` photos of each class (a seeded draw), and the classes."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    by_class = np.asarray(labels)
    chosen = []
    for name in classes:
        members = np.flatnonzero(by_class == name)
        if len(members) > most:
            members = np.sort(rng.choice(members, size=most, replace=False))
        chosen.append(members)
    return np.concatenate(chosen), classes


def adapt_library(
    library: Library,
    out: Path,
    config: AdaptConfig,
    most_per_class: int = MOST_PER_CLASS,
    on_step: Callable[[int, float], None] | None = None,
    on_enrolled: Callable[[int], None] | None = None,
) -> AdaptReport:
    """Fine-tune ``library``'s model on its photos and enroll them all in a new library at
    ``out`` (which must not exist). ``on_step(step, loss)`` after each training step,
    ``on_enrolled(n)`` after each batch of ``n`` photos enrolled."""
    out = check_new_library_path(out)
    entries = library.entries()
    if len(set(entries.labels)) < 2:
        raise KshotError(f"{library.root}: adapting needs a library of at least 2 classes")
    report = AdaptReport()
    usable, changed = _unchanged(entries)
    _refuse_lost_class(entries.labels, usable, changed)
    chosen, classes = training_photos(
        [entries.labels[i] for i in usable], most_per_class, config.seed
    )
    chosen = usable[chosen]
    embedder, info = load_checkpoint(library.root / MODEL)
    pixels, kept, failed = load_pixels(
        embedder.config.preprocess, [entries.sources[i] for i in chosen]
    )
    rows = chosen[kept]
    _refuse_lost_class(entries.labels, rows, changed + [(chosen[j], e) for j, e in failed])
    codes = np.searchsorted(classes, np.asarray(entries.labels)[rows])
    prototypes = class_means(entries.vectors[rows], codes, len(classes)).astype(np.float32)
    embedder = embedder.to(library.device)
    report.losses = adapt_embedder(embedder, pixels, codes, prototypes, config, on_step)
    report.trained = len(rows)
    info = {
        **info,
        "adapted": {"from": library.root.name, "photos": report.trained, **vars(config)},
    }
    manifest = library.manifest
    adapted = Library.create(
        out,
        embedder.cpu(),
        info,
        manifest.index,
        device=str(library.device),
        settings=library.settings,
        tta=manifest.tta,
        precision=manifest.precision,
    )
    items = [(Path(entries.sources[i]), entries.labels[i]) for i in usable]
    # The library held these pairs, the same bytes under two labels too if it was asked to.
    report.enrolled = adapted.enroll(items, on_progress=on_enrolled, allow_relabel=True)
    report.enrolled.errors[:0] = [error for _, error in changed]
    return report


def _unchanged(entries) -> tuple[np.ndarray, list[tuple[int, InputError]]]:
    """Indices of the entries whose source still holds the bytes enrolled (or cannot be read:
    reading it names why), and ``(index, error)`` for each of the others."""
    usable, changed = [], []
    for i, (source, enrolled) in enumerate(zip(entries.sources, entries.sha256, strict=True)):
        digest = file_sha256(source)
        if digest is None or digest == enrolled:
            usable.append(i)
        else:
            reason = (
                f"is no longer the photo enrolled as {entries.labels[i]!r} (its bytes changed), "
                "so it was left out; enroll it again if its label is right"
            )
            changed.append((i, InputError(source, reason)))
    return np.asarray(usable, dtype=np.int64), changed


def _refuse_lost_class(
    labels: list[str], rows: np.ndarray, problems: list[tuple[int, InputError]]
) -> None:
    """Stop before anything is written if a class has no photo to train on: ``rows`` are the
    entries that train, ``problems`` why others cannot (entry index, error)."""
    lost = sorted(set(labels) - {labels[i] for i in rows})
    if lost:
        example = next(error for i, error in problems if labels[i] == lost[0])
        raise KshotError(
            f"no photo of {', '.join(lost)} could be read, unchanged, from where it was enrolled "
            f"({example}): restore them, or `kshot forget` the class first"
        )


def unseen_photos(
    library: Library, items: list[tuple[Path, str]]
) -> tuple[list[tuple[Path, str]], int]:
    """Those of ``items`` (photo, label) whose bytes ``library`` does not hold, and how many it
    holds: those trained the adapted model, so checking it on them would flatter it."""
    held = set(library.entries().sha256)
    fresh = [(path, label) for path, label in items if file_sha256(path) not in held]
    return fresh, len(items) - len(fresh)


def check_adapted(
    before: Library,
    after: Library,
    queries: list[tuple[Path, str]],
    on_progress: Callable[[int], None] | None = None,
) -> AdaptCheck:
    """Ask both libraries ``queries`` (photo, true label; see :func:`unseen_photos`) and compare
    their accuracy on those of the classes they hold."""
    old, new = (evaluate_library(lib, queries, on_progress=on_progress) for lib in (before, after))
    return AdaptCheck(old["queries"], old["accuracy"], new["accuracy"])
