"""``kshot serve``: libraries behind an HTTP API and a web page (FastAPI on uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kshot.cli.console import say
from kshot.cli.options import Device


def serve(
    libraries: Annotated[
        list[Path], typer.Argument(help="Library directories; each is served under its name.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    api_keys: Annotated[
        Path | None,
        typer.Option(help="File of API keys, a line each: 'rw KEY' (read-write) or 'ro KEY'."),
    ] = None,
    max_request_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body.")] = 64,
    max_images: Annotated[int, typer.Option(min=1, help="Most images in one request.")] = 64,
    max_megapixels: Annotated[float, typer.Option(min=0.001, help="Largest image.")] = 150,
    request_seconds: Annotated[float, typer.Option(min=0.1, help="Time limit per request.")] = 60,
    max_batch: Annotated[
        int | None,
        typer.Option(
            min=1, help="Most images in one forward pass [default: 32 on a GPU, 8 on a CPU]"
        ),
    ] = None,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            min=0,
            help="Longest wait for a batch to fill after its first image (0: take what is "
            "queued; batches still grow while a pass runs).",
        ),
    ] = 0,
    max_requests: Annotated[
        int, typer.Option(min=1, help="Requests handled at once; more are answered 503.")
    ] = 512,
    device: Device = "auto",
):
    """Serve libraries over HTTP: the JSON API (/docs), the web page (/), /metrics.

    Keys: KSHOT_API_KEY (read-write), KSHOT_READ_API_KEY (read-only), or --api-keys FILE.

    Without any key the server listens on a loopback address only.
    """
    import logging

    from kshot.fewshot.store import MANIFEST, Manifest
    from kshot.serve.auth import Keys, check_bind

    keys = Keys.load(api_keys)
    check_bind(host, keys)
    for root in libraries:
        Manifest.read(Path(root) / MANIFEST)  # not a library: say so now, not in the background

    import uvicorn

    from kshot.serve.app import create_app
    from kshot.serve.limits import raise_open_file_limit
    from kshot.serve.settings import Batching, Limits, Settings

    settings = Settings(
        libraries=tuple(libraries),
        keys=keys,
        limits=Limits(
            max_request_bytes=int(max_request_mb * 1024 * 1024),
            max_images=max_images,
            max_pixels=int(max_megapixels * 1_000_000),
            request_seconds=request_seconds,
            max_in_flight=max_requests,
        ),
        batching=Batching(max_batch=max_batch, max_wait_s=max_wait_ms / 1000),
        device=device,
    )
    app = create_app(settings)
    access = logging.getLogger("kshot.access")
    if not access.handlers:
        handler = logging.StreamHandler()
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    names = ", ".join(Path(root).resolve().name for root in libraries)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    say(f"kshot: serving {names} at {where} (page: {where}/, API: {where}/docs)")
    if not keys.enabled:
        say("kshot: no API key set: open to anyone on this machine, listening on loopback only")
    concurrency = max(4096, 2 * max_requests)
    files = raise_open_file_limit(concurrency + 256)
    if files < concurrency:
        say(f"kshot: at most {files} open files: beyond about that many connections are refused")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        # uvicorn counts open connections too, and answers in plain text: only a backstop here
        limit_concurrency=concurrency,
        timeout_keep_alive=5,
    )
