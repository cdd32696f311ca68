"""The index as a cache with one writer: stamped saves, readers that never write, journal
catch-up, damaged and swapped files, interrupted enrollments, single-image forgetting."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import numpy as np
import pytest

from kshot.errors import KshotError
from kshot.fewshot import index_cache
from kshot.fewshot import library as library_module
from kshot.fewshot.library import CATALOGUE, INDEX, LOCK, MANIFEST, Library
from kshot.index.header import header_of
from kshot.index.vector_index import IndexSpec

SPEC = IndexSpec(use_gpu=False)


def items_of(photos):
    return [(path, label) for label, paths in photos.items() for path in paths]


@pytest.fixture
def photos(tmp_path, make_class_images):
    return make_class_images(tmp_path / "photos", {"a": 3, "b": 3, "c": 2})


@pytest.fixture
def notices(caplog, monkeypatch):
    """kshot's notices as text (the CLI's logging set-up, if run before, stops propagation)."""
    import logging

    logger = logging.getLogger("kshot")
    monkeypatch.setattr(logger, "propagate", True)
    caplog.set_level(logging.INFO, logger="kshot")
    return caplog


def make_library(root, embedder, photos, spec=SPEC) -> Library:
    lib = Library.create(root, embedder, {}, spec, device="cpu")
    lib.enroll(items_of(photos))
    return lib


def assert_consistent(root: Path) -> Library:
    """The library opens, and the index any process searches holds exactly the catalogue."""
    lib = Library.open(root, device="cpu")
    assert sorted(lib.index.ids().tolist()) == lib.catalogue.ids().tolist()
    return lib


def test_a_reader_never_writes_the_index(tmp_path, conv4_embedder, photos):
    root = tmp_path / "lib"
    make_library(root, conv4_embedder, photos)  # 8 changes: below FOLD_AFTER, journal only
    before = (root / INDEX).read_bytes()
    reader = Library.open(root, device="cpu")
    results = reader.query([photos["a"][0]], method="knn")
    assert results[0].decision.label == "a"
    assert (root / INDEX).read_bytes() == before
    assert header_of(root / INDEX)["stamp"] != reader.catalogue.stamp()  # it is behind...
    assert_consistent(root)  # ...and caught up in memory from the catalogue's journal


def test_a_writer_saves_the_index_stamped_once_the_journal_is_long(
    tmp_path, conv4_embedder, photos, monkeypatch
):
    monkeypatch.setattr(index_cache, "FOLD_AFTER", 3)
    root = tmp_path / "lib"
    lib = make_library(root, conv4_embedder, photos)
    header = header_of(root / INDEX)
    assert header["stamp"] == lib.catalogue.stamp()
    assert header["last_id"] == max(lib.catalogue.ids())
    lib.forget("c")
    assert header_of(root / INDEX)["stamp"] != lib.catalogue.stamp()  # 2 changes: journal
    assert lib.compact() == 2
    assert header_of(root / INDEX)["stamp"] == lib.catalogue.stamp()
    assert_consistent(root)


def test_an_index_from_another_library_is_not_used(tmp_path, conv4_embedder, photos):
    ours = make_library(tmp_path / "ours", conv4_embedder, photos)
    ours.compact()
    other = Library.create(tmp_path / "other", conv4_embedder, {}, SPEC, device="cpu")
    other.enroll([(photos["a"][0], "elsewhere")])
    other.compact()
    shutil.copy(tmp_path / "other" / INDEX, tmp_path / "ours" / INDEX)
    lib = assert_consistent(tmp_path / "ours")
    assert lib.query([photos["b"][0]], method="knn")[0].decision.label == "b"


def test_a_catalogue_from_another_library_is_refused(tmp_path, conv4_embedder, photos):
    make_library(tmp_path / "ours", conv4_embedder, photos)
    Library.create(tmp_path / "other", conv4_embedder, {}, SPEC, device="cpu")
    shutil.copy(tmp_path / "other" / CATALOGUE, tmp_path / "ours" / CATALOGUE)
    with pytest.raises(KshotError, match="belongs to another library"):
        Library.open(tmp_path / "ours", device="cpu")


@pytest.mark.parametrize("name", [INDEX, CATALOGUE, MANIFEST])
def test_truncated_files(tmp_path, conv4_embedder, photos, name):
    root = tmp_path / "lib"
    make_library(root, conv4_embedder, photos).compact()
    data = (root / name).read_bytes()
    (root / name).write_bytes(data[: len(data) // 2])
    if name == INDEX:  # derived: rebuilt in memory, answers unchanged
        lib = assert_consistent(root)
        assert lib.query([photos["c"][0]], method="knn")[0].decision.label == "c"
        return
    with pytest.raises(KshotError) as caught:
        Library.open(root, device="cpu").classes()
    assert name in str(caught.value) and "damaged" in str(caught.value)


def test_hnsw_forget_keeps_tombstones_and_compact_drops_them(tmp_path, conv4_embedder, photos):
    spec = IndexSpec(kind="hnsw", use_gpu=False)
    root = tmp_path / "lib"
    lib = make_library(root, conv4_embedder, photos, spec)
    lib.forget("a")
    assert lib.index.tombstones == 3 and len(lib.index) == 5
    found = lib.query(photos["a"], method="knn", top_k=10)
    assert all("a" not in [label for label, _ in r.decision.top_k] for r in found)
    lib.compact()
    assert Library.open(root, device="cpu").index.tombstones == 0
    assert_consistent(root)


def test_forget_single_images_by_path_or_sha256(tmp_path, conv4_embedder, photos):
    import hashlib

    root = tmp_path / "lib"
    lib = make_library(root, conv4_embedder, photos)
    sha = hashlib.sha256(photos["b"][1].read_bytes()).hexdigest()
    removed = lib.forget_images([str(photos["a"][0].resolve()), sha])
    assert [(r.label, r.source) for r in removed] == [
        ("a", str(photos["a"][0].resolve())),
        ("b", str(photos["b"][1].resolve())),
    ]
    assert dict(lib.classes()) == {"a": 2, "b": 2, "c": 2}
    assert_consistent(root)


def test_an_interrupted_enrollment_keeps_its_batches_and_a_rerun_goes_on(
    tmp_path, conv4_embedder, photos, monkeypatch
):
    monkeypatch.setattr(library_module, "ENROLL_BATCH", 3)
    root = tmp_path / "lib"
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    real, calls = library_module.embed_files, []

    def interrupted_second_time(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(library_module, "embed_files", interrupted_second_time)
    report = lib.enroll(items_of(photos))
    assert report.interrupted and len(report.added) == 3
    assert len(Library.open(root, device="cpu").catalogue) == 3
    calls.clear()
    monkeypatch.setattr(library_module, "embed_files", real)
    again = Library.open(root, device="cpu").enroll(items_of(photos))
    assert len(again.duplicates) == 3 and len(again.added) == 5 and not again.interrupted
    assert_consistent(root)


def test_a_read_only_lock_file_still_locks(tmp_path, conv4_embedder, photos, monkeypatch):
    root = tmp_path / "lib"
    lib = make_library(root, conv4_embedder, photos)
    real = builtins.open

    def no_append(path, mode="r", *args, **kwargs):
        if str(path) == str(root / LOCK) and "a" in mode:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_append)
    assert lib.forget("c") == 2


def test_a_failed_index_save_loses_nothing(tmp_path, conv4_embedder, photos, monkeypatch, notices):
    import errno

    from kshot.index.vector_index import VectorIndex

    def disk_full(self, path, header=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    root = tmp_path / "lib"
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    monkeypatch.setattr(VectorIndex, "save", disk_full)
    monkeypatch.setattr(index_cache, "FOLD_AFTER", 1)
    lib.enroll(items_of(photos))
    assert "no space left on the device" in notices.text
    with pytest.raises(KshotError, match="could not save the index"):
        lib.compact()
    monkeypatch.undo()
    lib = assert_consistent(root)
    assert len(lib.catalogue) == 8 and np.isfinite(lib.entries().vectors).all()


def test_a_flat_library_growing_large_becomes_a_graph_once(
    tmp_path, conv4_embedder, photos, notices
):
    spec = IndexSpec(use_gpu=False, graph_from=5)
    root = tmp_path / "lib"
    lib = Library.create(root, conv4_embedder, {}, spec, device="cpu")
    lib.enroll(items_of(photos)[:4])
    assert lib.manifest.index.kind == "flat" and "HNSW" not in notices.text
    lib.enroll(items_of(photos)[4:])
    assert notices.text.count("HNSW graph") == 1
    reopened = assert_consistent(root)
    assert reopened.manifest.index.kind == "hnsw" and reopened.index.trained_kind == "hnsw"
    assert reopened.query([photos["a"][0]], method="knn")[0].decision.label == "a"
    lib.enroll([(photos["a"][0], "a")])  # nothing new, nothing said again
    assert notices.text.count("HNSW graph") == 1


def test_a_flat_index_chosen_explicitly_stays_flat(tmp_path, conv4_embedder, photos):
    spec = IndexSpec(use_gpu=False, graph_from=0)
    lib = Library.create(tmp_path / "lib", conv4_embedder, {}, spec, device="cpu")
    lib.enroll(items_of(photos))
    assert Library.open(tmp_path / "lib", device="cpu").manifest.index.kind == "flat"


def test_compact_retrains_a_grown_ivfpq_index_on_all_its_vectors(
    tmp_path, conv4_embedder, monkeypatch
):
    import faiss

    from kshot.fewshot.catalogue import NewImage
    from kshot.index.vector_index import ivfpq_layout

    spec = IndexSpec(kind="ivfpq", ivf_train_size=300, use_gpu=False)
    lib = Library.create(tmp_path / "lib", conv4_embedder, {}, spec, device="cpu")
    vectors = np.random.default_rng(0).normal(size=(1500, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def add(rows):
        with lib._writing():
            lib.catalogue.add([NewImage("x", f"p{i}", f"{i:064x}", vectors[i]) for i in rows])

    def lists() -> int:
        return faiss.downcast_index(lib.index._index).nlist

    add(range(300))
    add(range(300, 1500))
    assert lists() == ivfpq_layout(64, 300)[0]  # trained once, on the first 300
    monkeypatch.setattr(index_cache, "REBUILD_CHUNK", 400)  # the catalogue read in 4 pieces
    lib.compact()
    assert lists() == ivfpq_layout(64, 1500)[0]
    assert lib.index.exact_vectors is not None  # it still re-ranks by the catalogue's vectors
    assert sorted(lib.index.ids()) == lib.catalogue.ids().tolist()
    assert_consistent(tmp_path / "lib")
