"""A library's files, without its model or its index: what ``kshot classes``, ``forget`` and
``info`` need, read without importing torch or FAISS (1-2 s of start-up each).

:class:`kshot.fewshot.library.Library` builds on :class:`LibraryStore` with the embedder and the
index.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kshot.errors import KshotError, StorageError
from kshot.fewshot.catalogue import Catalogue, Removed
from kshot.index.spec import IndexSpec

log = logging.getLogger("kshot")

MANIFEST, MODEL, CATALOGUE, INDEX, LOCK = (
    "manifest.json",
    "model.kshot",
    "catalogue.sqlite",
    "index.faiss",
    ".lock",
)
FORMAT, VERSION = "kshot-library", 1


@dataclass(frozen=True)
class Manifest:
    model_sha256: str
    embedding_dim: int
    index: IndexSpec
    library_id: str | None = None  # the catalogue's, to notice one swapped in from another library
    model: dict = field(default_factory=dict)  # what the model is (backbone...), for `kshot info`

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "model_sha256": self.model_sha256,
            "embedding_dim": self.embedding_dim,
            "index": self.index.to_dict(),
            "library_id": self.library_id,
            "model": self.model,
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
            if not isinstance(model, dict):
                raise ValueError("model is not an object")
            return cls(
                data["model_sha256"],
                int(data["embedding_dim"]),
                spec,
                data.get("library_id"),
                model,
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

    def forget(self, label: str) -> int:
        """Remove every image of ``label``; returns how many there were."""
        with self._writing():
            return len(self.catalogue.remove_label(label))

    def forget_images(self, keys: list[str]) -> list[Removed]:
        """Remove the images whose SHA-256, or the path they were enrolled from, is in
        ``keys``; returns what was removed."""
        with self._writing():
            return self.catalogue.remove_images(keys)

    def disk_use(self) -> dict[str, int]:
        """Bytes of each of the library's files."""
        sizes = {}
        for name in (MANIFEST, MODEL, CATALOGUE, INDEX):
            with contextlib.suppress(OSError):
                sizes[name] = os.stat(self.root / name).st_size
        return sizes
