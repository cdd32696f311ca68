"""Fixtures for end-to-end tests of the ``kshot`` command line, on images made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kshot.cli.app import app

# Three classes a randomly initialised conv4 tells apart: they differ in where the ink is.
PATTERNS = {
    "bars": lambda size, rng: np.tile((np.arange(size) // 4 % 2) * 255, (size, 1)),
    "blob": lambda size, rng: 255 * (np.hypot(*np.mgrid[:size, :size] - size / 2) < size / 4),
    "corner": lambda size, rng: 255 * (np.add(*np.mgrid[:size, :size]) < size / 2),
}


def make_image(path: Path, pattern: str, seed: int, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    pixels = PATTERNS[pattern](size, rng) + rng.normal(0, 12, (size, size))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").save(path)
    return path


def make_bomb(path: Path, side: int = 40_000) -> Path:
    """A small PNG whose header claims ``side`` x ``side`` pixels (a decompression bomb)."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", side, side) + bytes(data[24:29])
    data[12:33] = header + struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def images(tmp_path) -> dict[str, list[Path]]:
    """Four PNGs per class under ``tmp_path/images/<class>/``."""
    return {
        name: [make_image(tmp_path / "images" / name / f"{i}.png", name, i) for i in range(4)]
        for name in PATTERNS
    }


class Kshot:
    """Runs ``kshot`` in-process; ``json`` parses JSON Lines output."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args, code: int = 0):
        result = self.runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        return result

    def json(self, *args, code: int = 0) -> list[dict]:
        result = self(*args, "--json", code=code)
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture
def kshot() -> Kshot:
    return Kshot()


@pytest.fixture
def library(tmp_path, kshot) -> Path:
    """An empty library on a randomly initialised conv4 (seeded)."""
    import torch

    torch.manual_seed(0)
    path = tmp_path / "lib"
    kshot("init", path, "--backbone", "conv4", "--no-pretrained")
    return path


@pytest.fixture
def enrolled(library, images, kshot) -> Path:
    """The library with the first three images of each class enrolled."""
    for name, paths in images.items():
        kshot("enroll", library, "--label", name, *paths[:3])
    return library
