"""A library's decision, fitted: centring, a rule, and the rule's calibration, saved as one file.

    vectors (Q, D) -> centre on a reference mean, re-normalise (optional: SimpleShot's CL2N),
                      or centre and whiten by the library's within-class scatter (whitening.py)
                   -> rule.scores (Q, C) -> softmax(scale * scores): confidences (Q, C)

Everything here is derived from the catalogue, like the FAISS index: the file is stamped with the
catalogue's state it was fitted on and ignored (refitted) when that no longer matches. It holds
only arrays and a JSON header, read with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kshot.atomic import atomic_path
from kshot.errors import KshotError
from kshot.fewshot.calibration import Calibration, calibrate
from kshot.fewshot.class_sums import DecisionSample
from kshot.fewshot.rules import RULES, DecisionRule, make_rule
from kshot.fewshot.rules.prototype import PrototypeRule
from kshot.fewshot.whitening import Whitening

FORMAT, VERSION = "kshot-decision", 1
CENTRINGS = ("none", "library", "whiten")


@dataclass(frozen=True)
class DecisionSettings:
    """How a library decides: the rule (``method``, kNN's ``neighbours``) and what the rule sees
    (``centre``): the embeddings as enrolled (none), centred on the library's mean (library), or
    centred and whitened by the library's within-class scatter (whiten); kNN compares the
    enrolled embeddings as they are. The defaults measured best on new classes with no training
    (BENCHMARKS.md, benchmarks/decisions.py)."""

    method: str = "prototype"
    neighbours: int = 10
    centre: str = "whiten"

    def __post_init__(self):
        if self.method == "knn":  # it searches the index of the embeddings as enrolled
            object.__setattr__(self, "centre", "none")
        if self.method not in RULES:
            raise KshotError(f"unknown method {self.method!r}: use one of {', '.join(RULES)}")
        if self.centre not in CENTRINGS:
            raise KshotError(f"unknown centring {self.centre!r}: use one of {', '.join(CENTRINGS)}")
        if self.neighbours < 1:
            raise KshotError(f"neighbours must be at least 1, not {self.neighbours}")

    def make_rule(self) -> DecisionRule:
        return make_rule(self.method, self.neighbours)


def centred(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """``vectors (n, D)`` minus ``mean (D,)``, re-normalised; unchanged when ``mean`` is None."""
    if mean is None:
        return vectors
    shifted = np.asarray(vectors, dtype=np.float32) - mean.astype(np.float32)
    return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)


@dataclass
class Decider:
    settings: DecisionSettings
    rule: DecisionRule
    calibration: Calibration
    mean: np.ndarray | None = None
    whitening: Whitening | None = None
    # (C, D) class prototypes of the embeddings as enrolled, whatever the rule: how near a query
    # comes to any class tells the calibration's "none of these" how strong to be.
    prototypes: np.ndarray | None = None
    # Which images it was fitted on, when a library fitted it on a sample of its own
    # (kshot.fewshot.class_sums): while the sample stays, so do the rule and its calibration.
    sample: DecisionSample | None = None

    @classmethod
    def fit(
        cls,
        settings: DecisionSettings,
        vectors: np.ndarray,
        labels: Sequence[str],
        calibrated: bool = True,
        prototypes: np.ndarray | None = None,
        sample: DecisionSample | None = None,
    ) -> Decider:
        """Fit on enrolled ``vectors (N, D)`` and ``labels (N,)``; ``calibrated=False`` skips the
        cross-validated calibration (the confidence then uses scale 1 and no threshold).
        ``prototypes (C, D)``, given, are those of every image of each class, of which
        ``vectors`` are the ``sample``; else they are the means of ``vectors``."""
        mean = vectors.mean(axis=0) if settings.centre == "library" else None
        whitening = Whitening.fit(vectors, labels) if settings.centre == "whiten" else None
        shifted = whitening(vectors) if whitening is not None else centred(vectors, mean)
        rule = settings.make_rule().fit(shifted, labels)
        calibration = Calibration()
        if calibrated and whitening is not None:
            folds = functools.partial(WhitenedFold, rule.warm_copy)
            calibration = calibrate(folds, vectors, labels, near_vectors=vectors)
        elif calibrated:
            calibration = calibrate(rule.warm_copy, shifted, labels, near_vectors=vectors)
        # Nearness to the classes is measured uncentred: centring spreads the scores of the
        # enrolled classes apart, and with them those of photos of none of them (measured: far
        # unknowns' AUROC 0.89 uncentred, 0.80 centred, default embedder, prototypes).
        if prototypes is None:
            prototypes = PrototypeRule().fit(vectors, labels).prototypes
        return cls(settings, rule, calibration, mean, whitening, prototypes, sample)

    @property
    def classes(self) -> list[str]:
        return self.rule.classes

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """The rule's raw scores ``(Q, C)`` of embedded queries ``vectors (Q, D)``."""
        if self.whitening is not None:
            return self.rule.scores(self.whitening(vectors))
        return self.rule.scores(centred(vectors, self.mean))

    def confidences(self, scores: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """``(Q, C)`` probabilities of each class from the rule's scores of the embedded queries
        ``vectors (Q, D)``; a row sums to the probability that the query shows one of the
        classes at all."""
        nearest = None
        if self.prototypes is not None:
            nearest = (np.asarray(vectors, dtype=np.float64) @ self.prototypes.T).max(axis=1)
        return self.calibration.confidences(scores, nearest)

    def save(self, path: Path, stamp: str) -> None:
        header = {
            "format": FORMAT,
            "version": VERSION,
            "stamp": stamp,
            "settings": asdict(self.settings),
            "calibration": asdict(self.calibration),
        }
        arrays = {f"rule.{k}": v for k, v in self.rule.state().items()}
        if self.mean is not None:
            arrays["mean"] = self.mean
        if self.whitening is not None:
            arrays |= {f"whiten.{k}": v for k, v in self.whitening.state().items()}
        if self.prototypes is not None:
            arrays["prototypes"] = self.prototypes
        if self.sample is not None:
            arrays |= {f"sample.{k}": v for k, v in vars(self.sample).items()}
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, header=np.array(json.dumps(header)), **arrays)

    @classmethod
    def load(cls, path: Path) -> tuple[Decider, str]:
        """The decider saved at ``path`` and the catalogue stamp it was fitted on."""
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                if header.get("format") != FORMAT or header.get("version") != VERSION:
                    raise ValueError("not a kshot decision file of this version")
                settings = DecisionSettings(**header["settings"])
                state = {k[5:]: data[k] for k in data.files if k.startswith("rule.")}
                mean = data["mean"] if "mean" in data.files else None
                whitening = None
                if "whiten.mean" in data.files:
                    parts = {k[7:]: data[k] for k in data.files if k.startswith("whiten.")}
                    whitening = Whitening.from_state(parts)
                elif settings.centre == "whiten":
                    raise ValueError("its whitening is missing")
                prototypes = data["prototypes"] if "prototypes" in data.files else None
                sample = None
                if "sample.ids" in data.files:
                    parts = {k: data[f"sample.{k}"] for k in ("ids", "codes", "marks")}
                    sample = DecisionSample(**parts)
            rule = RULES[settings.method].from_state(state, **_options(settings))
            calibration = Calibration(**header["calibration"])
        except (OSError, ValueError, KeyError, TypeError, KshotError) as exc:
            raise KshotError(f"{path}: damaged decision file ({exc})") from None
        decider = cls(settings, rule, calibration, mean, whitening, prototypes, sample)
        return decider, header["stamp"]


class WhitenedFold:
    """A calibration fold's rule that fits its own whitening on the fold's images: a held-out
    image must be as new to the whitening as a query is. (Whitened by all images, the held-out
    ones lost the noise outside the others' span that every query keeps, looked cleaner than
    any query, and the library's threshold refused 86-90% of known queries.)"""

    def __init__(self, make_rule: Callable[[], DecisionRule]):
        self.make_rule = make_rule

    def fit(self, vectors: np.ndarray, labels: Sequence[str]) -> WhitenedFold:
        self.whitening = Whitening.fit(vectors, labels)
        self.rule = self.make_rule().fit(self.whitening(vectors), labels)
        return self

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return self.rule.scores(self.whitening(queries))


def _options(settings: DecisionSettings) -> dict:
    return {"neighbours": settings.neighbours} if settings.method == "knn" else {}
