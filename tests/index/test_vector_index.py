import subprocess
import sys

import numpy as np
import pytest

from kshot.errors import KshotError
from kshot.index import vector_index
from kshot.index.vector_index import (
    KINDS,
    IndexSpec,
    VectorIndex,
    ivfpq_layout,
    ivfpq_training_sample,
)

DIM = 32
TRAIN = 300  # ivfpq: at least 256 points for 8-bit PQ codebooks


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def spec_for(kind: str) -> IndexSpec:
    return IndexSpec(kind=kind, ivf_train_size=TRAIN, use_gpu=False)


def filled(kind: str, n: int = 120, first_id: int = 1000, seed: int = 0):
    index = VectorIndex(DIM, spec_for(kind))
    vectors = unit_vectors(n, seed=seed)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    index.add(vectors, ids)
    return index, vectors, ids


@pytest.mark.parametrize("kind", KINDS)
def test_add_and_search_finds_itself(kind):
    index, vectors, ids = filled(kind)
    assert len(index) == len(ids)
    assert sorted(index.ids().tolist()) == ids.tolist()
    scores, found = index.search(vectors, 5)
    assert scores.shape == found.shape == (len(ids), 5)
    assert found.dtype == np.int64
    assert np.array_equal(found[:, 0], ids)
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    exact = vectors @ vectors.T
    assert np.allclose(scores[:, 1], np.sort(exact, axis=1)[:, -2], atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_neighbours_have_id_minus_one(kind):
    index, vectors, ids = filled(kind, n=3)
    scores, found = index.search(vectors[:1], 5)
    assert found[0, 0] == ids[0]
    assert sorted(found[0, :3].tolist()) == ids.tolist()
    assert (found[0, 3:] == -1).all()


@pytest.mark.parametrize("kind", KINDS)
def test_ids_are_stable_across_remove(kind):
    index, vectors, ids = filled(kind, n=60)
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    assert len(index) == len(ids) - len(gone)
    kept = ~np.isin(ids, gone)
    assert sorted(index.ids().tolist()) == ids[kept].tolist()
    scores, found = index.search(vectors[kept], 1)
    assert np.array_equal(found[:, 0], ids[kept])
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)
    _, found = index.search(vectors[~kept], 10)
    assert not np.isin(found, gone).any()


@pytest.mark.parametrize("kind", KINDS)
def test_add_after_remove_keeps_old_ids(kind):
    index, vectors, ids = filled(kind, n=20)
    index.remove(ids[:5])
    more = unit_vectors(5, seed=9)
    index.add(more, np.arange(5000, 5005))
    _, found = index.search(np.concatenate([vectors[5:], more]), 1)
    assert found[:, 0].tolist() == ids[5:].tolist() + list(range(5000, 5005))


@pytest.mark.parametrize("kind", KINDS)
def test_remove_unknown_ids(kind):
    index, _, ids = filled(kind, n=10)
    assert index.remove(np.array([1, 2, 3])) == 0
    assert index.remove(np.array([], dtype=np.int64)) == 0
    assert len(index) == 10
    assert index.remove(np.array([ids[0], 77])) == 1
    assert len(index) == 9


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, kind):
    index, vectors, _ = filled(kind, n=50)
    index.remove(np.array([1003, 1010]))
    path = tmp_path / "index.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, spec_for(kind))
    assert loaded.dim == DIM
    assert loaded.trained_kind == index.trained_kind
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    queries = unit_vectors(10, seed=3)
    before, after = index.search(queries, 5), loaded.search(queries, 5)
    assert np.array_equal(before[1], after[1])
    assert np.allclose(before[0], after[0], atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name != "index.faiss"]


@pytest.mark.parametrize("kind", KINDS)
def test_empty_index(tmp_path, kind):
    index = VectorIndex(DIM, spec_for(kind))
    assert len(index) == 0
    assert index.ids().shape == (0,)
    assert index.trained_kind == ("flat" if kind == "ivfpq" else kind)
    with pytest.raises(KshotError, match="empty"):
        index.search(unit_vectors(1), 3)
    index.add(np.zeros((0, DIM), np.float32), np.zeros(0, np.int64))
    assert len(index) == 0
    path = tmp_path / "empty.faiss"
    index.save(path)
    assert len(VectorIndex.load(path, spec_for(kind))) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_search_after_removing_everything(kind):
    index, _, ids = filled(kind, n=5)
    index.remove(ids)
    with pytest.raises(KshotError, match="empty"):
        index.search(unit_vectors(1), 1)


def test_add_needs_one_id_per_vector():
    index = VectorIndex(DIM, spec_for("flat"))
    with pytest.raises(ValueError, match="one id per vector"):
        index.add(unit_vectors(3), np.arange(2))


