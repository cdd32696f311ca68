"""Enrolling on several processes: the shares put back in order, the main process's side and
the others' on a stand-in for the process group, and two gloo processes under ``torchrun``
enrolling a folder as one process does."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from kshot.embedder.inference import Embedded
from kshot.errors import InputError, KshotError
from kshot.fewshot import distributed_enroll
from kshot.fewshot.catalogue import Catalogue
from kshot.fewshot.distributed_enroll import (
    Embed,
    Failed,
    Stop,
    merged,
    run_sharded,
    serve,
    share,
    shared_embedding,
)
from kshot.fewshot.library import CATALOGUE, Library, bound_embedder
from kshot.fewshot.store import LibraryStore
from kshot.index.vector_index import IndexSpec
from tests.cli.conftest import PATTERNS, Kshot, make_image
from tests.torchrun import TORCHRUN_VARIABLES, torchrun_kshot

CPU = torch.device("cpu")


class Loopback:
    """The main process of a group of ``size``, the others' shares embedded here, as they
    would (or ``Failed``, for the ranks in ``failing``)."""

    rank = 0

    def __init__(self, root: Path, size: int = 2, failing: tuple[int, ...] = ()):
        self.root, self.size, self.failing = root, size, failing
        self.told: list = []
        self.collected: list = []  # the main process's own parts

    def tell(self, message):
        self.told.append(message)
        return message

    def collect(self, part):
        self.collected.append(part)
        message = self.told[-1]
        embedder = bound_embedder(self.root, LibraryStore.read_manifest(self.root), CPU, "fp32")
        others = [
            Failed(rank, "RuntimeError: out of memory")
            if rank in self.failing
            else share(embedder, message, rank, self.size)
            for rank in range(1, self.size)
        ]
        return [part, *others]


class Scripted:
    """Another process (``rank``) of the group: told ``messages`` in turn; keeps what it sends."""

    def __init__(self, messages: list, rank: int = 1, size: int = 2):
        self.messages, self.rank, self.size = list(messages), rank, size
        self.sent: list = []

    def tell(self, message):
        assert message is None  # only the main process says anything
        return self.messages.pop(0)

    def collect(self, part):
        self.sent.append(part)


@pytest.fixture
def photos(tmp_path, make_class_images) -> list[tuple[Path, str]]:
    made = make_class_images(tmp_path / "photos", {"a": 5, "b": 4, "c": 3})
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    items = [(path, label) for label, paths in made.items() for path in paths]
    return items[:6] + [(tmp_path / "photos" / "broken.png", "b")] + items[6:]


def make_library(root: Path, embedder) -> Library:
    return Library.create(root, embedder, {"trained": False}, IndexSpec(use_gpu=False), "cpu")


def rows(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """Each enrolled image's vector, by (label, sha256); asserts none is there twice."""
    with sqlite3.connect(root / CATALOGUE) as db:
        found = db.execute("SELECT label, sha256, vector FROM images ORDER BY id").fetchall()
    held = {(label, sha): np.frombuffer(vector, np.float32) for label, sha, vector in found}
    assert len(held) == len(found)
    return held


def same_rows(one: dict, other: dict) -> bool:
    return one.keys() == other.keys() and all(np.allclose(one[k], other[k]) for k in one)


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir()}


def test_merged_puts_the_shares_back_in_the_batch_order():
    bad = InputError("x/3.png", "not an image")
    first = Embedded(np.array([[0.0], [2.0], [4.0]], np.float32), [0, 1, 2], ["s0", "s2", "s4"])
    second = Embedded(np.array([[5.0]], np.float32), [2], ["s5"], [(0, bad), (1, bad)])
    whole = merged([first, second])
    assert whole.indices == [0, 2, 4, 5] and whole.sha256 == ["s0", "s2", "s4", "s5"]
    assert whole.vectors[:, 0].tolist() == [0.0, 2.0, 4.0, 5.0]
    assert [i for i, _ in whole.errors] == [1, 3]


def test_without_torchrun_the_command_runs_as_it_is(monkeypatch, tmp_path):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed_enroll, "start_from_env", lambda device: pytest.fail())
    assert run_sharded(tmp_path, "auto", lambda device, shard: (device, shard)) == ("auto", None)
    assert not (dist.is_available() and dist.is_initialized())


def test_a_shared_enrollment_is_the_one_process_enrollment(tmp_path, conv4_embedder, photos):
    alone = make_library(tmp_path / "alone", conv4_embedder)
    expected = alone.enroll(photos)
    library = make_library(tmp_path / "shared", conv4_embedder)
    group = Loopback(library.root, size=3)
    report = library.enroll(photos, embed=shared_embedding(group, library))
    assert report.added == expected.added and len(report.added) == 12
    assert [str(e) for e in report.errors] == [str(e) for e in expected.errors]
    assert report.errors[0].source.endswith("broken.png")
    assert same_rows(rows(library.root), rows(alone.root))
    assert [len(m.paths) for m in group.told] == [13]  # one batch, shared three ways
    # Run again: only the unreadable image is tried again; the others, skipped, are not sent.
    group.told.clear()
    again = library.enroll(photos, embed=shared_embedding(group, library))
    assert not again.added and len(again.duplicates) == 12 and len(again.errors) == 1
    assert [m.paths for m in group.told] == [[photos[6][0]]]


