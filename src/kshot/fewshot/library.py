"""A library: one directory holding a model, the images enrolled with it and an index over them.

    LIB/manifest.json     format version, model hash, embedding dim, index kind, the precision
                          it embeds in (written at init; fp32 where an older library has none)
    LIB/model.kshot       the embedder the library is bound to: a copy, so the directory is
                          self-contained and gives the same answers wherever it is copied
    LIB/catalogue.sqlite  enrolled images and their embeddings: the source of truth
    LIB/index.faiss       FAISS index over the catalogue's embeddings: a cache, derived
    LIB/.lock             held by the one process that writes at a time

The index is a cache with one writer: :mod:`kshot.fewshot.index_cache`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kshot.atomic import write_text_atomic
from kshot.embedder.checkpoint import load_checkpoint, model_hash, save_checkpoint
from kshot.embedder.images import class_tree, file_sha256
from kshot.embedder.inference import Embedded, embed_files
from kshot.embedder.model import Embedder
from kshot.embedder.precision import check_precision
from kshot.embedder.runtime import resolve_device
from kshot.embedder.tta import check_views
from kshot.errors import InputError, KshotError, StorageError
from kshot.fewshot.answering import Answering, QueryResult
from kshot.fewshot.catalogue import Catalogue, Entries, NewImage
from kshot.fewshot.decider import DecisionSettings
from kshot.fewshot.index_cache import IndexCache, IndexState
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
from kshot.index.vector_index import IndexSpec

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

# Images embedded, then committed, at a time: an interrupt keeps the batches done.
ENROLL_BATCH = 256

Progress = Callable[[int], None]
# How a batch of files is embedded: by this process (``Library.embed_files``), or shared among
# the processes torchrun started (kshot.fewshot.distributed_enroll).
EmbedFiles = Callable[[list[Path], Progress | None], Embedded]


@dataclass
class EnrollReport:
    added: list[tuple[str, str]] = field(default_factory=list)  # (image, label)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # already enrolled
    errors: list[InputError] = field(default_factory=list)
    interrupted: bool = False  # stopped (Ctrl-C) after committing what ``added`` lists


def _relabel_refusal(first: str) -> str:
    return (
        f"the same bytes are already enrolled as {first!r}; to file this image under a second "
        "label, enroll it with --allow-relabel (or forget the first with kshot forget --image)"
    )


class Library(Answering, IndexCache, LibraryStore):
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
        self._index_state: IndexState | None = None

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
        if "adapted" in info:  # by kshot adapt: from which library, on how many photos
            model["adapted"] = {k: info["adapted"][k] for k in ("from", "photos")}
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
        return bound_embedder(self.root, self.manifest, self.device, self.precision)

    def embed_files(self, paths: list[Path], on_progress: Progress | None = None) -> Embedded:
        """``paths`` embedded as this library enrolls them: with their SHA-256, its TTA views."""
        return embed_files(
            self.embedder, paths, digest=True, on_progress=on_progress, tta=self.manifest.tta
        )

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

    def enroll(
        self,
        items: Sequence[tuple[Path, str]],
        on_progress: Progress | None = None,
        allow_relabel: bool = False,
        embed: EmbedFiles | None = None,
    ) -> EnrollReport:
        """Embed and store ``(image, label)`` pairs, committing every ``ENROLL_BATCH`` images:
        an interrupt keeps what was committed (``report.interrupted``), and a rerun skips it.

        Unreadable images, labels that cannot be classes, and bytes already enrolled under
        another label (unless ``allow_relabel``) are reported, not fatal. ``embed``: how each
        batch's new files are embedded (default: :meth:`embed_files`, in this process).
        """
        report = EnrollReport()
        items = self._checked_labels(items, report)
        try:
            for start in range(0, len(items), ENROLL_BATCH):
                batch = items[start : start + ENROLL_BATCH]
                self._enroll_batch(batch, report, on_progress, allow_relabel, embed)
        except KeyboardInterrupt:
            report.interrupted = True
        if report.added and not report.interrupted:
            self._graph_when_large(len(report.added))
        if report.added and not report.interrupted:
            self.refit_decision()
        return report

    def _graph_when_large(self, added: int) -> None:
        """Rebuild a flat index as an HNSW graph when this enrollment took the library past
        ``graph_from`` images (the writer's job, once; queries meanwhile search the flat one)."""
        spec = self.manifest.index
        count = len(self.catalogue)
        if spec.kind != "flat" or not spec.graph_from or count < spec.graph_from:
            return
        log.info(
            "%s now holds %d images: its flat index compares a query with every one of them, so "
            "it is being rebuilt as an HNSW graph, once (about 2 minutes a 100,000 images on "
            "one core; `kshot init --index flat` keeps a library flat)",
            self.root,
            count,
        )
        try:
            self.compact("hnsw")
        except StorageError as exc:
            log.warning("%s; the library stays flat until the next enrollment", exc)

    def _enroll_batch(
        self,
        items: list[tuple[Path, str]],
        report: EnrollReport,
        on_progress: Progress | None,
        allow_relabel: bool,
        embed: EmbedFiles | None = None,
    ) -> None:
        items = self._not_yet_enrolled(items, report, on_progress)
        paths = [Path(p) for p, _ in items]
        embedded = (embed or self.embed_files)(paths, on_progress)
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


def bound_embedder(root: Path, manifest: Manifest, device, precision: str) -> Embedder:
    """The model of the library at ``root``, checked against its ``manifest``, in inference mode
    on ``device`` (a ``torch.device``) in ``precision``: reads the library, writes nothing."""
    embedder, _ = load_checkpoint(root / MODEL)
    if model_hash(embedder) != manifest.model_sha256:
        raise KshotError(
            f"{root / MODEL} is not the model this library was built with "
            "(its content hash differs from the manifest's): it was replaced or edited"
        )
    if embedder.embedding_dim != manifest.embedding_dim:
        raise KshotError(
            f"{root / MANIFEST}: damaged library manifest (embedding_dim "
            f"{manifest.embedding_dim}, but the model embeds in {embedder.embedding_dim})"
        )
    check_precision(precision, device)
    embedder = embedder.for_inference(device)
    embedder.precision = precision
    return embedder


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
