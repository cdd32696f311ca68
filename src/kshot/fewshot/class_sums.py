"""Per-class sums and counts of the enrolled embeddings, kept in the catalogue, and the fixed
sample of each class that a library's decision is fitted on.

Why: a library's decision needs each class's prototype (its mean embedding) and a rule fitted on
its images. Read from every row, both cost time in proportion to the library: 16.7 s after each
enrollment at a million images. Kept as running sums (float64, one row a class, updated in the
same transaction as the images), the prototypes cost one row a class; and the rule is fitted on
at most ``cap`` images of each class, the ones with the smallest SHA-256: a fixed sample, so a
photo enrolled into a large class usually leaves the sample, and with it the fitted rule, as it
was (it enters only when its hash is among the class's ``cap`` smallest). A decision keeps its
sample (:class:`DecisionSample`) with a mark of each class's count and sum, so that after a change
only the classes whose mark moved are drawn again: 2.1 ms a refit at a million images.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TABLE = """
CREATE TABLE IF NOT EXISTS class_sums (
    label TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    total BLOB NOT NULL
)"""
READY = "class_sums"  # the meta key set once the sums hold every row

Execute = Callable[..., sqlite3.Cursor]


def ready(execute: Execute) -> bool:
    """Whether the sums are kept (a catalogue made before them gets them at its first write)."""
    has_meta = execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
    if not has_meta.fetchall():
        return False
    return bool(execute("SELECT 1 FROM meta WHERE key = ?", (READY,)).fetchall())


def start(execute: Execute, dim: int) -> None:
    """Fill the sums from every row, once, inside a write transaction (a class at a time)."""
    execute(TABLE)
    if ready(execute):
        return
    execute("DELETE FROM class_sums")
    labels = [row[0] for row in execute("SELECT DISTINCT label FROM images").fetchall()]
    for label in labels:
        rows = execute("SELECT vector FROM images WHERE label = ?", (label,)).fetchall()
        vectors = np.frombuffer(b"".join(row[0] for row in rows), dtype=np.float32)
        total = vectors.reshape(-1, dim).sum(axis=0, dtype=np.float64)
        change(execute, label, len(rows), total)
    execute("INSERT INTO meta (key, value) VALUES (?, '1')", (READY,))


def change(execute: Execute, label: str, count: int, total: np.ndarray) -> None:
    """Add ``count`` images whose embeddings sum to ``total (D,)`` to ``label`` (negative: take
    them away); a class left with no image loses its row."""
    row = execute("SELECT count, total FROM class_sums WHERE label = ?", (label,)).fetchall()
    if row:
        count += row[0][0]
        total = total + np.frombuffer(row[0][1], dtype=np.float64)
    if count <= 0:
        execute("DELETE FROM class_sums WHERE label = ?", (label,))
        return
    execute(
        "INSERT OR REPLACE INTO class_sums (label, count, total) VALUES (?, ?, ?)",
        (label, count, np.ascontiguousarray(total, dtype=np.float64).tobytes()),
    )


def change_by_label(execute: Execute, labels: list[str], vectors: np.ndarray, sign: int) -> None:
    """Add (``sign`` 1) or take away (-1) ``vectors (n, D)`` labelled ``labels``."""
    labels_array = np.asarray(labels, dtype=object)
    for label in sorted(set(labels)):
        mine = vectors[labels_array == label]
        change(execute, label, sign * len(mine), sign * mine.sum(axis=0, dtype=np.float64))


def read(execute: Execute, dim: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(labels, counts (C,), sums (C, D) float64)``, by label."""
    rows = execute("SELECT label, count, total FROM class_sums").fetchall()
    rows.sort(key=lambda row: row[0])  # Python's order of labels, as numpy's unique gives it
    sums = np.frombuffer(b"".join(row[2] for row in rows), dtype=np.float64).reshape(-1, dim)
    return [row[0] for row in rows], np.array([row[1] for row in rows], np.int64), sums


def sample_ids(execute: Execute, labels: list[str], cap: int) -> np.ndarray:
    """Sorted ids of each of ``labels``' ``cap`` images of smallest SHA-256 (all, if fewer):
    one indexed read per class, never a scan of the library."""
    ids: list[int] = []
    for label in labels:
        rows = execute(
            "SELECT id FROM images WHERE label = ? ORDER BY sha256 LIMIT ?", (label, cap)
        ).fetchall()
        ids += [row[0] for row in rows]
    return np.array(sorted(ids), dtype=np.int64)


def marks(counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """``(C,)`` uint64: a mark of each class's contents, its count and sum: while a class's mark
    stays, so do its images, and so its sample."""
    rows = np.ascontiguousarray(sums, dtype=np.float64)
    return np.array([_mark(int(n), row) for n, row in zip(counts, rows, strict=True)], np.uint64)


def _mark(count: int, total: np.ndarray) -> int:
    digest = hashlib.sha256(count.to_bytes(8, "little") + total.tobytes()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class DecisionSample:
    """The images a decision was fitted on: ``ids (S,)`` ascending, the class of each as
    ``codes (S,)`` (indices into the sorted labels), and the ``marks (C,)`` of the classes then."""

    ids: np.ndarray
    codes: np.ndarray
    marks: np.ndarray

    def still_drawn(self, now: np.ndarray, sample_of: Callable[[list[int]], np.ndarray]) -> bool:
        """Whether the sample is still what would be drawn, the classes' marks being ``now``:
        only classes whose mark moved are read again, by ``sample_of(codes) -> sorted ids``."""
        if len(now) != len(self.marks):
            return False
        changed = np.flatnonzero(now != self.marks)
        if not len(changed):
            return True
        kept = np.sort(self.ids[np.isin(self.codes, changed)])
        return np.array_equal(kept, sample_of(changed.tolist()))