def test_ivfpq_is_exact_until_trained_then_trains_once():
    index = VectorIndex(DIM, spec_for("ivfpq"))
    vectors = unit_vectors(TRAIN + 60, seed=1)
    ids = np.arange(10, 10 + len(vectors), dtype=np.int64)
    index.add(vectors[: TRAIN - 1], ids[: TRAIN - 1])
    assert index.trained_kind == "flat"
    scores, found = index.search(vectors[:20], 1)  # still exact
    assert np.array_equal(found[:, 0], ids[:20])
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)

    index.add(vectors[TRAIN - 1 : TRAIN], ids[TRAIN - 1 : TRAIN])  # reaches ivf_train_size
    assert index.trained_kind == "ivfpq"
    assert len(index) == TRAIN
    trained = index._index
    index.add(vectors[TRAIN:], ids[TRAIN:])
    assert index._index is trained  # not retrained
    assert sorted(index.ids().tolist()) == ids.tolist()

    # approximate from now on: the vectors it was trained on are still found first
    scores, found = index.search(vectors[:TRAIN], 1)
    assert (found[:, 0] == ids[:TRAIN]).mean() > 0.95
    assert abs(np.median(scores[:, 0]) - 1.0) < 0.1


def test_trained_ivfpq_reranks_its_candidates_by_exact_vectors():
    index, vectors, ids = filled("ivfpq", n=2000)
    queries = unit_vectors(40, seed=5)
    exact = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    _, coarse = index.search(queries, 10)
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    index.exact_vectors = lambda found: (found, np.stack([by_id[int(i)] for i in found]))
    scores, reranked = index.search(queries, 10)

    def recall(found):
        return np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])

    assert recall(reranked) > recall(coarse) + 0.2 and recall(reranked) > 0.8
    best = [by_id[int(i)] @ q for i, q in zip(reranked[:, 0], queries, strict=True)]
    assert np.allclose(scores[:, 0], best)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_trained_ivfpq_remove_and_reload(tmp_path):
    index, vectors, ids = filled("ivfpq", n=TRAIN + 20)
    assert index.trained_kind == "ivfpq"
    assert index.remove(ids[:100]) == 100
    assert index.remove(np.array([1, 2])) == 0
    assert sorted(index.ids().tolist()) == ids[100:].tolist()
    _, found = index.search(vectors[:100], 5)
    assert not np.isin(found, ids[:100]).any()
    path = tmp_path / "ivf.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, spec_for("ivfpq"))
    assert loaded.trained_kind == "ivfpq"
    assert sorted(loaded.ids().tolist()) == ids[100:].tolist()
    queries = vectors[100:150]
    assert np.array_equal(index.search(queries, 3)[1], loaded.search(queries, 3)[1])


def test_search_params_are_applied():
    import faiss

    hnsw = VectorIndex(DIM, IndexSpec(kind="hnsw", hnsw_ef_search=77, use_gpu=False))
    inner = faiss.downcast_index(hnsw._index.index)
    assert inner.hnsw.efSearch == 77
    ivf, _, _ = filled("ivfpq", n=TRAIN)
    assert ivf.trained_kind == "ivfpq"
    assert ivf._index.nprobe == IndexSpec().ivf_nprobe


@pytest.mark.parametrize(
    "content", [b"", b"this is not a FAISS index" * 10], ids=["empty", "garbage"]
)
def test_load_garbage(tmp_path, content):
    path = tmp_path / "index.faiss"
    path.write_bytes(content)
    with pytest.raises(KshotError) as caught:
        VectorIndex.load(path, spec_for("flat"))
    assert str(path) in str(caught.value)
    assert "not a readable FAISS index" in str(caught.value)


def test_load_missing(tmp_path):
    with pytest.raises(KshotError, match="not a readable FAISS index"):
        VectorIndex.load(tmp_path / "absent.faiss", spec_for("flat"))


def test_index_spec_rejects_unknown_kind():
    with pytest.raises(KshotError) as caught:
        IndexSpec(kind="annoy")
    assert "annoy" in str(caught.value)
    for kind in KINDS:
        assert kind in str(caught.value)


def test_index_spec_round_trip():
    spec = IndexSpec(kind="hnsw", hnsw_m=16, hnsw_ef_search=64, ivf_nprobe=4, use_gpu=False)
    assert IndexSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("dim", [8, 12, 32, 64, 100, 1280, 1536, 2048, 97])
