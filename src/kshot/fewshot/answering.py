"""The answering side of a library: embedded queries -> the fitted decision -> answers.

:class:`kshot.fewshot.library.Library` answers with these methods; they read the library's
embedder, index, catalogue and fitted decision (:meth:`LibraryStore.decider`), all from one
catalogue snapshot, and write nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kshot.embedder.inference import embed_files
from kshot.errors import InputError, KshotError
from kshot.fewshot.decider import Decider, DecisionSettings
from kshot.fewshot.decision import Decision, decide

Progress = Callable[[int], None]


@dataclass(frozen=True)
class QueryResult:
    image: str
    decision: Decision | None = None
    error: InputError | None = None


class Answering:
    """Query methods of a library (mixed into :class:`kshot.fewshot.library.Library`)."""

    def query(
        self,
        images: Sequence[str | Path],
        method: str | None = None,
        top_k: int = 5,
        threshold: float | None = None,
        neighbours: int = 10,
        on_progress: Progress | None = None,
    ) -> list[QueryResult]:
        """Classify each image with the library's own decision (``method`` None) or another rule,
        answering "unknown" under ``threshold`` (None: the library's own; 0: never)."""
        settings = self.settings_for(method, neighbours)
        check_threshold(threshold)
        if not self.classes():
            raise KshotError(
                f"{self.root} has no enrolled images yet: enroll some first (kshot enroll)"
            )
        embedded = self.embed(images, on_progress)
        decisions = self.decisions(embedded.vectors, settings, top_k, threshold)
        results: list[QueryResult | None] = [None] * len(images)
        for i, decision in zip(embedded.indices, decisions, strict=True):
            results[i] = QueryResult(str(images[i]), decision=decision)
        for i, error in embedded.errors:
            results[i] = QueryResult(str(images[i]), error=error)
        return results

    def embed(self, images: Sequence[str | Path], on_progress: Progress | None = None):
        """Embed query ``images`` as the library's images were (its TTA views included)."""
        return embed_files(self.embedder, images, on_progress=on_progress, tta=self.manifest.tta)

    def settings_for(self, method: str | None, neighbours: int = 10) -> DecisionSettings:
        """The library's decision settings, with another rule if ``method`` names one."""
        if method is None or method == self.settings.method:
            return self.settings
        centre = self.settings.centre if method != "knn" else "none"
        return DecisionSettings(method, neighbours, centre)

    def confidences(
        self, vectors: np.ndarray, settings: DecisionSettings | None = None
    ) -> tuple[Decider, np.ndarray]:
        """The fitted decision and the confidences ``(Q, C)`` of embedded queries
        ``vectors (Q, D)`` over its classes."""
        with self.catalogue.snapshot():  # the rule, the index and the labels of one state
            decider = self.decider(settings)
            if decider is None:
                raise KshotError(f"{self.root} has no enrolled images yet: enroll some first")
            if decider.settings.method == "knn":
                scores = self._knn_scores(decider, vectors)
            else:
                scores = decider.scores(vectors)
        return decider, decider.confidences(scores, vectors)

    def _knn_scores(self, decider: Decider, vectors: np.ndarray) -> np.ndarray:
        """kNN through the library's index, which holds every enrolled image."""
        index = self.index
        k = min(decider.settings.neighbours, len(index))
        sims, ids = index.search(vectors, k)
        label_of = self.catalogue.labels_of(ids)
        code_of = {label: c for c, label in enumerate(decider.classes)}
        codes = np.array(
            [[code_of.get(label_of.get(int(i)), -1) for i in row] for row in ids], dtype=np.intp
        ).reshape(sims.shape)
        return decider.rule.vote(sims, codes)

    def decisions(
        self,
        vectors: np.ndarray,
        settings: DecisionSettings | None = None,
        top_k: int = 5,
        threshold: float | None = None,
    ) -> list[Decision]:
        """The answer for each embedded query ``vectors (Q, D)``; ``threshold`` as in
        :meth:`query`."""
        check_threshold(threshold)
        decider, confidences = self.confidences(vectors, settings)
        if threshold is None:
            threshold = decider.calibration.threshold
        return [decide(decider.classes, row, top_k, threshold or None) for row in confidences]


def check_threshold(threshold: float | None) -> None:
    """Confidences lie in [0, 1]; a threshold outside cannot mean anything."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise KshotError(
            f"threshold {threshold} is outside the confidence range: give a value from 0 "
            "(never answer unknown) to 1"
        )
