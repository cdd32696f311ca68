"""The application: libraries loaded at start-up, health, metrics, the page and the API."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kshot.embedder.runtime import one_thread_for_tensors, tune_allocator
from kshot.errors import KshotError
from kshot.serve.access_log import AccessLog
from kshot.serve.errors import ApiError, install_error_handlers
from kshot.serve.libraries import READY, ServedLibrary
from kshot.serve.limits import RequestLimits
from kshot.serve.metrics import Metrics
from kshot.serve.routes import router
from kshot.serve.settings import Settings

log = logging.getLogger("kshot")
DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's files


def create_app(settings: Settings) -> FastAPI:
    tune_allocator()  # every forward pass would page-fault its activations in again
    metrics = Metrics()
    served = [ServedLibrary(root, settings, metrics) for root in settings.libraries]
    libraries = {s.name: s for s in served}
    if len(libraries) != len(served):
        raise KshotError("each library is served under its directory name: two share a name")

    async def load(library: ServedLibrary) -> None:
        try:
            await library.load()
            log.info("library %s ready", library.name)
        except Exception as exc:
            log.error("library %s failed to load: %s", library.name, exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Loading runs in the background: /livez answers at once, /readyz once all are loaded.
        loading = [asyncio.create_task(load(library)) for library in served]
        yield
        await asyncio.gather(*loading, return_exceptions=True)
        for library in served:
            await library.close()
        app.state.decoding.shutdown(wait=False)

    app = FastAPIOffline(
        title="kshot",
        summary="Few-shot image classification: enroll a class from a few photos, query photos.",
        version="1",
        lifespan=lifespan,
        # /docs and /redoc with their scripts served from the installed package: FastAPI's own
        # pages load them from a CDN, and the machines that run kshot are often offline
        static_url=DOCS_ASSETS,
    )
    app.state.settings = settings
    app.state.libraries = libraries
    app.state.metrics = metrics
    # Decoding uploads: as many threads as cores (not anyio's 40): more could not decode any
    # faster, and would take turns at the GIL with the forward pass's own Python code. Each
    # prepares tensors on one thread, so the forward pass's OpenMP team stays the only one.
    app.state.decoding = ThreadPoolExecutor(
        os.cpu_count() or 1, thread_name_prefix="kshot-decode", initializer=one_thread_for_tensors
    )
    install_error_handlers(app)
    app.include_router(router)
    limits = settings.limits
    app.add_middleware(
        RequestLimits,
        max_bytes=limits.max_request_bytes,
        seconds=limits.request_seconds,
        max_in_flight=limits.max_in_flight,
    )
    app.add_middleware(AccessLog, metrics=metrics)

    @app.get("/livez")
    async def livez():
        """The process answers."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        """Every library loaded (model included): ready to answer queries."""
        states = {name: library.state for name, library in libraries.items()}
        if any(state != READY for state in states.values()):
            failed = {n: s for n, s in states.items() if s != READY}
            raise ApiError(503, "not_ready", f"not ready: {failed}", {"Retry-After": "1"})
        return {"status": "ready", "libraries": states}

    @app.get("/metrics", response_class=Response)
    async def prometheus():
        """Prometheus metrics (text exposition format)."""
        for library in served:
            await library.update_sizes()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request):
        return HTMLResponse(_page())

    return app


def _page() -> str:
    return (resources.files("kshot.serve") / "static" / "index.html").read_text(encoding="utf-8")
