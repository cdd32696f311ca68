"""The catalogue: the library's source of truth, in one SQLite file.

Each enrolled image is one row: a stable id (never reused), its label, the path it was enrolled
from, the SHA-256 of its bytes, when it was enrolled, and its embedding. The FAISS index is derived
from these rows and is rebuilt from them whenever the two disagree, so a crash between writing the
catalogue and the index can cost time but never answers.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from kshot.errors import KshotError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    enrolled_at TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (label, sha256)
);
CREATE INDEX IF NOT EXISTS images_by_label ON images (label);
"""


@dataclass(frozen=True)
class NewImage:
    label: str
    source: str
    sha256: str
    vector: np.ndarray


@dataclass(frozen=True)
class Entries:
    """Rows of the catalogue: ``ids (n,)``, ``labels`` and ``sources`` (n strings each: the class
    and the path each image was enrolled from), ``vectors (n, dim)``."""

    ids: np.ndarray
    labels: list[str]
    sources: list[str]
    vectors: np.ndarray


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
            self._db = sqlite3.connect(self.path)
            if create:
                with self._db:
                    self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise KshotError(f"{self.path}: damaged catalogue ({exc})") from None
        # Opening only reads, so a library on read-only storage can still be queried.
        if not self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'images'"):
            raise KshotError(f"{self.path}: damaged catalogue (it has no images table)")

    def close(self) -> None:
        self._db.close()

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise KshotError(f"{self.path}: damaged catalogue ({exc})") from None

    def add(self, images: list[NewImage]) -> list[int | None]:
        """Insert ``images`` in one transaction; returns each one's new id, or ``None`` if that
        label already holds an image with the same bytes."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        ids: list[int | None] = []
        try:
            with self._db:
                for image in images:
                    vector = np.ascontiguousarray(image.vector, dtype=np.float32)
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO images (label, source, sha256, enrolled_at, vector)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (image.label, image.source, image.sha256, now, vector.tobytes()),
                    )
                    ids.append(cursor.lastrowid if cursor.rowcount == 1 else None)
        except sqlite3.DatabaseError as exc:
            raise KshotError(f"{self.path}: cannot write the catalogue ({exc})") from None
        return ids

    def remove_label(self, label: str) -> np.ndarray:
        """Delete every image of ``label``; returns their ids."""
        ids = np.array(
            [row[0] for row in self._query("SELECT id FROM images WHERE label = ?", (label,))],
            dtype=np.int64,
        )
        try:
            with self._db:
                self._db.execute("DELETE FROM images WHERE label = ?", (label,))
        except sqlite3.DatabaseError as exc:
            raise KshotError(f"{self.path}: cannot write the catalogue ({exc})") from None
        return ids

    def class_counts(self) -> list[tuple[str, int]]:
        return self._query("SELECT label, COUNT(*) FROM images GROUP BY label ORDER BY label")

    def version(self) -> int:
        """Changes whenever another connection (another process) commits a change."""
        return self._query("PRAGMA data_version")[0][0]

    def __len__(self) -> int:
        return self._query("SELECT COUNT(*) FROM images")[0][0]

    def ids(self) -> np.ndarray:
        return np.array([r[0] for r in self._query("SELECT id FROM images ORDER BY id")], np.int64)

    def labels_of(self, ids: np.ndarray) -> dict[int, str]:
        """Label of each of ``ids`` that is in the catalogue."""
        wanted = sorted({int(i) for i in np.ravel(ids) if i >= 0})
        found: dict[int, str] = {}
        for start in range(0, len(wanted), 500):  # SQLite caps the number of parameters
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                self._query(f"SELECT id, label FROM images WHERE id IN ({marks})", tuple(chunk))
            )
        return found

    def entries(self) -> Entries:
        rows = self._query("SELECT id, label, vector, source FROM images ORDER BY id")
        vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32)
        if vectors.size != len(rows) * self.dim:
            raise KshotError(
                f"{self.path}: its embeddings do not have the library's {self.dim} dimensions"
            )
        return Entries(
            ids=np.array([r[0] for r in rows], dtype=np.int64),
            labels=[r[1] for r in rows],
            sources=[r[3] for r in rows],
            vectors=vectors.reshape(len(rows), self.dim),
        )
