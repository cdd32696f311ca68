"""The index as a cache with one writer (a mixin of :class:`kshot.fewshot.library.Library`).

Writes go to the catalogue (one SQLite transaction per batch), which is also the index's
journal: rows added and ids removed since the saved index was written. Any process brings the
saved index up to date in memory from that journal; only a writer, holding the lock, saves it,
with the catalogue's stamp, once the journal has grown past ``FOLD_AFTER`` changes (or by
``kshot compact``). A reader never writes, and an index that cannot be read or does not match is
rebuilt in memory from the catalogue.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from kshot.atomic import write_text_atomic
from kshot.errors import KshotError, StorageError, os_error_message
from kshot.fewshot.store import INDEX, MANIFEST
from kshot.index.vector_index import VectorIndex

log = logging.getLogger("kshot")

FOLD_AFTER = 1000  # journal changes after which a writer saves the index again
REBUILD_CHUNK = 100_000  # catalogue rows read at a time when the index is built from them


@dataclass
class IndexState:
    """An index in memory and the catalogue state it reflects: ``stamp``, ``position`` (last
    id, last removal), the journal changes not in the saved file, whether it came from it."""

    index: VectorIndex
    stamp: str
    position: tuple[int, int]
    unsaved: int
    saved: bool


class IndexCache:
    """The library's index: ``catalogue``, ``manifest``, ``root``, ``locked()``, ``_cached``,
    ``_derived`` and ``_index_state`` come from the library."""

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

    def _saved_index(self) -> IndexState | None:
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
            return IndexState(index, str(head.get("stamp")), position, 0, True)
        elif np.array_equal(np.sort(index.ids()), self.catalogue.ids()):
            # Saved before indexes were stamped: right if it holds exactly the catalogue's ids.
            position = self.catalogue.journal_position()
            return IndexState(index, self.catalogue.stamp(), position, 1, False)
        else:
            reason = "it does not match the catalogue"
        log.warning("%s: %s; rebuilding the index in memory from the catalogue", path, reason)
        return None

    def _caught_up(self, state: IndexState | None, stamp: str) -> IndexState | None:
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
        return IndexState(state.index, stamp, position, changes, saved)

    def _rebuilt(self, stamp: str) -> IndexState:
        """The index built from the catalogue, read a chunk of rows at a time."""
        with self.catalogue.snapshot():
            index = VectorIndex.built(
                self.manifest.embedding_dim,
                self.manifest.index,
                self.catalogue.ids(),
                self.catalogue.in_chunks(REBUILD_CHUNK),
                lambda ids: self.catalogue.vectors_of(ids)[1],
            )
            position = self.catalogue.journal_position()
        return IndexState(self._reranking(index), stamp, position, len(index), False)

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
        self._index_state = IndexState(self._reranking(index), state.stamp, state.position, 0, True)
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
