"""The catalogue: the library's source of truth, in one SQLite file.

Each enrolled image is one row: a stable id (never reused), its label, the path it was enrolled
from, the SHA-256 of its bytes, when it was enrolled, and its embedding. Removed ids are logged in
``removed`` in the same transaction, and every write transaction bumps a counter in ``meta``: so
the FAISS index, derived from these rows, can be brought up to date from the rows added and the ids
removed since it was saved (the catalogue is its journal), and knows by :meth:`Catalogue.stamp`
whether it is. A crash between writing the catalogue and the index costs time, never answers.

Libraries made before ``meta`` and ``removed`` existed get them at their first write; until then
:meth:`Catalogue.stamp` is computed from the ids, which are never reused.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from kshot.errors import KshotError
from kshot.fewshot import class_sums as kept_sums
from kshot.fewshot.catalogue_tables import TABLES
from kshot.fewshot.sqlite_failure import sqlite_failure

# How long a command waits for another process's write transaction before giving up.
BUSY_TIMEOUT_S = float(os.environ.get("KSHOT_BUSY_TIMEOUT", "30"))


@dataclass(frozen=True)
class NewImage:
    label: str
    source: str
    sha256: str
    vector: np.ndarray


@dataclass(frozen=True)
class Entries:
    """Rows of the catalogue: ``ids (n,)``, ``labels``, ``sources`` and ``sha256`` (n strings
    each: the class, the path each image was enrolled from and its bytes' digest then),
    ``vectors (n, dim)``."""

    ids: np.ndarray
    labels: list[str]
    sources: list[str]
    sha256: list[str]
    vectors: np.ndarray


@dataclass(frozen=True)
class Removed:
    id: int
    label: str
    source: str
    sha256: str


class Catalogue:
    def __init__(self, path: Path, dim: int, create: bool = False):
        self.path = Path(path)
        self.dim = dim
        if not create and not self.path.is_file():
            raise KshotError(
                f"{self.path} is missing: it holds the library's enrolled images, so the library "
                "cannot be used; restore it from a backup or build a new library"
            )
        try:
            # Autocommit: transactions are begun explicitly (BEGIN IMMEDIATE for writes).
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._failure(exc, "open") from None
        if create:
            with self.writing():
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('library_id', ?)",
                    (uuid.uuid4().hex,),
                )
        # Opening only reads, so a library on read-only storage can still be queried.
        if not self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'images'"):
            raise KshotError(f"{self.path}: damaged catalogue (it has no images table)")

    def close(self) -> None:
        self._db.close()

    def _failure(self, exc: sqlite3.Error, doing: str) -> KshotError:
        return sqlite_failure(self.path, exc, doing, BUSY_TIMEOUT_S)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._read(sql, params).fetchall()

    def _read(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._failure(exc, "read") from None

    def _has_table(self, name: str) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return bool(self._query(sql, (name,)))

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read in the block sees one committed state (a shared lock held throughout)."""
        if self._db.in_transaction:
            yield
            return
        self._query("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One write transaction (re-entrant: an inner block joins the outer one). It waits up to
        ``BUSY_TIMEOUT_S`` for another writer, and bumps the change counter it commits with."""
        if self._db.in_transaction:
            yield
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for statement in TABLES:
                self._db.execute(statement)
            # The image count, kept up by every write from the first on (COUNT(*) reads every
            # row: done once, in the first write of a library made before the count was kept).
            if not self._db.execute("SELECT 1 FROM meta WHERE key = 'images'").fetchall():
                self._db.execute("INSERT INTO meta SELECT 'images', COUNT(*) FROM images")
            kept_sums.start(self._db.execute, self.dim)  # once, like the count
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise self._failure(exc, "write") from None
        try:
            yield
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('changes', '1') ON CONFLICT (key) "
                "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._failure(exc, "write") from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _write(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._failure(exc, "write") from None

    def add(self, images: list[NewImage]) -> list[int | None]:
        """Insert ``images`` in one transaction; returns each one's new id, or ``None`` if that
        label already holds an image with the same bytes."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        ids: list[int | None] = []
        with self.writing():
            vectors = [np.ascontiguousarray(image.vector, dtype=np.float32) for image in images]
            for image, vector in zip(images, vectors, strict=True):
                cursor = self._write(
                    "INSERT OR IGNORE INTO images (label, source, sha256, enrolled_at, vector)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (image.label, image.source, image.sha256, now, vector.tobytes()),
                )
                ids.append(cursor.lastrowid if cursor.rowcount == 1 else None)
            added = [i for i, new_id in enumerate(ids) if new_id is not None]
            if added:
                labels = [images[i].label for i in added]
                rows = np.stack([vectors[i].reshape(self.dim) for i in added])
                kept_sums.change_by_label(self._write, labels, rows, +1)
            self._count_change(len(added))
        return ids

    def _count_change(self, change: int) -> None:
        self._write(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'images'", (change,)
        )

    def labels_holding(self, sha256s: list[str]) -> dict[str, str]:
        """For each of ``sha256s`` already enrolled, the label it was first enrolled under."""
        found: dict[str, str] = {}
        for chunk in _chunks(sorted(set(sha256s))):
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT sha256, label FROM images WHERE sha256 IN ({marks}) ORDER BY id DESC",
                tuple(chunk),
            )
            found.update(rows)  # descending ids: the first enrolment is written last
        return found

    def pairs_held(self, pairs: set[tuple[str, str | None]]) -> set[tuple[str, str]]:
        """Those of the ``(label, sha256)`` pairs that the catalogue holds."""
        shas = sorted({sha for _, sha in pairs if sha is not None})
        held: set[tuple[str, str]] = set()
        for chunk in _chunks(shas):
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT label, sha256 FROM images WHERE sha256 IN ({marks})", tuple(chunk)
            )
            held.update((label, sha) for label, sha in rows if (label, sha) in pairs)
        return held

    def remove_label(self, label: str) -> np.ndarray:
        """Delete every image of ``label``; returns their ids."""
        with self.writing():
            ids = [row[0] for row in self._query("SELECT id FROM images WHERE label = ?", (label,))]
            self._forget_ids(ids)
        return np.array(ids, dtype=np.int64)

    def remove_images(self, keys: list[str]) -> list[Removed]:
        """Delete the images whose SHA-256, or the path they were enrolled from, is one of
        ``keys``; returns what was removed."""
        removed: list[Removed] = []
        with self.writing():
            for chunk in _chunks(sorted(set(keys))):
                marks = ",".join("?" * len(chunk))
                rows = self._query(
                    f"SELECT id, label, source, sha256 FROM images WHERE sha256 IN ({marks}) "
                    f"OR source IN ({marks}) ORDER BY id",
                    tuple(chunk) * 2,
                )
                removed += [Removed(*row) for row in rows]
            self._forget_ids([r.id for r in removed])
        return removed

    def _forget_ids(self, ids: list[int]) -> None:
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT label, vector FROM images WHERE id IN ({marks})", tuple(chunk)
            )
            if rows:
                vectors = self._vectors([row[1] for row in rows])
                kept_sums.change_by_label(self._write, [row[0] for row in rows], vectors, -1)
            deleted = self._write(f"DELETE FROM images WHERE id IN ({marks})", tuple(chunk))
            self._count_change(-deleted.rowcount)
            self._db.executemany("INSERT INTO removed (id) VALUES (?)", [(i,) for i in chunk])

    def class_counts(self) -> list[tuple[str, int]]:
        if kept_sums.ready(self._read):
            labels, counts, _ = kept_sums.read(self._read, self.dim)
            return list(zip(labels, counts.tolist(), strict=True))
        return self._query("SELECT label, COUNT(*) FROM images GROUP BY label ORDER BY label")

    def class_sums(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(labels, counts (C,), sums (C, D) float64)`` of the enrolled embeddings, by label:
        kept by every write (summed here from every row in a library not written since they
        were)."""
        with self.snapshot():
            if kept_sums.ready(self._read):
                return kept_sums.read(self._read, self.dim)
            entries = self.entries()
        labels, codes = np.unique(np.asarray(entries.labels, dtype=str), return_inverse=True)
        sums = np.zeros((len(labels), self.dim))
        np.add.at(sums, codes, entries.vectors.astype(np.float64))
        return labels.tolist(), np.bincount(codes, minlength=len(labels)), sums

    def decision_sample(self, cap: int, labels: list[str] | None = None) -> np.ndarray:
        """Sorted ids of at most ``cap`` images of each class (of ``labels`` only, if given),
        those of smallest SHA-256: the fixed sample a library's decision is fitted on
        (:mod:`kshot.fewshot.class_sums`)."""
        with self.snapshot():
            if labels is None and kept_sums.ready(self._read):
                labels = kept_sums.read(self._read, self.dim)[0]
            elif labels is None:
                labels = [row[0] for row in self._query("SELECT DISTINCT label FROM images")]
            return kept_sums.sample_ids(self._read, labels, cap)

    def version(self) -> int:
        """Changes whenever another connection (another process) commits a change."""
        return self._query("PRAGMA data_version")[0][0]

    def library_id(self) -> str | None:
        """A random id given to the catalogue when it was made (None if made before ids)."""
        if not self._has_table("meta"):
            return None
        rows = self._query("SELECT value FROM meta WHERE key = 'library_id'")
        return rows[0][0] if rows else None

    def stamp(self) -> str:
        """A value that changes with every committed change and is the same in every process.

        Derived files (the index) record it to tell whether they reflect the catalogue.
        """
        with self.snapshot():
            if self._has_table("meta"):
                rows = dict(self._query("SELECT key, value FROM meta"))
                if "changes" in rows:
                    return f"{rows.get('library_id', '-')}:{rows['changes']}"
            count, top, total = self._query(
                "SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(id), 0) FROM images"
            )[0]
            return f"ids:{count}:{top}:{total}"

    def journal_position(self) -> tuple[int, int]:
        """``(largest id ever given, last removal logged)``: where an index saved now stands."""
        top = self._query("SELECT COALESCE(MAX(id), 0) FROM images")[0][0]
        if self._has_table("sqlite_sequence"):
            rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'images'")
            top = max(top, rows[0][0] if rows else 0)
        if not self._has_table("removed"):
            return int(top), 0
        return int(top), int(self._query("SELECT COALESCE(MAX(seq), 0) FROM removed")[0][0])

    def added_after(self, last_id: int, limit: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of the images whose id is above ``last_id`` (the first ``limit``
        of them, by id, if ``limit`` is not -1)."""
        rows = self._query(
            "SELECT id, vector FROM images WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)
        )
        return np.array([r[0] for r in rows], np.int64), self._vectors([r[1] for r in rows])

    def in_chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` of every image, ``size`` at a time, by id (call in a snapshot)."""
        last = 0
        while True:
            ids, vectors = self.added_after(last, size)
            if not len(ids):
                return
            yield ids, vectors
            last = int(ids[-1])

    def removed_after(self, last_seq: int) -> np.ndarray:
        """Ids removed after the removal numbered ``last_seq``."""
        if not self._has_table("removed"):
            return np.zeros(0, np.int64)
        rows = self._query("SELECT id FROM removed WHERE seq > ?", (last_seq,))
        return np.array([r[0] for r in rows], np.int64)

    def __len__(self) -> int:
        if self._has_table("meta"):
            rows = self._query("SELECT value FROM meta WHERE key = 'images'")
            if rows:
                return int(rows[0][0])
        return self._query("SELECT COUNT(*) FROM images")[0][0]

    def ids(self) -> np.ndarray:
        return np.array([r[0] for r in self._query("SELECT id FROM images ORDER BY id")], np.int64)

    def labels_of(self, ids: np.ndarray) -> dict[int, str]:
        """Label of each of ``ids`` that is in the catalogue."""
        wanted = sorted({int(i) for i in np.ravel(ids) if i >= 0})
        found: dict[int, str] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            found.update(
                self._query(f"SELECT id, label FROM images WHERE id IN ({marks})", tuple(chunk))
            )
        return found

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of those of ``ids`` the catalogue holds, in the order given."""
        wanted = [int(i) for i in np.ravel(ids)]
        found: dict[int, bytes] = {}
        for chunk in _chunks(sorted(set(wanted))):
            marks = ",".join("?" * len(chunk))
            found.update(
                self._query(f"SELECT id, vector FROM images WHERE id IN ({marks})", tuple(chunk))
            )
        kept = [i for i in wanted if i in found]
        return np.array(kept, np.int64), self._vectors([found[i] for i in kept])

    def entries(self) -> Entries:
        rows = self._query("SELECT id, label, vector, source, sha256 FROM images ORDER BY id")
        return Entries(
            ids=np.array([r[0] for r in rows], dtype=np.int64),
            labels=[r[1] for r in rows],
            sources=[r[3] for r in rows],
            sha256=[r[4] for r in rows],
            vectors=self._vectors([r[2] for r in rows]),
        )

    def _vectors(self, blobs: list[bytes]) -> np.ndarray:
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32)
        if vectors.size != len(blobs) * self.dim:
            raise KshotError(
                f"{self.path}: its embeddings do not have the library's {self.dim} dimensions"
            )
        return vectors.reshape(len(blobs), self.dim)


def _chunks(values: list, size: int = 400) -> Iterator[list]:
    """``values`` in pieces small enough for SQLite's cap on parameters per statement."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
