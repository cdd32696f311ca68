"""Export enrolled embeddings for TensorBoard's Embedding Projector (``tensorboard --logdir DIR``).

The projector shows every embedding as a point (PCA, t-SNE, UMAP, live in the browser) with its
label, source path and thumbnail, which is how a person finds a class that spills into another
or an image filed under the wrong label. :func:`export_projector` writes, into one directory:

    tensors.tsv             the vectors, one row each, tab-separated
    metadata.tsv            a header row "label<TAB>source", then one row per vector, same order
    sprite.png              the thumbnails in a row-major grid, same order
    projector_config.pbtxt  TensorBoard's ProjectorConfig naming the three files above

These files are written here rather than by ``torch.utils.tensorboard.SummaryWriter.
add_embedding``, which writes metadata cells as they are (a tab or newline in a label or path
shifts every later row), builds sprites past the projector's 8192-pixel limit, and appends a new
entry to the config on every call. The config itself is TensorBoard's own ``ProjectorConfig``
message, in protobuf text format.
"""

from __future__ import annotations

import io
import math
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kshot.atomic import atomic_path

TENSORS, METADATA, SPRITE = "tensors.tsv", "metadata.tsv", "sprite.png"
CONFIG = "projector_config.pbtxt"  # the name TensorBoard's projector plugin looks for
TENSOR_NAME = "kshot embeddings"
MAX_SPRITE_SIDE = 8192  # the projector refuses sprites wider or taller than this (pixels)
MISSING_GREY = (128, 128, 128)  # the tile of an image without a thumbnail
PADDING_WHITE = (255, 255, 255)  # around non-square thumbnails, and under transparent pixels
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape_cell(text: str) -> str:
    """``text`` as one TSV cell that cannot split a row or a line, for display only.

    Tab, newline and carriage return become the visible two characters ``\\t``, ``\\n``, ``\\r``;
    other control characters and the line and paragraph separators (every character that
    ``str.splitlines`` or a browser could break a line at) become ``\\xNN`` or ``\\uNNNN``.
    Backslashes stay as they are, so Windows paths read normally (the escaping is therefore not
    reversible). A cell that is empty or only white space is shown in double quotes: the
    projector skips blank rows, which would shift every later row.
    """
    out = []
    for char in str(text):
        category = unicodedata.category(char)
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif category in ("Cc", "Zl", "Zp"):
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    cell = "".join(out)
    if not cell.replace("\ufeff", "").strip():
        cell = f'"{cell}"'
    return cell


def metadata_tsv(labels: Sequence[str], sources: Sequence[str]) -> str:
    """The metadata file's text: header ``label<TAB>source``, then row ``i`` for vector ``i``;
    exactly ``n + 1`` lines, each ended by ``\\n`` (cells through :func:`escape_cell`)."""
    rows = ["label\tsource"]
    rows += [
        f"{escape_cell(lab)}\t{escape_cell(src)}" for lab, src in zip(labels, sources, strict=True)
    ]
    return "\n".join(rows) + "\n"


def sprite_layout(count: int, thumbnail_size: int) -> tuple[int, int, int]:
    """``(columns, rows, tile)`` of a sprite of ``count`` thumbnails: a near-square row-major
    grid of ``ceil(sqrt(count))`` columns (the projector's own layout) of square tiles of
    ``thumbnail_size`` pixels, shrunk where needed to keep the sprite within MAX_SPRITE_SIDE."""
    if count < 1 or thumbnail_size < 1:
        raise ValueError(f"a sprite needs images and a tile size, got {count}, {thumbnail_size}")
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    tile = min(thumbnail_size, MAX_SPRITE_SIDE // columns)
    if tile < 1:
        raise ValueError(
            f"{count} thumbnails do not fit a {MAX_SPRITE_SIDE}-pixel sprite even at 1 pixel each"
        )
    return columns, rows, tile


def _tile(thumbnail: Image.Image | None, side: int) -> Image.Image:
    """``thumbnail`` scaled to fit a ``side`` x ``side`` RGB tile, centred on white (transparent
    pixels too); a grey tile for ``None``."""
    if thumbnail is None:
        return Image.new("RGB", (side, side), MISSING_GREY)
    image = ImageOps.contain(thumbnail.convert("RGBA"), (side, side))
    tile = Image.new("RGB", (side, side), PADDING_WHITE)
    tile.paste(image, ((side - image.width) // 2, (side - image.height) // 2), mask=image)
    return tile


def make_sprite(thumbnails: Sequence[Image.Image | None], thumbnail_size: int) -> Image.Image:
    """The sprite: thumbnail ``i`` at column ``i % columns``, row ``i // columns`` of
    :func:`sprite_layout`'s grid; tiles after the last thumbnail stay black."""
    columns, rows, tile = sprite_layout(len(thumbnails), thumbnail_size)
    sprite = Image.new("RGB", (columns * tile, rows * tile))
    for i, thumbnail in enumerate(thumbnails):
        sprite.paste(_tile(thumbnail, tile), ((i % columns) * tile, (i // columns) * tile))
    return sprite


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _tensor_tsv(vectors: np.ndarray) -> bytes:
    """``vectors (n, d)`` as tab-separated text; 9 significant digits restore float32 exactly."""
    text = io.StringIO()
    np.savetxt(text, vectors, fmt="%.9g", delimiter="\t", newline="\n")
    return text.getvalue().encode("ascii")


def export_projector(
    vectors: np.ndarray,
    labels: Sequence[str],
    sources: Sequence[str],
    thumbnails: Sequence[Image.Image | None],
    logdir: Path,
    thumbnail_size: int = 48,
) -> Path:
    """Write ``vectors (n, d)`` with their ``labels``, ``sources`` and ``thumbnails`` (n each;
    ``None`` for an image without one: a grey tile) for TensorBoard's projector into ``logdir``.

    Metadata cells are escaped by :func:`escape_cell` (tabs, newlines and other line breaks
    become visible ``\\t``, ``\\n``...; all other Unicode stays). Thumbnails become square tiles
    of ``thumbnail_size`` pixels, or fewer when there are so many that the sprite would pass the
    projector's 8192 x 8192 limit (:func:`sprite_layout`). Existing files of these names are
    replaced, the config last. Returns ``logdir``, which holds ``projector_config.pbtxt``.
    """
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"need vectors (n, d) with n >= 1, got shape {vectors.shape}")
    counts = {len(vectors), len(labels), len(sources), len(thumbnails)}
    if len(counts) != 1:
        raise ValueError(
            f"{len(vectors)} vectors, {len(labels)} labels, {len(sources)} sources and "
            f"{len(thumbnails)} thumbnails: need one of each per vector"
        )
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    sprite = make_sprite(thumbnails, thumbnail_size)
    _, _, tile = sprite_layout(len(vectors), thumbnail_size)
    _write(logdir / TENSORS, _tensor_tsv(vectors))
    _write(logdir / METADATA, metadata_tsv(labels, sources).encode("utf-8"))
    with atomic_path(logdir / SPRITE) as tmp:
        sprite.save(tmp, format="PNG")
    config = ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.tensor_path, embedding.metadata_path = TENSORS, METADATA
    embedding.tensor_shape.extend(vectors.shape)
    embedding.sprite.image_path = SPRITE
    embedding.sprite.single_image_dim.extend([tile, tile])
    # Not projector.visualize_embeddings: it writes through tensorboard.compat.tf, which imports
    # TensorFlow where it is installed (seconds), and not atomically.
    _write(logdir / CONFIG, text_format.MessageToString(config).encode("utf-8"))
    return logdir
