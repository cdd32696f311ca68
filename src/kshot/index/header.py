"""The small JSON header before the FAISS bytes of a saved index: what the index reflects (the
catalogue's stamp and journal position) and its HNSW tombstones. Read without importing FAISS,
so ``kshot info`` starts fast."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"KSHOTIX1"
_SIZE = struct.Struct("<Q")


def write_header(handle: BinaryIO, header: dict) -> None:
    text = json.dumps(header).encode("utf-8")
    handle.write(MAGIC + _SIZE.pack(len(text)) + text)


def read_header(handle: BinaryIO) -> dict | None:
    """The header at ``handle``'s start, leaving it at the FAISS bytes; ``None`` (at the start)
    for a bare FAISS file, as saved before headers existed. ``ValueError`` if damaged."""
    if handle.read(len(MAGIC)) != MAGIC:
        handle.seek(0)
        return None
    try:
        (size,) = _SIZE.unpack(handle.read(_SIZE.size))
    except struct.error as exc:
        raise ValueError(f"truncated header ({exc})") from None
    header = json.loads(handle.read(size).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    return header


def header_of(path: Path) -> dict | None:
    """The header of the index file at ``path`` (see :func:`read_header`)."""
    with open(path, "rb") as handle:
        return read_header(handle)
