"""Reading real-world image files into PIL images of a fixed mode.

Handles what users actually send: EXIF-rotated phone photos, grey, palette, RGBA, 16-bit and CMYK
files, and refuses what is not an image, is truncated, or would blow up memory when decoded.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kshot.errors import InputError, os_error_reason

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# 150 megapixels: above the largest phone sensors (108 MP), far below what would exhaust memory.
MAX_PIXELS = 150_000_000


class ImageTooLarge(InputError):
    """An image refused for its pixel count (a possible decompression bomb)."""


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image
    sha256: str | None


def read_image(path: str | Path, min_side: int, channels: int, digest: bool = False) -> LoadedImage:
    """Decode ``path`` into an ``L`` (channels=1) or ``RGB`` (channels=3) image, upright.

    JPEGs are decoded at the smallest DCT scale whose sides are still at least ``min_side``
    (PIL's ``draft``): a 12-megapixel photo bound for a 256-pixel resize is decoded at 1/8 scale.
    Raises :class:`InputError` naming the file and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory, expected an image file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "does not exist") from None
    except OSError as exc:  # permissions, I/O errors: this file fails, its batch goes on
        raise InputError(path, f"cannot be read: {os_error_reason(exc)}") from None
    return decode_image(data, path, min_side, channels, digest)


def decode_image(
    data: bytes,
    source: str | Path,
    min_side: int,
    channels: int,
    digest: bool = False,
    max_pixels: int | None = None,
) -> LoadedImage:
    """:func:`read_image` for bytes already in memory (an upload); ``source`` names them in
    errors. Images of more than ``max_pixels`` (default ``MAX_PIXELS``) are refused before
    they are decoded."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise InputError(source, "empty file (0 bytes)")
    sha = hashlib.sha256(data).hexdigest() if digest else None
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces PIL's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    source,
                    f"refused as a possible decompression bomb: {width}x{height} pixels "
                    f"is over the limit of {max_pixels:,}",
                )
            img.draft(None, (min_side, min_side))
            img.load()
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(source, "not an image file that can be decoded") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(source, f"refused as a possible decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(source, f"cannot decode image: {exc}") from None
    return LoadedImage(_to_mode(_upright(img), channels), sha)


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says; as it is when that EXIF is malformed."""
    try:
        return ImageOps.exif_transpose(img)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, struct.error):
        return img


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to ``L`` or ``RGB``: deep images are rescaled, alpha goes on white."""
    target = "L" if channels == 1 else "RGB"
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.asarray(img, dtype=np.float64)
        peak = values.max(initial=0)
        if img.mode.startswith("I;16"):
            top = 65535.0
        elif img.mode == "F":
            top = 1.0 if peak <= 1.0 else 255.0
        else:  # 32-bit "I": PIL's mode for 16-bit PNGs, among others
            top = 65535.0 if peak > 255 else 255.0
        img = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == target else img.convert(target)


def list_images(directory: Path) -> list[Path]:
    """Image files directly in ``directory`` (by suffix, case-insensitive), sorted by name."""
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of the file's bytes, or ``None`` if it cannot be read (reading it says why)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def images_in(inputs: list[str]) -> tuple[list[str], list[InputError]]:
    """The image files ``inputs`` name, in order: a folder stands for the images directly in it;
    anything else is kept as given (reading it says what is wrong, e.g. that it does not exist).
    A folder with no image directly in it is reported."""
    found: list[str] = []
    errors: list[InputError] = []
    for given in inputs:
        entry = Path(given)
        if not entry.is_dir():
            found.append(given)
        elif images := list_images(entry):
            found += map(str, images)
        else:
            errors.append(InputError(entry, "is a folder with no image files directly in it"))
    return found, errors


@dataclass(frozen=True)
class ClassFolder:
    """A folder of one class's images; ``name`` is ``folder`` or ``group/folder``."""

    name: str
    folder: Path
    images: list[Path]


def class_tree(root: Path) -> tuple[list[ClassFolder], list[InputError]]:
    """The classes under ``root``, sorted, and what was left out and why.

    Each sub-folder holding images is a class named after it. A sub-folder holding only folders is
    a group (a crop, say), each of its folders a class named ``group/folder``
    (``Tomato/Late blight``). Folders deeper than that, and folders beside a class's images, are
    reported, not read.
    """
    classes: list[ClassFolder] = []
    errors: list[InputError] = []
    for top in _sub_folders(root):
        images, inner = list_images(top), _sub_folders(top)
        if images or not inner:
            classes.append(ClassFolder(top.name, top, images))
            errors += [_not_read(folder, top) for folder in inner]
            continue
        for folder in inner:
            classes.append(ClassFolder(f"{top.name}/{folder.name}", folder, list_images(folder)))
            errors += [
                InputError(
                    deeper,
                    "is a third folder level; labels have at most two levels "
                    "(group/class), so it was not read",
                )
                for deeper in _sub_folders(folder)
            ]
    return classes, errors


def _sub_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _not_read(folder: Path, parent: Path) -> InputError:
    return InputError(folder, f"is a folder among the images of class {parent.name!r}; not read")


def class_folders(root: Path) -> list[tuple[Path, list[Path]]]:
    """``(folder, images)`` for each sub-folder of ``root``, sorted: one sub-folder per class."""
    return [
        (folder, list_images(folder)) for folder in sorted(p for p in root.iterdir() if p.is_dir())
    ]
