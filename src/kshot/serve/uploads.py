"""Images sent by clients: read from a request, decoded in memory, stored by their content.

A client's file name is only ever a name in messages and answers: the bytes are decoded from
memory, and images enrolled through the API are kept in the library under the SHA-256 of their
bytes (``LIB/uploads/<sha256>.<format>``), so nothing a client sends becomes a path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from kshot.atomic import atomic_path
from kshot.embedder.images import ImageTooLarge, decode_image
from kshot.embedder.tta import view_pixels
from kshot.errors import InputError
from kshot.serve.errors import ApiError
from kshot.serve.settings import Limits

FIELD = "images"
UPLOADS = "uploads"
_SUFFIXES = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
}


@dataclass(frozen=True)
class Upload:
    name: str  # as the client called it: for messages and answers only
    data: bytes


async def read_uploads(request: Request, limits: Limits) -> list[Upload]:
    """The images of a request: multipart files in the field ``images``, or JSON
    ``{"images": [{"name": ..., "data": BASE64}, ...]}`` (or plain base64 strings)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        uploads = await _multipart(request, limits)
    elif kind == "application/json":
        uploads = await _json(request, limits)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send images as multipart/form-data (field {FIELD!r}) or as application/json "
            f"with base64 data, not {kind or 'no content type'}",
        )
    if not uploads:
        raise ApiError(422, "no_images", f"the request holds no image in the field {FIELD!r}")
    return uploads


def _too_many(limits: Limits) -> ApiError:
    return ApiError(
        413, "too_many_images", f"a request may hold at most {limits.max_images} images"
    )


async def _multipart(request: Request, limits: Limits) -> list[Upload]:
    try:
        form = await request.form(max_files=limits.max_images, max_fields=100)
    except HTTPException as exc:
        if "files" in str(exc.detail).lower():
            raise _too_many(limits) from None
        raise ApiError(400, "bad_multipart", str(exc.detail)) from None
    files = [item for item in form.getlist(FIELD) if isinstance(item, UploadFile)]
    return [
        Upload(item.filename or f"image {i + 1}", await item.read()) for i, item in enumerate(files)
    ]


async def _json(request: Request, limits: Limits) -> list[Upload]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON ({exc})") from None
    items = body.get(FIELD) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ApiError(422, "no_images", f'expected {{"{FIELD}": [{{"name", "data"}}, ...]}}')
    if len(items) > limits.max_images:
        raise _too_many(limits)
    uploads = []
    for i, item in enumerate(items):
        name, data = f"image {i + 1}", item
        if isinstance(item, dict):
            name, data = str(item.get("name") or name), item.get("data")
        if not isinstance(data, str):
            raise ApiError(422, "no_images", f"{name}: expected base64 text in 'data'")
        try:
            uploads.append(Upload(name, base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_base64", f"{name}: its data is not valid base64") from None
    return uploads


@dataclass
class Prepared:
    """``pixels[j]`` is the prepared image of upload ``indices[j]``; ``errors`` the others."""

    pixels: torch.Tensor
    indices: list[int]
    errors: list[tuple[int, InputError]]


def prepare(
    uploads: list[Upload], config, max_pixels: int, views: tuple[str, ...] = ()
) -> Prepared:
    """Decode and prepare each upload for the embedder (run on a worker thread: it is CPU work);
    with the library's TTA ``views``, each image is its stack of views, as ``embed_files``
    prepares it."""
    tensors, indices, errors = [], [], []
    for i, upload in enumerate(uploads):
        try:
            loaded = decode_image(
                upload.data, upload.name, config.input_size, config.channels, max_pixels=max_pixels
            )
        except InputError as exc:
            errors.append((i, exc))
            continue
        if views:
            tensors.append(config.normalize(view_pixels(config, loaded.image, views)))
        else:
            tensors.append(config.prepare(loaded.image))
        indices.append(i)
    shape = (0, config.channels, config.input_size, config.input_size)
    return Prepared(torch.stack(tensors) if tensors else torch.zeros(shape), indices, errors)


def refusal(error: InputError) -> ApiError:
    """The response when no image of a request could be used: ``error`` is the first one's."""
    if isinstance(error, ImageTooLarge):
        return ApiError(413, "image_too_large", str(error))
    return ApiError(415, "not_an_image", str(error))


def prune(root: Path, sources: list[str]) -> int:
    """Delete the kept uploads that no enrolled image comes from any more (after a class is
    forgotten); returns how many. Files being written (``.name.tmp``) are left alone."""
    folder = Path(root) / UPLOADS
    if not folder.is_dir():
        return 0
    kept = {Path(source).name for source in sources if Path(source).parent.name == UPLOADS}
    stale = [p for p in folder.iterdir() if p.name not in kept and not p.name.startswith(".")]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def store(root: Path, upload: Upload) -> Path:
    """Keep an upload to enroll in the library, named by its content; returns its path."""
    with Image.open(io.BytesIO(upload.data)) as image:
        suffix = _SUFFIXES.get(image.format or "", ".img")
    folder = Path(root) / UPLOADS
    folder.mkdir(exist_ok=True)
    path = folder / (hashlib.sha256(upload.data).hexdigest() + suffix)
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_bytes(upload.data)
    return path
