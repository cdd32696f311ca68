"""A library: one directory holding a model, the images enrolled with it and an index over them.

    LIB/manifest.json     format version, model hash, embedding dim, index kind, the precision
                          it embeds in (written at init; fp32 where an older library has none)
    LIB/model.kshot       the embedder the library is bound to: a copy, so the directory is
                          self-contained and gives the same answers wherever it is copied
    LIB/catalogue.sqlite  enrolled images and their embeddings: the source of truth
    LIB/index.faiss       FAISS index over the catalogue's embeddings: a cache, derived
    LIB/.lock             held by the one process that writes at a time

The index is a cache with one writer. Writes go to the catalogue (one SQLite transaction per
batch), which is also the index's journal: rows added and ids removed since the saved index was
written. Any process brings the saved index up to date in memory from that journal; only a writer,
holding the lock, saves it, with the catalogue's stamp, once the journal has grown past
``FOLD_AFTER`` changes (or by ``kshot compact``). A reader never writes, and an index that cannot
be read or does not match is rebuilt in memory from the catalogue.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kshot.atomic import write_text_atomic
from kshot.embedder.checkpoint import load_checkpoint, model_hash, save_checkpoint
from kshot.embedder.images import class_tree, file_sha256
from kshot.embedder.inference import embed_files
from kshot.embedder.model import Embedder
from kshot.embedder.precision import check_precision
from kshot.embedder.runtime import resolve_device
from kshot.embedder.tta import check_views
from kshot.errors import InputError, KshotError, StorageError, os_error_message
from kshot.fewshot.answering import Answering, QueryResult
from kshot.fewshot.catalogue import Catalogue, Entries, NewImage
from kshot.fewshot.decider import DecisionSettings
from kshot.fewshot.labels import check_label
from kshot.fewshot.store import (
    CATALOGUE,
    INDEX,
    LOCK,
    MANIFEST,
    MODEL,
    LibraryStore,
    Manifest,
    check_new_library_path,
)
from kshot.index.vector_index import IndexSpec, VectorIndex

__all__ = [
    "CATALOGUE",
    "INDEX",
    "LOCK",
    "MANIFEST",
    "MODEL",
    "Library",
    "Manifest",
    "QueryResult",
]

log = logging.getLogger("kshot")

FOLD_AFTER = 1000  # journal changes after which a writer saves the index again
# Images embedded, then committed, at a time: an interrupt keeps the batches done.
ENROLL_BATCH = 256
FLAT_NOTICE = 200_000  # images from which a flat index is slow enough to suggest another kind

Progress = Callable[[int], None]


@dataclass
class EnrollReport:
    added: list[tuple[str, str]] = field(default_factory=list)  # (image, label)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # already enrolled
    errors: list[InputError] = field(default_factory=list)
    interrupted: bool = False  # stopped (Ctrl-C) after committing what ``added`` lists


@dataclass
class _IndexState:
    """An index in memory and the catalogue state it reflects: ``stamp``, ``position`` (last
    id, last removal), the journal changes not in the saved file, whether it came from it."""

    index: VectorIndex
    stamp: str
    position: tuple[int, int]
    unsaved: int
    saved: bool


def _relabel_refusal(first: str) -> str:
    return (
        f"the same bytes are already enrolled as {first!r}; to file this image under a second "
        "label, enroll it with --allow-relabel (or forget the first with kshot forget --image)"
    )


class Library(Answering, LibraryStore):
    """Open with :meth:`open`, make with :meth:`create`."""

    def __init__(
        self, root: Path, manifest: Manifest, device: str = "auto", precision: str | None = None
    ):
        super().__init__(root, manifest)
        self.device = resolve_device(device)
        # The library's own precision unless a command asks for another (check_mixing first).
        self.precision = precision or manifest.precision
        self._derived: dict[str, object] = {}  # index, class counts, prototypes
        self._derived_version = self.catalogue.version()
        self._index_state: _IndexState | None = None

    @classmethod
    def create(
        cls,
        root: Path,
        embedder: Embedder,
        info: dict,
        spec: IndexSpec,
        device: str = "auto",
        settings: DecisionSettings | None = None,
        tta: Sequence[str] = (),
        precision: str | None = None,
    ) -> Library:
        """A new, empty library at ``root`` bound to ``embedder``; ``settings``: how it decides
        (default: :class:`DecisionSettings`'s); ``tta``: views averaged at enroll and query;
        ``precision``: how it embeds (default: the embedder's own)."""
        root = check_new_library_path(root)
        settings = settings or DecisionSettings()
        tta = check_views(tta)
        precision = precision or embedder.precision
        check_precision(precision, resolve_device(device))
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError.from_os(exc, root) from None
        digest = save_checkpoint(embedder, root / MODEL, info)
        catalogue = Catalogue(root / CATALOGUE, embedder.embedding_dim, create=True)
        model = {"backbone": embedder.config.backbone, "trained": info.get("trained")}
        manifest = Manifest(
            digest,
            embedder.embedding_dim,
            spec,
            catalogue.library_id(),
            model=model,
            decision=asdict(settings),
            tta=tuple(tta),
            precision=precision,
        )
        catalogue.close()
        write_text_atomic(root / MANIFEST, manifest.to_json())  # last: it marks a whole library
        library = cls(root, manifest, device)
        with library.locked():
            library._index_state = library._rebuilt(library.catalogue.stamp())
            library._save_index(library._index_state.index)
        # The model just saved, hash known: no need to read it back (the property's cache).
        embedder = embedder.for_inference(library.device)
        embedder.precision = precision
        library.__dict__["embedder"] = embedder
        return library

    @classmethod
    def open(
        cls,
        root: Path,
        model: Path | None = None,
        device: str = "auto",
        precision: str | None = None,
    ) -> Library:
        """Open the library at ``root``; ``model``, if given, must be the one it is bound to;
        ``precision``, if given, replaces the library's own (see ``precision.check_mixing``)."""
        root = Path(root)
        library = cls(root, cls.read_manifest(root), device, precision)
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
        check_precision(self.precision, self.device)
        embedder = embedder.for_inference(self.device)
        embedder.precision = self.precision
        return embedder

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
        """The index as the catalogue now stands, in memory; never written here.

        The index kept from before, or else the saved one, is brought up to date from the
        catalogue's journal; if neither can be read or it does not match, it is rebuilt from the
        catalogue. All of it reads one snapshot of the catalogue.
        """
        # Read outside the snapshot: a large file must not hold writers back. Whatever it
        # reflects was committed before, and the journal brings it up to the snapshot.
        state = self._index_state or self._saved_index()
        with self.catalogue.snapshot():
            stamp = self.catalogue.stamp()
            state = self._caught_up(state, stamp)
            self._index_state = state or self._rebuilt(stamp)
        return self._index_state.index

    def _saved_index(self) -> _IndexState | None:
        """``index.faiss`` as saved, and what it reflects; ``None`` if unusable (said why)."""
        path, dim = self.root / INDEX, self.manifest.embedding_dim
        try:
            index = self._reranking(VectorIndex.load(path, self.manifest.index))
        except KshotError as exc:
            reason = str(exc) if path.exists() else f"{path} is missing"
            log.warning("%s; rebuilding the index in memory from the catalogue", reason)
            return None
        head, library_id = index.header, self.catalogue.library_id()
        if index.dim != dim:
            reason = f"it has {index.dim} dimensions, the library {dim}"
        elif head.get("library_id", library_id) != library_id:
            reason = "it belongs to another library"
        elif "last_id" in head:
            position = (int(head["last_id"]), int(head["last_removal"]))
            return _IndexState(index, str(head.get("stamp")), position, 0, True)
        elif np.array_equal(np.sort(index.ids()), self.catalogue.ids()):
            # Saved before indexes were stamped: right if it holds exactly the catalogue's ids.
            position = self.catalogue.journal_position()
            return _IndexState(index, self.catalogue.stamp(), position, 1, False)
        else:
            reason = "it does not match the catalogue"
        log.warning("%s: %s; rebuilding the index in memory from the catalogue", path, reason)
        return None

    def _caught_up(self, state: _IndexState | None, stamp: str) -> _IndexState | None:
        """``state`` with the images added and removed since it was made; ``None`` if it still
        does not hold what the catalogue holds."""
        if state is None:
            return None
        if state.stamp == stamp:
            return state
        ids, vectors = self.catalogue.added_after(state.position[0])
        removed = self.catalogue.removed_after(state.position[1])
        kind = state.index.trained_kind
        state.index.add(vectors, ids)
        state.index.remove(removed)
        if len(state.index) != len(self.catalogue):
            path = self.root / INDEX
            log.warning("%s does not match the catalogue; rebuilding the index in memory", path)
            return None
        changes = state.unsaved + len(ids) + len(removed)
        position = self.catalogue.journal_position()
        # An ivfpq index that trained: saved now, so that every process answers from the same one.
        saved = state.saved and state.index.trained_kind == kind
        return _IndexState(state.index, stamp, position, changes, saved)

    def _rebuilt(self, stamp: str) -> _IndexState:
        entries = self.catalogue.entries()
        index = VectorIndex(self.manifest.embedding_dim, self.manifest.index)
        index.add(entries.vectors, entries.ids)
        position = self.catalogue.journal_position()
        return _IndexState(self._reranking(index), stamp, position, len(index), False)

    def _after_write(self) -> None:
        """Under the lock, after a change: catch the index up; save it once the journal since
        the saved one is long (or that one was unusable)."""
        index = self._load_index()
        self._derived = {"index": index}
        state = self._index_state
        if not state.saved or state.unsaved >= FOLD_AFTER:
            self._save_index(index)

    def _save_index(self, index: VectorIndex) -> str | None:
        """Save ``index`` stamped with what it reflects. Call with the lock held. A failure
        (disk full) loses nothing: the catalogue holds it all, and the next write saves; it is
        logged, and returned as its message (``None`` when saved)."""
        state = self._index_state
        if index.tombstones > len(index) // 10:
            index = index.compacted()
        header = {
            "stamp": state.stamp,
            "last_id": state.position[0],
            "last_removal": state.position[1],
            "library_id": self.catalogue.library_id(),
        }
        try:
            index.save(self.root / INDEX, header)
        except OSError as exc:
            failure = os_error_message(exc, self.root / INDEX)
            log.warning(
                "could not save the index (%s); nothing is lost: the catalogue holds every "
                "image, and the next write saves the index",
                failure,
            )
            return failure
        self._index_state = _IndexState(
            self._reranking(index), state.stamp, state.position, 0, True
        )
        self._derived["index"] = index
        return None

    def _reranking(self, index: VectorIndex) -> VectorIndex:
        """``index``, re-ranking by the catalogue's exact vectors (when it is a trained ivfpq)."""
        index.exact_vectors = self.catalogue.vectors_of
        return index

    def compact(self, kind: str | None = None) -> int:
        """Save the index as the catalogue stands (HNSW tombstones dropped, an ivfpq index
        retrained on all vectors); returns how many journal changes were folded into it.

        With ``kind``, the index is rebuilt as that kind and the manifest says so (written after
        the index: a crash in between leaves the old manifest over an index that answers all
        the same). Raises :class:`StorageError` if it cannot save.
        """
        with self.locked():
            index = self._load_index()
            folded = self._index_state.unsaved
            if kind is not None and kind != self.manifest.index.kind:
                spec = dataclasses.replace(self.manifest.index, kind=kind)
                self.manifest = dataclasses.replace(self.manifest, index=spec)
                index = self._rebuilt(self._index_state.stamp).index
            elif index.trained_kind == "ivfpq":
                # Trained when the library reached ivf_train_size images, and grown since: its
                # lists and codebooks retrained on every vector (recall, BENCHMARKS.md).
                index = self._rebuilt(self._index_state.stamp).index
            self._index_state.index = index.compacted()
            failure = self._save_index(self._index_state.index)
            if failure is None and kind is not None:
                write_text_atomic(self.root / MANIFEST, self.manifest.to_json())
        if failure is not None:
            raise StorageError(f"could not save the index: {failure}")
        return folded

    def enroll(
        self,
        items: Sequence[tuple[Path, str]],
        on_progress: Progress | None = None,
        allow_relabel: bool = False,
    ) -> EnrollReport:
        """Embed and store ``(image, label)`` pairs, committing every ``ENROLL_BATCH`` images:
        an interrupt keeps what was committed (``report.interrupted``), and a rerun skips it.

        Unreadable images, labels that cannot be classes, and bytes already enrolled under
        another label (unless ``allow_relabel``) are reported, not fatal.
        """
        report = EnrollReport()
        items = self._checked_labels(items, report)
        try:
            for start in range(0, len(items), ENROLL_BATCH):
                batch = items[start : start + ENROLL_BATCH]
                self._enroll_batch(batch, report, on_progress, allow_relabel)
        except KeyboardInterrupt:
            report.interrupted = True
        if report.added and self.manifest.index.kind == "flat":
            count = len(self.catalogue)
            if count >= FLAT_NOTICE > count - len(report.added):
                log.info(
                    "%s now holds %d images in a flat index, which compares a query with every "
                    "one of them (46 ms at 370,000 on one busy core, BENCHMARKS.md); `kshot "
                    "compact %s --index hnsw` makes it a graph that answers in under a millisecond",
                    self.root,
                    count,
                    self.root,
                )
        if report.added and not report.interrupted:
            self.refit_decision()
        return report

    def _enroll_batch(
        self,
        items: list[tuple[Path, str]],
        report: EnrollReport,
        on_progress: Progress | None,
        allow_relabel: bool,
    ) -> None:
        items = self._not_yet_enrolled(items, report, on_progress)
        paths = [Path(p) for p, _ in items]
        embedded = embed_files(
            self.embedder, paths, digest=True, on_progress=on_progress, tta=self.manifest.tta
        )
        report.errors += [error for _, error in embedded.errors]
        given = [str(items[i][0]) for i in embedded.indices]  # reported as the caller named them
        new = [
            NewImage(items[i][1], str(paths[i].resolve()), sha, vector)
            for i, sha, vector in zip(
                embedded.indices, embedded.sha256, embedded.vectors, strict=True
            )
        ]
        with self._writing(), self.catalogue.writing():
            held = self.catalogue.labels_holding([image.sha256 for image in new])
            kept = []
            for name, image in zip(given, new, strict=True):
                first = held.setdefault(image.sha256, image.label)
                if first != image.label and not allow_relabel:
                    report.errors.append(InputError(name, _relabel_refusal(first)))
                else:
                    kept.append((name, image))
            ids = self.catalogue.add([image for _, image in kept])
        for (name, image), new_id in zip(kept, ids, strict=True):
            (report.added if new_id is not None else report.duplicates).append((name, image.label))

    def _not_yet_enrolled(
        self, items: list[tuple[Path, str]], report: EnrollReport, on_progress: Progress | None
    ) -> list[tuple[Path, str]]:
        """``items`` less those whose bytes their label already holds (reported as duplicates):
        a rerun of an interrupted enrollment does not embed again what it committed."""
        digests = {i: file_sha256(path) for i, (path, _) in enumerate(items)}
        held = self.catalogue.pairs_held(
            {(label, digests[i]) for i, (_, label) in enumerate(items)}
        )
        kept = []
        for i, (path, label) in enumerate(items):
            if digests[i] is not None and (label, digests[i]) in held:
                report.duplicates.append((str(path), label))
            else:
                kept.append((path, label))
        if on_progress is not None and len(kept) < len(items):
            on_progress(len(items) - len(kept))
        return kept

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

    def classes(self) -> list[tuple[str, int]]:
        """``(label, image count)`` for each class, by label."""
        return self._cached("classes", self.catalogue.class_counts)

    def entries(self) -> Entries:
        """Every enrolled image's id, label, source and embedding, read once per change."""
        return self._cached("entries", self.catalogue.entries)


def folder_items(root: Path) -> tuple[list[tuple[Path, str]], list[InputError]]:
    """``(image, label)`` pairs from ``root``'s class folders (one level, ``class/``, or two,
    ``group/class/``: see :func:`class_tree`), and what was refused or left out, with why."""
    root = Path(root)
    if not root.is_dir():
        raise KshotError(f"{root}: " + ("is not a folder" if root.exists() else "does not exist"))
    classes, errors = class_tree(root)
    items: list[tuple[Path, str]] = []
    for found in classes:
        try:
            label = check_label(found.name)
        except ValueError as exc:
            errors.append(InputError(found.folder, str(exc)))
            continue
        if not found.images:
            errors.append(InputError(found.folder, "holds no image files"))
        items += [(image, label) for image in found.images]
    if not items and not errors:
        raise KshotError(
            f"{root} has no sub-folders: put each class's images in a folder of its own"
        )
    return items, errors
