"""Evaluating an embedder on labelled images, through a real library.

Split mode builds a library from the support images and classifies every query the way
``kshot query`` does; library mode classifies queries against an existing library; episodic mode
embeds every image once and samples N-way K-shot episodes from the embeddings. Held-out classes
(kept out of the library) measure how well "unknown" works.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kshot.embedder.inference import embed_files
from kshot.embedder.model import Embedder
from kshot.errors import KshotError
from kshot.fewshot.episodes import run_episodes
from kshot.fewshot.library import Library
from kshot.fewshot.metrics import (
    class_roc_auc,
    classification_metrics,
    known_unknown_auroc,
    retrieval_metrics,
)
from kshot.fewshot.openset import open_set_curve
from kshot.fewshot.rules import METHODS

Items = list[tuple[Path, str]]


def split_items(
    items: Sequence[tuple[Path, str]], shots: int, unknown_classes: int = 0, seed: int = 0
) -> tuple[Items, Items, list[str]]:
    """``(support, queries, held_out)``: ``shots`` random images of each class as support, the
    rest as queries; ``unknown_classes`` random classes are held out, all their images queries.
    Classes with no image left for the queries are support only."""
    rng = random.Random(seed)
    by_class: dict[str, list[Path]] = defaultdict(list)
    for path, label in items:
        by_class[label].append(path)
    labels = sorted(by_class)
    held_out = sorted(rng.sample(labels, unknown_classes)) if unknown_classes else []
    support: Items = []
    queries: Items = []
    for label in labels:
        paths = sorted(by_class[label])
        rng.shuffle(paths)
        cut = 0 if label in held_out else shots
        support += [(p, label) for p in paths[:cut]]
        queries += [(p, label) for p in paths[cut:]]
    return support, queries, held_out


def evaluate_library(
    library: Library,
    queries: Sequence[tuple[Path, str]],
    method: str | None = None,
    neighbours: int = 10,
    held_out: Sequence[str] = (),
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Classify ``queries`` (image, true label) against ``library``: classification and
    retrieval metrics on the classes it holds, misclassified images, ROC-AUC, and, for the other
    labels (``held_out``, and any class the library does not hold), the open-set curve of the
    "unknown" threshold and both error rates at the library's own threshold."""
    enrolled = {label for label, _ in library.classes()}
    held_out = sorted(set(held_out) | {label for _, label in queries if label not in enrolled})
    start = time.perf_counter()
    embedded = library.embed([p for p, _ in queries], on_progress=on_progress)
    seconds = time.perf_counter() - start
    settings = library.settings_for(method, neighbours)
    decider, confidences = library.confidences(embedded.vectors, settings)
    n = len(decider.classes)
    decisions = library.decisions(embedded.vectors, settings, top_k=n, threshold=0.0)
    true = [queries[i][1] for i in embedded.indices]
    known = [j for j, label in enumerate(true) if label not in held_out]
    if not known:
        raise KshotError("no readable query of an enrolled class to evaluate")
    entries = library.entries()
    report = {
        "method": decider.settings.method,
        "centre": decider.settings.centre,
        "classes": n,
        "support_images": len(entries.ids),
        "seconds_per_image": seconds / max(len(embedded.indices), 1),
        **classification_metrics(
            [true[j] for j in known], [[label for label, _ in decisions[j].top_k] for j in known]
        ),
        "roc_auc": class_roc_auc([true[j] for j in known], confidences[known], decider.classes),
        "retrieval": retrieval_metrics(
            embedded.vectors[known], [true[j] for j in known], entries.vectors, entries.labels
        ),
        "misclassified": [
            {
                "image": str(queries[embedded.indices[j]][0]),
                "label": true[j],
                "predicted": decisions[j].label,
                "score": decisions[j].score,
            }
            for j in known
            if decisions[j].label != true[j]
        ],
        "unreadable": [{"image": e.source, "error": e.reason} for _, e in embedded.errors],
        "library_threshold": decider.calibration.threshold,
    }
    unknown = [j for j, label in enumerate(true) if label in held_out]
    if unknown:
        known_best = np.array([decisions[j].score for j in known])
        unknown_best = np.array([decisions[j].score for j in unknown])
        report["held_out_classes"] = list(held_out)
        report["open_set"] = open_set_curve(
            known_best, np.array([decisions[j].label == true[j] for j in known]), unknown_best
        )
        report["open_set"]["auroc"] = known_unknown_auroc(known_best, unknown_best)
        threshold = decider.calibration.threshold
        if threshold is not None:
            report["open_set"]["at_library_threshold"] = {
                "threshold": threshold,
                "known_rejected": float(np.mean(known_best < threshold)),
                "unknown_accepted": float(np.mean(unknown_best >= threshold)),
            }
    return report


def evaluate_split(
    embedder: Embedder,
    info: dict,
    support: Sequence[tuple[Path, str]],
    queries: Sequence[tuple[Path, str]],
    workdir: Path,
    methods: Sequence[str | None] = (None,),
    **options,
) -> dict[str | None, dict]:
    """Enroll ``support`` into a new library in ``workdir`` and evaluate ``queries`` on it, once
    per decision rule of ``methods`` (None: the library's default): ``{method: report}``."""
    from kshot.index.vector_index import IndexSpec

    library = Library.create(workdir, embedder, info, IndexSpec())
    enrolled = library.enroll(support)
    reports = {}
    for method in methods:
        reports[method] = evaluate_library(library, queries, method, **options)
        reports[method]["unreadable"] += [
            {"image": e.source, "error": e.reason} for e in enrolled.errors
        ]
    return reports


def evaluate_episodes(
    embedder: Embedder,
    items: Sequence[tuple[Path, str]],
    ways: int,
    shots: int,
    queries: int,
    episodes: int,
    seed: int = 0,
    neighbours: int = 10,
    methods: Sequence[str] = METHODS,
) -> dict:
    """Mean accuracy and 95% interval of N-way K-shot episodes, for each decision rule of
    ``methods`` (on the same episodes)."""
    embedded = embed_files(embedder, [p for p, _ in items])
    labels = np.array([items[i][1] for i in embedded.indices], dtype=object)
    return {
        method: run_episodes(
            embedded.vectors, labels, ways, shots, queries, episodes, seed, method, neighbours
        )
        for method in methods
    }
