"""The versioned API over the served libraries: ``/v1/libraries/...``."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader

from kshot.cli.options import Method
from kshot.cli.render import enroll_report_json, query_result_json
from kshot.errors import InputError, KshotError
from kshot.fewshot.labels import check_label
from kshot.fewshot.library import EnrollReport, QueryResult
from kshot.serve.auth import READ, WRITE
from kshot.serve.batcher import Overloaded
from kshot.serve.errors import ApiError
from kshot.serve.libraries import ServedLibrary
from kshot.serve.thumbnails import THUMBNAIL_SIDE, thumbnail
from kshot.serve.uploads import FIELD, prepare, prune, read_uploads, refusal, store

_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, if set")


def _access(level: str):
    # async: FastAPI runs a plain ``def`` dependency on a worker thread, a hop per request
    async def check(request: Request, key: str | None = Security(_key)) -> None:
        keys = request.app.state.settings.keys
        if not keys.enabled:
            return
        granted = keys.level(key)
        if granted is None:
            why = "a wrong API key" if key else "no API key: send one in the X-API-Key header"
            raise ApiError(
                401, "unauthorized", f"the request has {why}", {"WWW-Authenticate": "ApiKey"}
            )
        if level == WRITE and granted != WRITE:
            raise ApiError(
                403, "forbidden", "this API key is read-only: changes need a read-write key"
            )

    return Depends(check)


reading, writing = _access(READ), _access(WRITE)
router = APIRouter(prefix="/v1")

_IMAGES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": [FIELD],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FIELD: {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "data": {"type": "string", "format": "byte"},
                                },
                            },
                        }
                    },
                }
            },
        },
    }
}


def _served(request: Request, name: str) -> ServedLibrary:
    served = request.app.state.libraries.get(name)
    if served is None:
        raise ApiError(404, "library_not_found", f"no library named {name!r} is served here")
    return served.ready()


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


async def _prepared(request: Request, served: ServedLibrary):
    """The request's uploads and their prepared pixels (decoded on a worker thread); refused as
    a whole only when not one image is usable."""
    limits = request.app.state.settings.limits
    uploads = await read_uploads(request, limits)
    decoding = request.app.state.decoding
    views = tuple(served.library.manifest.tta)
    prepared = await asyncio.get_running_loop().run_in_executor(
        decoding, prepare, uploads, served.preprocess, limits.max_pixels, views
    )
    if not prepared.indices:
        raise refusal(prepared.errors[0][1])
    return uploads, prepared


async def _batched(served: ServedLibrary, pixels, then):
    try:
        return await served.embed_then(pixels, then)
    except Overloaded as exc:
        raise ApiError(
            429, "overloaded", f"the server is busy ({exc})", {"Retry-After": "1"}
        ) from None
    except KshotError as exc:
        raise ApiError(409, "cannot_answer", str(exc)) from None


def _nearest(library, vectors, count: int) -> list[list[dict]]:
    """The ``count`` most similar enrolled images of each query: id, label, cosine similarity."""
    total = len(library.index)
    if count == 0 or total == 0:
        return [[] for _ in vectors]
    sims, ids = library.index.search(vectors, min(count, total))
    labels = library.catalogue.labels_of(ids)
    return [
        [
            {"id": int(i), "label": labels[int(i)], "score": round(float(s), 6)}
            for s, i in zip(row_sims, row_ids, strict=True)
            if int(i) in labels
        ]
        for row_sims, row_ids in zip(sims, ids, strict=True)
    ]


@router.get("/libraries", dependencies=[reading])
async def libraries(request: Request):
    """The libraries served, by name, with their state."""
    served = request.app.state.libraries.values()
    return {"libraries": [{"name": s.name, "state": s.state} for s in served]}


@router.get("/libraries/{name}", dependencies=[reading])
async def info(request: Request, name: str):
    """The library's model, index and size."""
    served = _served(request, name)
    counts = await served.call(lambda library: library.classes())
    manifest = served.library.manifest
    return {
        "name": name,
        "model": manifest.model_sha256,
        "embedding_dim": manifest.embedding_dim,
        "index": manifest.index.kind,
        "classes": len(counts),
        "images": sum(n for _, n in counts),
        "read_only": served.read_only,
    }


@router.get("/libraries/{name}/classes", dependencies=[reading])
async def classes(request: Request, name: str):
    """Each class and how many images it holds."""
    counts = await _served(request, name).call(lambda library: library.classes())
    return {"classes": [{"label": label, "images": n} for label, n in counts]}


