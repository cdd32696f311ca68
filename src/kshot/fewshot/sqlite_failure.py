"""A failed SQLite call as one line for a person: another process holding the library, storage
that is read-only, full or failing, or a damaged catalogue, told apart (a busy catalogue reported
as damaged would invite restoring a healthy library from a backup)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kshot.errors import KshotError, StorageError


def sqlite_failure(path: Path, exc: sqlite3.Error, doing: str, waited: float) -> KshotError:
    """The one-line error for a failed SQLite call: busy, storage or damage, told apart."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return KshotError(
            f"{path}: another process holds the library (waited {waited:.0f} s "
            "for it); run the command again when it has finished"
        )
    if "readonly" in text or "read-only" in text:
        return StorageError(
            f"{path}: cannot {doing} it, it is read-only (storage or permissions); the "
            "library can be queried, not changed: copy it to writable storage to change it"
        )
    if "full" in text:
        return StorageError(
            f"{path}: no space left on the device; free some space and run the command "
            "again (what was already committed is kept)"
        )
    if "unable to open" in text or "disk i/o" in text:
        return StorageError(
            f"{path}: cannot {doing} it ({exc}): check that it and its folder can be "
            "read and written, and that the storage works"
        )
    return KshotError(
        f"{path}: damaged catalogue ({exc}); restore it from a backup or build a new library"
    )
