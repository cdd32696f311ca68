"""A library: one directory holding a model, the images enrolled with it and an index over them.

    LIB/manifest.json     format version, model hash, embedding dim, index kind (written at init)
    LIB/model.kshot       the embedder the library is bound to: a copy, so the directory is
                          self-contained and gives the same answers wherever it is copied
    LIB/catalogue.sqlite  enrolled images and their embeddings: the source of truth
    LIB/index.faiss       FAISS index over the catalogue's embeddings: derived, rebuilt if stale

Writes go catalogue first (one SQLite transaction), then the index (temporary file, rename). On
opening, an index whose ids differ from the catalogue's is rebuilt from the catalogue.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kshot.atomic import write_text_atomic
from kshot.embedder.checkpoint import load_checkpoint, model_hash, save_checkpoint
from kshot.embedder.images import list_images
from kshot.embedder.inference import embed_files
from kshot.embedder.model import Embedder
from kshot.embedder.runtime import resolve_device
from kshot.errors import InputError, KshotError
from kshot.fewshot.catalogue import Catalogue, Entries, NewImage
from kshot.fewshot.decision import METHODS, Decision, decide, knn_scores, prototypes
from kshot.fewshot.labels import check_label
from kshot.index.vector_index import IndexSpec, VectorIndex

log = logging.getLogger("kshot")

MANIFEST, MODEL, CATALOGUE, INDEX, LOCK = (
    "manifest.json",
    "model.kshot",
    "catalogue.sqlite",
    "index.faiss",
    ".lock",
)
FORMAT, VERSION = "kshot-library", 1

Progress = Callable[[int], None]


@dataclass
class EnrollReport:
    added: list[tuple[str, str]] = field(default_factory=list)  # (image, label)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # already enrolled
    errors: list[InputError] = field(default_factory=list)


@dataclass(frozen=True)
class QueryResult:
    image: str
    decision: Decision | None = None
    error: InputError | None = None


@dataclass(frozen=True)
class Manifest:
    model_sha256: str
    embedding_dim: int
    index: IndexSpec

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "model_sha256": self.model_sha256,
            "embedding_dim": self.embedding_dim,
            "index": self.index.to_dict(),
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
            return cls(data["model_sha256"], int(data["embedding_dim"]), spec)
        except (ValueError, KeyError, TypeError, AttributeError, KshotError) as exc:
            raise KshotError(f"{path}: damaged library manifest ({exc})") from None


def check_new_library_path(root: Path) -> Path:
    """``root`` if a new library can be made there (absent, or an empty directory)."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise KshotError(f"{root} already exists and is not an empty directory")
    return root


