"""A FAISS-backed store of unit vectors under stable int64 ids, searched by inner product.

Kinds: ``flat`` (exact; the default), ``hnsw`` (graph; fast approximate search; FAISS graphs
cannot delete, so removed ids are kept as tombstones that searches skip, until
:meth:`VectorIndex.compacted` rebuilds the graph without them) and ``ivfpq`` (inverted lists
of product-quantised codes, for libraries too big for memory as float32; exact until it holds
``ivf_train_size`` vectors, then trained on them). On a machine with faiss-gpu and a GPU,
searches run on a GPU copy of the index; the CPU index stays the one saved, so an index saved on
either machine loads on the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from kshot.atomic import atomic_path
from kshot.errors import KshotError, os_error_reason
from kshot.index.gpu import to_gpu
from kshot.index.header import read_header, write_header
from kshot.index.spec import KINDS, IndexSpec

__all__ = [
    "KINDS",
    "IndexSpec",
    "VectorIndex",
    "ivfpq_layout",
    "ivfpq_training_rows",
    "ivfpq_training_sample",
    "trained_ivfpq",
]


# ivfpq candidates re-ranked exactly per neighbour asked for. 50, not 20: at 10^7 PlantVillage
# windows (PQ32, 4,096 lists, nprobe 64) recall@10 was 0.90 with 200 candidates, 0.97 with 500
# (benchmarks/scale.py --index-sizes; BENCHMARKS.md).
RERANK_FACTOR = 50
# Inverted lists at most: each one costs every added vector 2 * dim flops to be assigned, and
# k-means grows with lists times its sample (TRAIN_POINTS_PER_LIST a list). 4,096 lists at 10^7
# vectors: trained in 46 s, filled in 191 s on one shared core, queries in 3 ms (BENCHMARKS.md);
# 4*sqrt(n) would be 12,649 lists there: about 3x as long to fill, 9x to train (not measured).
MAX_LISTS = 4096
# k-means trains on at most this many points per list (FAISS asks 39 to 256), drawn with a fixed
# seed; never fewer than PQ_TRAIN_POINTS, FAISS's sample for 8-bit PQ codebooks (256 x 256).
TRAIN_POINTS_PER_LIST = 64
PQ_TRAIN_POINTS = 256 * 256
# Dimensions per one-byte PQ sub-quantiser, at least. 4, not 8: at 10^7 vectors 8 (PQ16 for 128
# dimensions) ranked so coarsely that recall@10 stayed at 0.85 with 1,000 candidates re-ranked,
# where 4 (PQ32) gives 0.98 (BENCHMARKS.md).
PQ_MIN_DIMS = 4


def ivfpq_layout(dim: int, count: int) -> tuple[int, int]:
    """(inverted lists, PQ sub-quantisers) for ``count`` training vectors of ``dim``.

    About 4*sqrt(n) lists, at most ``MAX_LISTS``, with at least 39 training points each (FAISS's
    k-means minimum), and as many sub-quantisers as divide ``dim`` into ``PQ_MIN_DIMS``
    dimensions or more (one byte each).
    """
    lists = max(1, min(int(4 * math.sqrt(count)), count // 39, MAX_LISTS))
    fits = [m for m in range(1, dim // PQ_MIN_DIMS + 1) if dim % m == 0]
    return lists, max(fits, default=1)


def ivfpq_training_rows(count: int, lists: int, seed: int = 0) -> np.ndarray | None:
    """Sorted positions of the vectors an IVF-PQ index of ``lists`` lists trains on, out of
    ``count``: ``None`` (all of them) up to ``max(TRAIN_POINTS_PER_LIST * lists,
    PQ_TRAIN_POINTS)``, else that many drawn with ``seed``."""
    cap = max(TRAIN_POINTS_PER_LIST * lists, PQ_TRAIN_POINTS)
    if count <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, cap, replace=False))


def ivfpq_training_sample(vectors: np.ndarray, lists: int, seed: int = 0) -> np.ndarray:
    """The vectors an IVF-PQ index of ``lists`` lists trains on (:func:`ivfpq_training_rows`;
    ``vectors`` may be a memory map: only the drawn rows are read)."""
    rows = ivfpq_training_rows(len(vectors), lists, seed)
    chosen = vectors if rows is None else vectors[rows]
    return np.ascontiguousarray(chosen, dtype=np.float32)


def trained_ivfpq(
    dim: int, vectors: np.ndarray, count: int | None = None, sampled: bool = False
) -> faiss.IndexIVFPQ:
    """An empty IVF-PQ index (inner product) laid out for ``count`` vectors (default:
    ``len(vectors)``) and trained on a sample of ``vectors`` (:func:`ivfpq_training_sample`),
    or on ``vectors`` as they are when they already are that sample (``sampled``)."""
    lists, subquantizers = ivfpq_layout(dim, len(vectors) if count is None else count)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, lists, subquantizers, 8, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.train(vectors if sampled else ivfpq_training_sample(vectors, lists))
    return index


def _array(vectors) -> np.ndarray:
    """float32 numpy from FAISS's reconstruct calls, which return torch tensors once
    ``faiss.contrib.torch_utils`` is imported (pytorch-metric-learning imports it)."""
    return np.asarray(vectors, dtype=np.float32)


class VectorIndex:
    """Unit vectors ``(n, dim)`` float32 under int64 ids; inner-product (cosine) search."""

    def __init__(
        self,
        dim: int,
        spec: IndexSpec | None = None,
        index: faiss.Index | None = None,
        removed: np.ndarray | None = None,
        header: dict | None = None,
    ):
        self.dim = dim
        self.spec = spec or IndexSpec()
        self._index = index if index is not None else self._empty()
        self._search_index: faiss.Index | None = None
        # Ids removed from an HNSW graph, which cannot delete: searches skip them.
        self._removed = np.unique(np.asarray(removed if removed is not None else [], np.int64))
        # What the file it was loaded from said it reflects (see save's ``header``).
        self.header = header or {}
        # ``ids -> (ids found, their exact vectors)``: given, a trained ivfpq index re-ranks its
        # candidates by them (the library reads them from the catalogue, on disk).
        self.exact_vectors: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
        self._apply_search_params()

    @classmethod
    def built(
        cls,
        dim: int,
        spec: IndexSpec,
        ids: np.ndarray,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        sample: Callable[[np.ndarray], np.ndarray],
    ) -> VectorIndex:
        """The index of the vectors stored under ``ids (n,)`` (ascending), added as ``chunks``
        yields them, ``(ids, vectors)`` in that order: never all in memory at once beyond what
        the index holds (at 10^7 a library's rows read at once took more than the machine had).
        An ivfpq index of ``ivf_train_size`` vectors or more is trained first, on the sample
        :func:`ivfpq_training_rows` picks, its vectors read by ``sample(ids) -> (m, dim)``."""
        index = cls(dim, spec)
        if spec.kind == "ivfpq" and len(ids) >= spec.ivf_train_size:
            rows = ivfpq_training_rows(len(ids), ivfpq_layout(dim, len(ids))[0])
            trained = sample(ids if rows is None else ids[rows])
            index._index = trained_ivfpq(dim, trained, count=len(ids), sampled=True)
            index._apply_search_params()
        for part_ids, vectors in chunks:
            index.add(vectors, part_ids)
        return index

    def _empty(self) -> faiss.Index:
        if self.spec.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(self.dim, self.spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.spec.hnsw_ef_construction
            return faiss.IndexIDMap2(graph)
        # flat, and ivfpq until it has enough vectors to train on
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    @property
    def trained_kind(self) -> str:
        """The kind of index now in use: an ivfpq spec gives 'flat' until it is trained."""
        if isinstance(self._index, faiss.IndexIVF):
            return "ivfpq"
        return "flat" if self.spec.kind == "ivfpq" else self.spec.kind

    def _apply_search_params(self) -> None:
        inner = faiss.downcast_index(getattr(self._index, "index", self._index))
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = self.spec.hnsw_ef_search
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = self.spec.ivf_nprobe

    def __len__(self) -> int:
        return self._index.ntotal - len(self._removed)

    def ids(self) -> np.ndarray:
        """All stored ids (int64), in storage order."""
        if isinstance(self._index, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            return ids[~np.isin(ids, self._removed)] if len(self._removed) else ids
        invlists = self._index.invlists
        return np.concatenate(
            [np.zeros(0, dtype=np.int64)]
            + [
                faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                for i in range(invlists.nlist)
            ]
        )

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(vectors) != len(ids):
            raise ValueError("one id per vector")
        if len(ids) == 0:
            return
        self._index.add_with_ids(vectors, ids)
        self._search_index = None
        untrained = self.spec.kind == "ivfpq" and self.trained_kind == "flat"
        if untrained and len(self) >= self.spec.ivf_train_size:
            self._train_ivfpq()

    def _train_ivfpq(self) -> None:
        """Replace the exact index by an IVF-PQ index trained on, and holding, its vectors."""
        ids = self.ids()
        vectors = _array(self._index.index.reconstruct_n(0, len(ids)))
        index = trained_ivfpq(self.dim, vectors)
        index.add_with_ids(vectors, ids)
        self._index = index
        self._apply_search_params()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        self._search_index = None
        if self.trained_kind != "hnsw":
            return self._index.remove_ids(faiss.IDSelectorBatch(ids))
        gone = np.intersect1d(self.ids(), ids)
        self._removed = np.union1d(self._removed, gone)
        return len(gone)

    @property
    def tombstones(self) -> int:
        """How many removed ids an HNSW graph still holds (skipped by searches)."""
        return len(self._removed)

    def compacted(self) -> VectorIndex:
        """This index without tombstones: an HNSW graph rebuilt from the vectors that stay,
        read back in one call; any other index as it is."""
        if not len(self._removed):
            return self
        stored = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = _array(self._index.index.reconstruct_n(0, len(stored)))
        keep = ~np.isin(stored, self._removed)
        fresh = VectorIndex(self.dim, self.spec)
        fresh.add(vectors[keep], stored[keep])
        return fresh

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar stored vectors of each query: ``(scores, ids)``, each ``(m, k)``.

        Rows are sorted by decreasing inner product; missing neighbours have id -1.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0:
            raise KshotError("the index is empty")
        if len(self._removed):
            return self._search_skipping_tombstones(queries, k)
        if self._search_index is None:
            gpu = to_gpu(self._index, self.spec.kind) if self.spec.use_gpu else None
            self._search_index = gpu if gpu is not None else self._index
        if self.exact_vectors is not None and self.trained_kind == "ivfpq":
            return self._reranked(queries, k)
        return self._search_index.search(queries, k)

    def _reranked(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Product-quantised codes rank coarsely (recall@10 0.3-0.6 on PlantVillage embeddings,
        BENCHMARKS.md): take ``RERANK_FACTOR * k`` candidates, rank them by exact vectors."""
        _, candidates = self._search_index.search(queries, k * RERANK_FACTOR)
        scores = np.full((len(queries), k), -np.finfo(np.float32).max, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for row, (query, found) in enumerate(zip(queries, candidates, strict=True)):
            found, vectors = self.exact_vectors(found[found >= 0])
            exact = vectors @ query
            order = np.argsort(-exact, kind="stable")[:k]
            scores[row, : len(order)] = exact[order]
            ids[row, : len(order)] = found[order]
        return scores, ids

    def _search_skipping_tombstones(self, queries: np.ndarray, k: int):
        removed = faiss.IDSelectorBatch(self._removed)
        kept = faiss.IDSelectorNot(removed)
        params = faiss.SearchParametersHNSW(sel=kept, efSearch=self.spec.hnsw_ef_search)
        # The plain numpy search: faiss.contrib.torch_utils (imported by pytorch-metric-learning)
        # replaces ``search`` with one that takes no search parameters.
        search = getattr(self._index, "search_numpy", self._index.search)
        return search(queries, k, params=params)

    def save(self, path: Path, header: dict | None = None) -> None:
        """Write the index to ``path`` atomically, after a small JSON ``header`` (what it
        reflects: the catalogue stamp) and the HNSW tombstones, in one file."""
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
            write_header(handle, dict(header or {}, removed=self._removed.tolist()))
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(handle.write))

    @classmethod
    def load(cls, path: Path, spec: IndexSpec) -> VectorIndex:
        """The index saved at ``path`` (also a bare FAISS file, as libraries held before the
        header existed: its ``header`` is then empty)."""
        try:
            with open(path, "rb") as handle:
                head = read_header(handle) or {}
                index = faiss.read_index(faiss.PyCallbackIOReader(handle.read))
        except OSError as exc:
            raise KshotError(
                f"{path}: not a readable FAISS index ({os_error_reason(exc)})"
            ) from None
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise KshotError(f"{path}: not a readable FAISS index ({reason})") from None
        removed = np.asarray(head.pop("removed", []), np.int64)
        return cls(index.d, spec, index, removed, head)