@pytest.mark.parametrize("count", [300, 9984, 1_000_000, 10_000_000])
def test_ivfpq_layout(dim, count):
    lists, subquantizers = ivfpq_layout(dim, count)
    assert dim % subquantizers == 0
    assert dim // subquantizers >= 4 or subquantizers == 1
    # the largest such divisor: finest codes that still have 4+ dimensions per byte
    assert not [m for m in range(subquantizers + 1, dim // 4 + 1) if dim % m == 0]
    assert 1 <= lists <= max(1, count // 39)
    assert lists <= 4 * count**0.5
    assert lists <= vector_index.MAX_LISTS


def test_ivfpq_layout_examples():
    assert ivfpq_layout(64, 9984) == (256, 16)
    assert ivfpq_layout(1280, 1_000_000) == (4000, 320)
    assert ivfpq_layout(100, 300) == (7, 25)
    assert ivfpq_layout(128, 10_000_000) == (4096, 32)  # 4*sqrt(n) would be 12,649


def test_ivfpq_training_sample_is_capped_fixed_and_in_storage_order():
    rows = 100_000
    vectors = np.repeat(np.arange(rows, dtype=np.float32)[:, None], 4, axis=1)  # row i is i
    assert len(ivfpq_training_sample(vectors, 2000)) == rows  # under 64 x 2000: all of them
    sample = ivfpq_training_sample(vectors, 100)
    assert sample.shape == (vector_index.PQ_TRAIN_POINTS, 4)  # never fewer than PQ's 65,536
    assert sample.dtype == np.float32 and sample.flags["C_CONTIGUOUS"]
    drawn = sample[:, 0].astype(np.int64)
    assert (np.diff(drawn) > 0).all()  # distinct rows, in storage order
    assert np.array_equal(sample, vectors[drawn])
    assert np.array_equal(sample, ivfpq_training_sample(vectors, 100))  # a fixed seed
    assert not np.array_equal(sample, ivfpq_training_sample(vectors, 100, seed=1))
    more = ivfpq_training_sample(vectors, 1500)
    assert len(more) == vector_index.TRAIN_POINTS_PER_LIST * 1500


def test_ivfpq_trains_on_the_sample_and_holds_every_vector(monkeypatch):
    import faiss

    monkeypatch.setattr(vector_index, "TRAIN_POINTS_PER_LIST", 1)
    monkeypatch.setattr(vector_index, "PQ_TRAIN_POINTS", TRAIN)
    trained_on = []
    train = faiss.IndexIVFPQ.train

    def recording(self, x):
        trained_on.append(len(x))
        return train(self, x)

    monkeypatch.setattr(faiss.IndexIVFPQ, "train", recording)
    n = 2 * TRAIN
    index = VectorIndex(DIM, IndexSpec(kind="ivfpq", ivf_train_size=n, use_gpu=False))
    vectors = unit_vectors(n, seed=4)
    index.add(vectors, np.arange(n))
    assert index.trained_kind == "ivfpq"
    assert trained_on == [TRAIN]  # max(1 x lists, TRAIN) of the 600
    assert len(index) == n and sorted(index.ids().tolist()) == list(range(n))
    by_id = dict(enumerate(vectors))
    index.exact_vectors = lambda found: (found, np.stack([by_id[int(i)] for i in found]))
    _, found = index.search(vectors[:50], 1)
    assert (found[:, 0] == np.arange(50)).mean() > 0.9


def test_small_ivf_train_size_is_refused_or_works():
    try:
        spec = IndexSpec(kind="ivfpq", ivf_train_size=100, use_gpu=False)
    except KshotError:
        return  # refused up front: fine
    index = VectorIndex(DIM, spec)
    vectors = unit_vectors(100)
    index.add(vectors, np.arange(100))
    assert len(index) == 100
    assert index.search(vectors[:1], 1)[1][0, 0] == 0


def test_ivfpq_layout_small_dim():
    assert ivfpq_layout(4, 300)[1] == 1


TRAIN_AFTER_TORCH_UTILS = """
import numpy as np
import faiss.contrib.torch_utils  # what pytorch_metric_learning.utils imports
from kshot.index.vector_index import IndexSpec, VectorIndex

vectors = np.random.default_rng(0).normal(size=(300, 32)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
index = VectorIndex(32, IndexSpec(kind="ivfpq", ivf_train_size=300, use_gpu=False))
index.add(vectors, np.arange(300))
assert index.trained_kind == "ivfpq"
assert index.search(vectors[:5], 1)[1][:, 0].tolist() == [0, 1, 2, 3, 4]
index.remove(np.arange(10))
assert len(index) == 290
"""


def test_ivfpq_trains_after_faiss_torch_utils_is_imported():
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_AFTER_TORCH_UTILS], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("kind, n", [("flat", 120), ("hnsw", 120), ("ivfpq", 120), ("ivfpq", 900)])
def test_an_index_built_in_chunks_is_the_index_built_at_once(kind, n):
    at_once, vectors, ids = filled(kind, n=n)
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    asked: list[np.ndarray] = []

    def sample(wanted: np.ndarray) -> np.ndarray:
        asked.append(wanted)
        return np.stack([by_id[int(i)] for i in wanted])

    chunks = ((ids[s : s + 100], vectors[s : s + 100]) for s in range(0, n, 100))
    built = VectorIndex.built(DIM, spec_for(kind), ids, chunks, sample)
    assert built.trained_kind == at_once.trained_kind
    assert sorted(built.ids()) == ids.tolist()
    queries = unit_vectors(10, seed=1)
    for a, b in zip(built.search(queries, 5), at_once.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert bool(asked) == (kind == "ivfpq" and n >= TRAIN)  # only a trained index samples
