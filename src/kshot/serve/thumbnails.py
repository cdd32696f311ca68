"""Small JPEGs of enrolled images, for the web page."""

from __future__ import annotations

import io
from pathlib import Path

from kshot.embedder.images import read_image
from kshot.errors import InputError
from kshot.serve.uploads import UPLOADS

THUMBNAIL_SIDE = 160


def thumbnail(root: Path, source: str, side: int) -> bytes | None:
    """A JPEG of at most ``side`` pixels a side of the image enrolled from ``source`` (a path
    from the catalogue, never from a client); ``None`` if it can no longer be read. An image
    enrolled through the API is looked for in this library's uploads, wherever it was copied."""
    path = Path(source)
    if path.parent.name == UPLOADS:
        path = Path(root) / UPLOADS / path.name
    try:
        image = read_image(path, side, 3).image
    except InputError:
        return None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
