"""The GPU side of the index, as far as a machine without faiss-gpu can check it."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from kshot.index import gpu
from kshot.index.vector_index import IndexSpec, VectorIndex


@pytest.fixture(autouse=True)
def fresh_resources():
    gpu.gpu_resources.cache_clear()
    yield
    gpu.gpu_resources.cache_clear()


def test_both_faiss_builds_installed_is_reported(monkeypatch, caplog):
    monkeypatch.setattr(gpu, "installed_faiss_builds", lambda: ["faiss-cpu", "faiss-gpu"])
    with caplog.at_level(logging.WARNING, logger="kshot"):
        gpu.gpu_resources()
    assert "both faiss-cpu and faiss-gpu are installed" in caplog.text


def test_one_build_is_not_reported(monkeypatch, caplog):
    monkeypatch.setattr(gpu, "installed_faiss_builds", lambda: ["faiss-cpu"])
    with caplog.at_level(logging.WARNING, logger="kshot"):
        gpu.gpu_resources()
    assert caplog.text == ""


def test_installed_builds_lists_the_distribution_providing_faiss():
    assert set(gpu.installed_faiss_builds()) <= {"faiss-cpu", "faiss-gpu"}
    assert gpu.installed_faiss_builds()  # this process imported faiss from one of them


def test_an_index_the_gpu_refuses_is_searched_on_the_cpu_with_a_notice(monkeypatch, caplog):
    def refuse(resources, device, index):
        raise RuntimeError("Error in index_cpu_to_gpu: not implemented for this type of index")

    monkeypatch.setattr(gpu, "gpu_resources", lambda: object())
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
    vectors = np.eye(4, dtype=np.float32)
    index = VectorIndex(4, IndexSpec(kind="hnsw"))
    index.add(vectors, np.arange(10, 14))
    with caplog.at_level(logging.WARNING, logger="kshot"):
        scores, ids = index.search(vectors[:1], 1)
    assert ids[0, 0] == 10 and scores[0, 0] == pytest.approx(1.0)
    assert "searching the hnsw index on the CPU" in caplog.text


def test_use_gpu_false_never_asks_for_the_gpu(monkeypatch):
    def fail():
        raise AssertionError("asked for GPU resources")

    monkeypatch.setattr(gpu, "gpu_resources", fail)
    index = VectorIndex(2, IndexSpec(use_gpu=False))
    index.add(np.eye(2, dtype=np.float32), np.array([1, 2]))
    assert index.search(np.eye(2, dtype=np.float32), 1)[1].ravel().tolist() == [1, 2]
