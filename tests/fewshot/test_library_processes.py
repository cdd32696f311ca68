"""Several processes on one library: two writers and a reader at once, and writers killed with
SIGKILL at random moments. Each test is bounded in time (a timeout on every process)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# WRITER enrolls the files given (label: the folder's name) two at a time, saving the index every
# few changes, and prints the catalogue's size after each commit: the soak benchmark's writer.
from benchmarks.soak import WRITER
from kshot.fewshot.library import Library
from kshot.index.vector_index import IndexSpec

LIMIT_S = 60


@pytest.fixture
def files(tmp_path, make_class_images) -> list[Path]:
    found = []
    for seed, label in enumerate(("a", "b", "c", "d")):
        found += make_class_images(tmp_path / "photos" / label, {label: 6}, first_seed=seed)[label]
    return found


@pytest.fixture
def root(tmp_path, conv4_embedder) -> Path:
    Library.create(tmp_path / "lib", conv4_embedder, {}, IndexSpec(use_gpu=False), device="cpu")
    return tmp_path / "lib"


def writer(root: Path, files: list[Path]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def assert_holds_exactly(root: Path, files: list[Path] | None = None) -> int:
    """The library opens; its index holds exactly the catalogue; no image is there twice; with
    ``files``, it holds exactly those. Returns how many images it holds."""
    lib = Library.open(root, device="cpu")
    ids = lib.catalogue.ids().tolist()
    assert sorted(lib.index.ids().tolist()) == ids
    rows = lib.catalogue._query("SELECT label, sha256, source FROM images")
    assert len({(label, sha) for label, sha, _ in rows}) == len(rows)
    if files is not None:
        assert sorted(source for _, _, source in rows) == sorted(str(f.resolve()) for f in files)
    return len(ids)


def test_two_writers_and_a_reader_at_once(root, files):
    first, second = writer(root, files[:14]), writer(root, files[10:])  # 4 files in both
    reader = Library.open(root, device="cpu")
    deadline, reads = time.monotonic() + LIMIT_S, 0
    while any(p.poll() is None for p in (first, second)):
        assert time.monotonic() < deadline, "the writers did not finish in time"
        with reader.catalogue.snapshot():  # one consistent state: index and catalogue agree
            index = reader._load_index()
            assert sorted(index.ids().tolist()) == reader.catalogue.ids().tolist()
        if len(reader.catalogue):
            reader.query([files[0]], method="knn")
        reads += 1
    for process in (first, second):
        _, err = process.communicate(timeout=LIMIT_S)
        assert process.returncode == 0, err
    assert reads > 0
    assert_holds_exactly(root, files)


def test_writers_killed_at_random_moments(root, files):
    rng = random.Random(0)
    for _ in range(2):  # more kills, with their counts, in benchmarks/soak.py
        process = writer(root, files)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=LIMIT_S)
        committed = [int(line.split()[1]) for line in out.splitlines() if line.strip()]
        held = assert_holds_exactly(root)
        assert held >= max(committed, default=0)  # nothing reported committed was lost
    process = writer(root, files)  # a rerun goes on from what was kept
    _, err = process.communicate(timeout=LIMIT_S)
    assert process.returncode == 0, err
    assert_holds_exactly(root, files)


def test_disk_full_during_an_index_save(root, files, tmp_path):
    """``ulimit -f``: the index cannot be written past 4 KiB; the catalogue is not written."""
    lib = Library.open(root, device="cpu")
    lib.enroll([(f, f.parent.name) for f in files])
    kshot = Path(sys.executable).with_name("kshot")
    result = subprocess.run(
        ["bash", "-c", f'ulimit -f 4; exec "{kshot}" compact "{root}"'],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    assert result.returncode == 1, result.stderr
    assert "file size limit reached" in result.stderr and "index.faiss" in result.stderr
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp")) == []
    assert_holds_exactly(root, files)
