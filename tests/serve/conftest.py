"""Fixtures for the server's tests: a small conv4 library, the app in-process (FastAPI's test
client) and the server started as a user starts it, on a free loopback port."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.fewshot.library import Library
from kshot.index.vector_index import IndexSpec
from tests.cli.conftest import PATTERNS, make_image

CLASSES = tuple(PATTERNS)  # bars, blob, corner: told apart by an untrained conv4


def png_bytes(pattern: str, seed: int, size: int = 32) -> bytes:
    """A PNG of one of the test classes (``"noise"``: of none), as bytes to upload."""
    rng = np.random.default_rng(seed)
    if pattern == "noise":
        pixels = rng.integers(0, 256, (size, size))
    else:
        pixels = PATTERNS[pattern](size, rng) + rng.normal(0, 12, (size, size))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def build_library(root: Path, per_class: int = 3, tta: tuple[str, ...] = ()) -> Path:
    """A conv4 library (seeded, untrained) with ``per_class`` images of each test class."""
    torch.manual_seed(0)
    config = EmbedderConfig.for_backbone("conv4", embedding_dim=None)
    embedder = build_embedder(config, pretrained=False)
    library = Library.create(root, embedder, {}, IndexSpec(kind="flat"), device="cpu", tta=tta)
    items = [
        (make_image(root.parent / "enrolled" / name / f"{i}.png", name, i), name)
        for name in CLASSES
        for i in range(per_class)
    ]
    library.enroll(items)
    library.catalogue.close()
    return root


@pytest.fixture
def library(tmp_path) -> Path:
    return build_library(tmp_path / "leaves")


@pytest.fixture
def make_client():
    """``make_client(settings)``: the app in a TestClient, its libraries loaded."""
    from fastapi.testclient import TestClient

    from kshot.serve.app import create_app

    clients = []

    def make(settings):
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m kshot serve ...`` in a subprocess, as a user starts it."""

    def __init__(self, *args, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        command = [sys.executable, "-m", "kshot", "serve", *map(str, args)]
        command += ["--port", str(self.port), "--device", "cpu"]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        self.process = subprocess.Popen(command, env=environment, stdout=self.log, stderr=self.log)

    def wait_ready(self, seconds: float = 60) -> Server:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not get ready: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def access_log(self) -> list[dict]:
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


READ_WRITE_KEY, READ_ONLY_KEY = "rw-secret", "ro-secret"


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """One server for the real-HTTP tests, with keys, a 1 MB body limit, a 3 s time limit and
    at most 16 requests at once; each test uses labels of its own."""
    root = build_library(tmp_path_factory.mktemp("http") / "leaves")
    server = Server(
        root,
        "--max-request-mb",
        "1",
        "--request-seconds",
        "3",
        "--max-requests",
        "16",
        env={"KSHOT_API_KEY": READ_WRITE_KEY, "KSHOT_READ_API_KEY": READ_ONLY_KEY},
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()