@router.post("/libraries/{name}/query", dependencies=[reading], openapi_extra=_IMAGES_BODY)
async def query(
    request: Request,
    name: str,
    top_k: Annotated[int, Query(ge=1, le=100, description="Classes listed per image")] = 5,
    threshold: Annotated[
        float | None,
        Query(
            ge=0,
            le=1,
            description='"unknown" when the best confidence is under this (default: the '
            "library's own; 0: never)",
        ),
    ] = None,
    method: Annotated[
        Method | None, Query(description="The decision rule (default: the library's own)")
    ] = None,
    neighbours: Annotated[int, Query(ge=1, le=1000, description="k of method=knn")] = 10,
    nearest: Annotated[
        int, Query(ge=0, le=20, description="Most similar enrolled images listed")
    ] = 3,
):
    """Classify each image: the fields of ``kshot query --json``, plus ``request_id``,
    ``model``, ``latency_ms`` and the ``nearest`` enrolled images, one object per image in order."""
    started = time.perf_counter()
    served = _served(request, name)
    uploads, prepared = await _prepared(request, served)

    def answer(library, vectors):
        settings = library.settings_for(method.value if method else None, neighbours)
        decisions = library.decisions(vectors, settings, top_k, threshold)
        return decisions, _nearest(library, vectors, nearest)

    decisions, near = await _batched(served, prepared.pixels, answer)
    results: list[dict | None] = [None] * len(uploads)
    for j, i in enumerate(prepared.indices):
        result = QueryResult(uploads[i].name, decision=decisions[j])
        results[i] = {**query_result_json(result), "nearest": near[j]}
    for i, error in prepared.errors:
        results[i] = query_result_json(QueryResult(uploads[i].name, error=error))
    extra = {
        "request_id": _request_id(request),
        "model": served.library.manifest.model_sha256,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    # Sent as it is: FastAPI's own encoding would walk the finished JSON again
    return JSONResponse({"results": [{**result, **extra} for result in results]})


@router.post("/libraries/{name}/embed", dependencies=[reading], openapi_extra=_IMAGES_BODY)
async def embed(request: Request, name: str):
    """The embedding of each image (unit vectors of the library's model), in order."""
    served = _served(request, name)
    uploads, prepared = await _prepared(request, served)
    vectors = await _batched(served, prepared.pixels, lambda library, v: v)
    out: list[dict | None] = [None] * len(uploads)
    for j, i in enumerate(prepared.indices):
        out[i] = {"image": uploads[i].name, "vector": [round(float(x), 7) for x in vectors[j]]}
    for i, error in prepared.errors:
        out[i] = {"image": uploads[i].name, "error": error.reason}
    model = served.library.manifest.model_sha256
    return {"embeddings": out, "model": model, "request_id": _request_id(request)}


def _label(label: str) -> str:
    try:
        return check_label(label)
    except ValueError as exc:
        raise ApiError(422, "invalid_label", str(exc)) from None


@router.post(
    "/libraries/{name}/classes/{label:path}/images",
    dependencies=[writing],
    openapi_extra=_IMAGES_BODY,
)
async def enroll(request: Request, name: str, label: str):
    """Enroll images into a class (made if new), under the library's writer lock."""
    served = _served(request, name).writable()
    label = _label(label)
    uploads, prepared = await _prepared(request, served)
    good = [uploads[i] for i in prepared.indices]

    def add(library):
        # Kept and enrolled in one call on the library's thread: a class forgotten meanwhile
        # cannot prune an upload between the two.
        paths = [store(served.root, upload) for upload in good]
        report = library.enroll([(path, label) for path in paths])
        if report.errors:  # a refused image's upload goes, unless it is another's
            prune(served.root, library.entries().sources)
        return paths, report

    try:
        paths, report = await served.write(add)
    except (OSError, KshotError) as exc:
        raise ApiError(503, "cannot_write", f"cannot enroll into {name!r}: {exc}") from None
    # The answer names each image as the client did, not by where it is kept.
    names: dict[str, list[str]] = {}
    for path, upload in zip(paths, good, strict=True):
        names.setdefault(str(path), []).append(upload.name)
    named = EnrollReport(
        added=[(names[image].pop(0), lab) for image, lab in report.added],
        duplicates=[(names[image].pop(0), lab) for image, lab in report.duplicates],
        errors=[InputError(uploads[i].name, e.reason) for i, e in prepared.errors]
        + [InputError(names[e.source].pop(0), e.reason) for e in report.errors],
    )
    await served.update_sizes()
    return {**enroll_report_json(named), "request_id": _request_id(request)}


@router.get("/libraries/{name}/classes/{label:path}", dependencies=[reading])
async def class_images(request: Request, name: str, label: str):
    """A class's enrolled images, by catalogue id (see the thumbnail route)."""
    entries = await _served(request, name).call(lambda library: library.entries())
    ids = [int(i) for i, lab in zip(entries.ids, entries.labels, strict=True) if lab == label]
    if not ids:
        raise ApiError(404, "class_not_found", f"library {name!r} has no class {label!r}")
    return {"label": label, "images": [{"id": i} for i in ids]}


@router.delete("/libraries/{name}/classes/{label:path}", dependencies=[writing])
async def forget(request: Request, name: str, label: str):
    """Remove a class and all its images."""
    served = _served(request, name).writable()

    def remove(library):
        if label not in dict(library.classes()):
            return None
        removed = library.forget(label)
        prune(served.root, library.entries().sources)  # its photos kept from uploads go too
        return removed

    try:
        removed = await served.write(remove)
    except (OSError, KshotError) as exc:
        raise ApiError(503, "cannot_write", f"cannot forget in {name!r}: {exc}") from None
    if removed is None:
        raise ApiError(404, "class_not_found", f"library {name!r} has no class {label!r}")
    await served.update_sizes()
    return {"label": label, "removed": removed, "request_id": _request_id(request)}


@router.get(
    "/libraries/{name}/images/{image_id}/thumbnail",
    dependencies=[reading],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def image_thumbnail(request: Request, name: str, image_id: int):
    """A small JPEG of an enrolled image, by its catalogue id."""
    served = _served(request, name)

    def source(library):
        entries = library.entries()
        found = [s for i, s in zip(entries.ids, entries.sources, strict=True) if i == image_id]
        return found[0] if found else None

    path = await served.call(source)
    if path is None:
        raise ApiError(404, "image_not_found", f"library {name!r} has no image {image_id}")
    data = await run_in_threadpool(thumbnail, served.root, path, THUMBNAIL_SIDE)
    if data is None:
        raise ApiError(404, "image_file_missing", f"image {image_id}'s file can no longer be read")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