class Library:
    """Open with :meth:`open`, make with :meth:`create`."""

    def __init__(self, root: Path, manifest: Manifest, device: str = "auto"):
        self.root = root
        self.manifest = manifest
        self.device = resolve_device(device)
        self.catalogue = Catalogue(root / CATALOGUE, manifest.embedding_dim)
        self._derived: dict[str, object] = {}  # index, class counts, prototypes
        self._derived_version = self.catalogue.version()

    @classmethod
    def create(
        cls, root: Path, embedder: Embedder, info: dict, spec: IndexSpec, device: str = "auto"
    ) -> Library:
        root = check_new_library_path(root)
        root.mkdir(parents=True, exist_ok=True)
        digest = save_checkpoint(embedder, root / MODEL, info)
        manifest = Manifest(digest, embedder.embedding_dim, spec)
        Catalogue(root / CATALOGUE, manifest.embedding_dim, create=True).close()
        VectorIndex(manifest.embedding_dim, spec).save(root / INDEX)
        write_text_atomic(root / MANIFEST, manifest.to_json())  # last: it marks a whole library
        library = cls(root, manifest, device)
        # The model just saved, hash known: no need to read it back (the property's cache).
        library.__dict__["embedder"] = embedder.for_inference(library.device)
        return library

    @classmethod
    def open(cls, root: Path, model: Path | None = None, device: str = "auto") -> Library:
        """Open the library at ``root``; ``model``, if given, must be the one it is bound to."""
        root = Path(root)
        if not root.is_dir():
            raise KshotError(f"{root}: no such library directory")
        library = cls(root, Manifest.read(root / MANIFEST), device)
        if model is not None:
            other, _ = load_checkpoint(model)
            if model_hash(other) != library.manifest.model_sha256:
                raise KshotError(
                    f"{model} is not the model {root} was built with: a library is bound to one "
                    f"model; to use this one, build a new library (kshot init NEW --model {model})"
                )
        return library

    @functools.cached_property
    def embedder(self) -> Embedder:
        embedder, _ = load_checkpoint(self.root / MODEL)
        if model_hash(embedder) != self.manifest.model_sha256:
            raise KshotError(
                f"{self.root / MODEL} is not the model this library was built with "
                "(its content hash differs from the manifest's): it was replaced or edited"
            )
        if embedder.embedding_dim != self.manifest.embedding_dim:
            raise KshotError(
                f"{self.root / MANIFEST}: damaged library manifest (embedding_dim "
                f"{self.manifest.embedding_dim}, but the model embeds in {embedder.embedding_dim})"
            )
        return embedder.for_inference(self.device)

    def _cached(self, name: str, build: Callable[[], object]):
        """Derived state, built once and dropped when the catalogue changes (a change by another
        process included: SQLite's data_version tells)."""
        version = self.catalogue.version()
        if version != self._derived_version:
            self._derived.clear()
            self._derived_version = version
        if name not in self._derived:
            self._derived[name] = build()
        return self._derived[name]

    @property
    def index(self) -> VectorIndex:
        return self._cached("index", self._load_index)

    def _load_index(self) -> VectorIndex:
        """The saved index if it holds exactly the catalogue's ids, else one rebuilt from it."""
        path, dim = self.root / INDEX, self.manifest.embedding_dim
        expected = self.catalogue.ids()
        try:
            index = VectorIndex.load(path, self.manifest.index)
            if index.dim == dim and np.array_equal(np.sort(index.ids()), expected):
                return index
            reason = "it does not match the catalogue"
        except KshotError as exc:
            reason = str(exc) if path.exists() else "it is missing"
        log.warning("rebuilding %s from the catalogue: %s", path, reason)
        index = VectorIndex(dim, self.manifest.index)
        entries = self.catalogue.entries()
        index.add(entries.vectors, entries.ids)
        try:
            index.save(path)
        except OSError as exc:  # read-only storage: answer from the rebuilt index all the same
            log.warning("cannot save the rebuilt index (%s); using it unsaved", exc.strerror)
        return index

    @contextlib.contextmanager
    def _writing(self) -> Iterator[VectorIndex]:
        """Hold the library's write lock around a change; yields the up-to-date index."""
        with open(self.root / LOCK, "a") as lock:
            with contextlib.suppress(ImportError):
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._load_index()  # another process may have written since
            yield index
            index.save(self.root / INDEX)
            self._derived = {"index": index}

    def enroll(
        self, items: Sequence[tuple[Path, str]], on_progress: Progress | None = None
    ) -> EnrollReport:
        """Embed and store ``(image, label)`` pairs; unreadable images and labels that cannot be
        classes are reported, not fatal."""
        report = EnrollReport()
        items = self._checked_labels(items, report)
        paths = [Path(p) for p, _ in items]
        embedded = embed_files(self.embedder, paths, digest=True, on_progress=on_progress)
        report.errors += [error for _, error in embedded.errors]
        new = [
            NewImage(items[i][1], str(paths[i].resolve()), sha, vector)
            for i, sha, vector in zip(
                embedded.indices, embedded.sha256, embedded.vectors, strict=True
            )
        ]
        with self._writing() as index:
            ids = self.catalogue.add(new)
            kept = [j for j, new_id in enumerate(ids) if new_id is not None]
            index.add(embedded.vectors[kept], np.array([ids[j] for j in kept], dtype=np.int64))
        for j, new_id in enumerate(ids):
            pair = (str(items[embedded.indices[j]][0]), new[j].label)
            (report.added if new_id is not None else report.duplicates).append(pair)
        return report

    @staticmethod
    def _checked_labels(
        items: Sequence[tuple[Path, str]], report: EnrollReport
    ) -> list[tuple[Path, str]]:
        kept = []
        for path, label in items:
            try:
                kept.append((path, check_label(label)))
            except ValueError as exc:
                report.errors.append(InputError(path, str(exc)))
        return kept

    def forget(self, label: str) -> int:
        """Remove every image of ``label``; returns how many there were."""
        with self._writing() as index:
            ids = self.catalogue.remove_label(label)
            index.remove(ids)
        return len(ids)

    def classes(self) -> list[tuple[str, int]]:
        """``(label, image count)`` for each class, by label."""
        return self._cached("classes", self.catalogue.class_counts)

    def entries(self) -> Entries:
        """Every enrolled image's id, label, source and embedding, read once per change."""
        return self._cached("entries", self.catalogue.entries)

    def _prototypes(self) -> tuple[list[str], np.ndarray]:
        def build():
            entries = self.entries()
            return prototypes(entries.vectors, entries.labels)

        return self._cached("prototypes", build)

    def query(
        self,
        images: Sequence[str | Path],
        method: str = "prototype",
        top_k: int = 5,
        threshold: float | None = None,
        neighbours: int = 10,
        on_progress: Progress | None = None,
    ) -> list[QueryResult]:
        """Classify each image: by nearest class prototype, or by weighted vote of its
        ``neighbours`` nearest enrolled images (``method="knn"``)."""
        self._check_queryable(method)
        embedded = embed_files(self.embedder, images, on_progress=on_progress)
        decisions = self.decisions(embedded.vectors, method, top_k, threshold, neighbours)
        results: list[QueryResult | None] = [None] * len(images)
        for i, decision in zip(embedded.indices, decisions, strict=True):
            results[i] = QueryResult(str(images[i]), decision=decision)
        for i, error in embedded.errors:
            results[i] = QueryResult(str(images[i]), error=error)
        return results

    def _check_queryable(self, method: str) -> None:
        if method not in METHODS:
            raise KshotError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        if not self.classes():
            raise KshotError(
                f"{self.root} has no enrolled images yet: enroll some first (kshot enroll)"
            )

    def decisions(
        self,
        vectors: np.ndarray,
        method: str = "prototype",
        top_k: int = 5,
        threshold: float | None = None,
        neighbours: int = 10,
    ) -> list[Decision]:
        """The decision for each embedded query ``vectors (m, dim)``: what :meth:`query` answers
        for images already embedded (the server embeds many requests' images in one pass)."""
        self._check_queryable(method)
        scores = self.scores(vectors, method, neighbours)
        return [decide(score, top_k, threshold) for score in scores]

    def scores(
        self, vectors: np.ndarray, method: str = "prototype", neighbours: int = 10
    ) -> list[dict[str, float]]:
        """``{label: score}`` for each embedded query ``vectors (m, dim)``."""
        if method == "prototype":
            names, centres = self._prototypes()
            return [dict(zip(names, row.tolist(), strict=True)) for row in vectors @ centres.T]
        sims, ids = self.index.search(vectors, min(neighbours, len(self.index)))
        label_of = self.catalogue.labels_of(ids)
        labels = [[label_of.get(int(i)) for i in row] for row in ids]
        return knn_scores(sims, labels, dict(self.classes()))


def folder_items(root: Path) -> tuple[list[tuple[Path, str]], list[InputError]]:
    """``(image, label)`` pairs from ``root``'s sub-folders, one per class, and the sub-folders
    refused for their name or for holding no image."""
    root = Path(root)
    if not root.is_dir():
        raise KshotError(f"{root}: no such directory")
    items: list[tuple[Path, str]] = []
    errors: list[InputError] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            label = check_label(folder.name)
        except ValueError as exc:
            errors.append(InputError(folder, str(exc)))
            continue
        images = list_images(folder)
        if not images:
            errors.append(InputError(folder, "holds no image files"))
        items += [(image, label) for image in images]
    if not items and not errors:
        raise KshotError(
            f"{root} has no sub-folders: put each class's images in a folder of its own"
        )
    return items, errors
