"""A library's files, without its model or its index: what ``kshot classes``, ``forget`` and
``info`` need, read without importing torch or FAISS (1-2 s of start-up each).

:class:`kshot.fewshot.library.Library` builds on :class:`LibraryStore` with the embedder and the
index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kshot.atomic import write_text_atomic
from kshot.errors import KshotError, StorageError
from kshot.fewshot import class_sums
from kshot.fewshot.catalogue import Catalogue, Removed
from kshot.fewshot.decider import Decider, DecisionSettings
from kshot.index.spec import IndexSpec

log = logging.getLogger("kshot")

MANIFEST, MODEL, CATALOGUE, INDEX, LOCK, DECISION = (
    "manifest.json",
    "model.kshot",
    "catalogue.sqlite",
    "index.faiss",
    ".lock",
    "decision.npz",
)
FORMAT, VERSION = "kshot-library", 1
# kshot.embedder.precision.PRECISIONS, spelt out: that module needs torch, which reading a
# library's classes does not (tests/fewshot/test_library.py checks the two agree).
PRECISIONS = ("fp32", "bf16")
# Images of one class a library's decision is fitted on at most (kshot.fewshot.class_sums):
# libraries of the usual 20-200 photos a class are fitted on all of them.
DECISION_SAMPLE = 200


@dataclass(frozen=True)
class Manifest:
    model_sha256: str
    embedding_dim: int
    index: IndexSpec
    library_id: str | None = None  # the catalogue's, to notice one swapped in from another library
    model: dict = field(default_factory=dict)  # what the model is (backbone...), for `kshot info`
    # How queries are decided (DecisionSettings as a dict; absent in older libraries: defaults)
    # and the test-time views embedded at enrollment and at query (``kshot init --tta``).
    decision: dict = field(default_factory=dict)
    tta: tuple[str, ...] = ()
    # How it embeds: "fp32", or "bf16" under bfloat16 autocast (kshot.embedder.precision; absent
    # in older libraries: fp32).
    precision: str = "fp32"

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "model_sha256": self.model_sha256,
            "embedding_dim": self.embedding_dim,
            "index": self.index.to_dict(),
            "library_id": self.library_id,
            "model": self.model,
            "decision": self.decision,
            "tta": list(self.tta),
            "precision": self.precision,
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        if not path.is_file():
            raise KshotError(f"{path.parent} is not a kshot library: {path.name} is missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
            if data.get("version") != VERSION:
                raise ValueError(f"library version {data.get('version')} is not {VERSION}")
            spec = IndexSpec.from_dict(data["index"])
            model = data.get("model") or {}
            decision = data.get("decision") or {}
            if not isinstance(model, dict) or not isinstance(decision, dict):
                raise ValueError("model and decision must be objects")
            precision = data.get("precision", "fp32")
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r}")
            return cls(
                data["model_sha256"],
                int(data["embedding_dim"]),
                spec,
                data.get("library_id"),
                model,
                decision,
                tuple(str(view) for view in data.get("tta") or ()),
                precision,
            )
        except OSError as exc:
            raise StorageError.from_os(exc, path) from None
        except (ValueError, KeyError, TypeError, AttributeError, KshotError) as exc:
            raise KshotError(f"{path}: damaged library manifest ({exc})") from None


def check_new_library_path(root: Path) -> Path:
    """``root`` if a new library can be made there (absent, or an empty directory)."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise KshotError(f"{root} already exists and is not an empty directory")
    return root