def test_a_process_that_cannot_embed_fails_the_enrollment(tmp_path, conv4_embedder, photos):
    library = make_library(tmp_path / "lib", conv4_embedder)
    embed = shared_embedding(Loopback(library.root, size=3, failing=(2,)), library)
    with pytest.raises(KshotError, match="process 2 could not embed: RuntimeError: out of mem"):
        library.enroll(photos, embed=embed)
    assert rows(library.root) == {}


def test_an_interrupt_on_the_main_process_still_ends_the_round(
    tmp_path, conv4_embedder, photos, monkeypatch
):
    library = make_library(tmp_path / "lib", conv4_embedder)
    group = Loopback(library.root)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed_enroll, "share", interrupted)
    report = library.enroll(photos, embed=shared_embedding(group, library))
    assert report.interrupted and not report.added
    # The others' shares were collected (they would wait for it otherwise), then it stopped.
    assert len(group.told) == 1 and isinstance(group.collected[0], Failed)


def test_the_other_processes_embed_their_share_and_write_nothing(
    tmp_path, conv4_embedder, photos, monkeypatch
):
    library = make_library(tmp_path / "lib", conv4_embedder)
    library.enroll(photos[:2])
    before = files_of(library.root)

    def refused(*args, **kwargs):
        raise AssertionError("another process opened the library")

    for name in ("__init__", "locked"):
        monkeypatch.setattr(LibraryStore, name, refused)
    monkeypatch.setattr(Catalogue, "__init__", refused)
    paths = [path for path, _ in photos]
    group = Scripted([Embed(paths, "fp32", ()), Embed(paths[:1], "fp32", ()), Stop(3)])
    assert serve(group, library.root, CPU) == 3
    assert files_of(library.root) == before
    first, second = group.sent
    expected = library.embed_files(paths[1::2])
    assert first.sha256 == expected.sha256 and np.allclose(first.vectors, expected.vectors)
    assert second.indices == [] and second.errors == []  # a share of nothing


def test_another_process_reports_what_it_could_not_do(tmp_path):
    group = Scripted([Embed([tmp_path / "a.png"], "fp32", ()), Stop(1)])
    assert serve(group, tmp_path / "missing", CPU) == 1
    assert isinstance(group.sent[0], Failed) and "does not exist" in group.sent[0].reason


@pytest.mark.parametrize(
    ("outcome", "code"), [(3, 3), (KshotError("no"), 1), (KeyboardInterrupt(), 130)]
)
def test_the_main_process_tells_the_others_how_it_ended(outcome, code):
    def main(device, shard):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    group = Loopback(Path("unused"))
    try:
        assert distributed_enroll._lead(group, main, "cpu") == code
    except (KshotError, KeyboardInterrupt) as exc:
        assert exc is outcome
    assert group.told == [Stop(code)]


def torchrun_enroll(tmp_path: Path, library: Path, data: Path) -> subprocess.CompletedProcess:
    return torchrun_kshot(tmp_path, "enroll", library, data, "--device", "cpu")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_enroll_a_folder_as_one_process_does(tmp_path):
    kshot = Kshot()
    data = tmp_path / "data"
    for name in PATTERNS:
        for i in range(9):
            make_image(data / "group" / name / f"{i}.png", name, i)
    (data / "group" / "bars" / "broken.png").write_bytes(b"not an image")
    kshot("init", tmp_path / "alone", "--backbone", "conv4", "--no-pretrained")
    shutil.copytree(tmp_path / "alone", tmp_path / "shared")  # the same model
    kshot("enroll", tmp_path / "alone", data, code=3)

    done = torchrun_enroll(tmp_path, tmp_path / "shared", data)
    output = done.stdout + done.stderr
    # Every process ends with the code one process would (3: an image refused); torchrun,
    # which takes any other code than 0 for a failure, reports it.
    assert done.returncode != 0 and re.search(r"exitcode\s*:\s*3\b", output), output
    # Only the main process prints: the refused image once, by name, and the summary once.
    assert output.count("broken.png: not an image file that can be decoded") == 1, output
    assert output.count("enrolled 27 image(s) in 3 class(es); 1 failed") == 1, output
    shared = rows(tmp_path / "shared")
    assert {label for label, _ in shared} == {f"group/{name}" for name in PATTERNS}
    assert same_rows(shared, rows(tmp_path / "alone"))