class LibraryStore:
    """A library's manifest and catalogue, and the lock its writers take."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = Path(root)
        self.manifest = manifest
        self.catalogue = Catalogue(self.root / CATALOGUE, manifest.embedding_dim)
        self._decider: tuple[DecisionSettings, str, Decider | None] | None = None
        found = self.catalogue.library_id()
        if manifest.library_id and found and found != manifest.library_id:
            raise KshotError(
                f"{self.root / CATALOGUE} belongs to another library than {self.root / MANIFEST} "
                "(it was swapped or copied in); put back this library's catalogue from a backup"
            )

    @staticmethod
    def read_manifest(root: Path) -> Manifest:
        """The manifest of the library at ``root``, or an error saying why there is none."""
        root = Path(root)
        if not root.is_dir():
            raise KshotError(
                f"{root}: " + ("is not a library directory" if root.exists() else "does not exist")
            )
        return Manifest.read(root / MANIFEST)

    @classmethod
    def open_store(cls, root: Path) -> LibraryStore:
        return LibraryStore(root, LibraryStore.read_manifest(root))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the library's write lock: one writing process at a time; readers never wait."""
        import fcntl

        path = self.root / LOCK
        try:
            handle = open(path, "a")  # noqa: SIM115 (closed below, after the block)
        except PermissionError:
            if not path.is_file():
                raise
            handle = open(path)  # noqa: SIM115 (a read-only lock file locks all the same)
        except OSError as exc:
            raise StorageError.from_os(exc, path) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process writing to %s", self.root)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the write lock around a change, then keep derived state up (``_after_write``)."""
        with self.locked():
            yield
            self._after_write()

    def _after_write(self) -> None:
        """Nothing to keep up here: the catalogue is the index's journal (see the library)."""

    def classes(self) -> list[tuple[str, int]]:
        """``(label, image count)`` for each class, by label."""
        return self.catalogue.class_counts()

    @property
    def settings(self) -> DecisionSettings:
        """How this library decides unless told otherwise (chosen at ``kshot init``)."""
        return DecisionSettings(**self.manifest.decision)

    def decider(self, settings: DecisionSettings | None = None) -> Decider | None:
        """The decision fitted on what the library holds now (``None`` when it holds nothing):
        the saved ``decision.npz`` when it was fitted on this very catalogue state with these
        settings, else made here, in memory. Only a writer saves it (:meth:`refit_decision`)."""
        settings = settings or self.settings
        with self.catalogue.snapshot():
            stamp = self.catalogue.stamp()
            if self._decider is not None and self._decider[:2] == (settings, stamp):
                return self._decider[2]
            saved = self._load_saved_decider()
            if saved is not None and (saved[0].settings, saved[1]) == (settings, stamp):
                decider = saved[0]
            else:
                decider = self._current_decider(settings, saved[0] if saved else None)
        self._decider = (settings, stamp, decider)
        return decider

    def saved_decider(self) -> Decider | None:
        """The saved decision if it was fitted on the catalogue as it is now, else ``None``:
        never fitted here (for commands that only report, such as ``kshot classes``, which took
        83 s at a million images when it fitted one)."""
        with self.catalogue.snapshot():
            saved = self._load_saved_decider()
            if saved is None or saved[0].settings != self.settings:
                return None
            return saved[0] if saved[1] == self.catalogue.stamp() else None

    def _load_saved_decider(self) -> tuple[Decider, str] | None:
        path = self.root / DECISION
        if not path.is_file():
            return None
        try:
            return Decider.load(path)
        except KshotError as exc:
            log.warning("%s; fitting the decision again from the catalogue", exc)
            return None

    def _current_decider(self, settings: DecisionSettings, saved: Decider | None) -> Decider | None:
        """The decision for the catalogue as it is: fitted on each class's fixed sample of at
        most ``DECISION_SAMPLE`` images, with every image's prototypes from the kept sums. When
        ``saved`` was fitted on the sample that would be drawn now, its rule and calibration
        stand and only the prototypes move: no fit, and only the classes that changed are read
        (the usual case after an enrollment into a large class: kshot.fewshot.class_sums)."""
        labels, counts, sums = self.catalogue.class_sums()
        if not labels:
            return None
        prototypes = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        marks = class_sums.marks(counts, sums)
        if saved is not None and saved.sample is not None:
            same = (saved.settings, saved.classes) == (settings, labels)

            def redraw(codes: list[int]) -> np.ndarray:
                return self.catalogue.decision_sample(DECISION_SAMPLE, [labels[c] for c in codes])

            if same and saved.sample.still_drawn(marks, redraw):
                sample = dataclasses.replace(saved.sample, marks=marks)
                return dataclasses.replace(saved, prototypes=prototypes, sample=sample)
        ids = self.catalogue.decision_sample(DECISION_SAMPLE)
        found = self.catalogue.labels_of(ids)
        ids, vectors = self.catalogue.vectors_of(ids)
        chosen = [found[int(i)] for i in ids]
        codes = np.searchsorted(np.asarray(labels), np.asarray(chosen))
        sample = class_sums.DecisionSample(ids, codes, marks)
        return Decider.fit(settings, vectors, chosen, prototypes=prototypes, sample=sample)

    def entries(self):
        """Every enrolled image's id, label, source and embedding."""
        return self.catalogue.entries()

    def change_settings(self, settings: DecisionSettings) -> None:
        """Decide with ``settings`` from now on: the manifest says so (read again under the
        lock, changed in its decision only, written whole and atomically), then the decision
        is fitted and saved. Processes that have the library open decide as before until they
        open it again; nothing enrolled is touched."""
        with self.locked():
            current = self.read_manifest(self.root)
            manifest = dataclasses.replace(current, decision=dataclasses.asdict(settings))
            try:
                write_text_atomic(self.root / MANIFEST, manifest.to_json())
            except OSError as exc:
                raise StorageError.from_os(exc, self.root / MANIFEST) from None
            self.manifest = manifest
        self.refit_decision()

    def refit_decision(self) -> None:
        """Fit the library's own decision on what it holds and save it, stamped: a writer's job,
        done once after a change (not per committed batch). A failure to save loses nothing: the
        catalogue holds everything, and readers fit in memory meanwhile."""
        with self.locked():
            decider = self.decider()
            path = self.root / DECISION
            try:
                if decider is None:
                    path.unlink(missing_ok=True)
                else:
                    decider.save(path, self._decider[1])
            except OSError as exc:
                log.warning("could not save %s (%s); it is fitted again when needed", path, exc)

    def forget(self, label: str) -> int:
        """Remove every image of ``label``; returns how many there were."""
        with self._writing():
            removed = len(self.catalogue.remove_label(label))
        self.refit_decision()
        return removed

    def forget_images(self, keys: list[str]) -> list[Removed]:
        """Remove the images whose SHA-256, or the path they were enrolled from, is in
        ``keys``; returns what was removed."""
        with self._writing():
            removed = self.catalogue.remove_images(keys)
        self.refit_decision()
        return removed

    def disk_use(self) -> dict[str, int]:
        """Bytes of each of the library's files."""
        sizes = {}
        for name in (MANIFEST, MODEL, CATALOGUE, INDEX, DECISION):
            with contextlib.suppress(OSError):
                sizes[name] = os.stat(self.root / name).st_size
        return sizes
