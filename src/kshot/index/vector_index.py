"""A FAISS-backed store of unit vectors under stable int64 ids, searched by inner product.

Kinds: ``flat`` (exact; the default), ``hnsw`` (graph; fast approximate search, no removal, so
removing rebuilds it) and ``ivfpq`` (inverted lists of product-quantised codes, for libraries too
big for memory as float32; exact until it holds ``ivf_train_size`` vectors, then trained on
them). On a machine with faiss-gpu and a GPU, searches run on a GPU copy of the index; the CPU
index stays the one saved, so an index saved on either machine loads on the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from kshot.atomic import atomic_path
from kshot.errors import KshotError
from kshot.index.gpu import to_gpu

KINDS = ("flat", "hnsw", "ivfpq")


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build and how to search it."""

    kind: str = "flat"
    hnsw_m: int = 32  # graph degree
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 16  # inverted lists visited per query
    # 39 x 256: FAISS's minimum of training points for 8-bit PQ codebooks.
    ivf_train_size: int = 9984
    use_gpu: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise KshotError(f"unknown index kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.ivf_train_size < 256:  # 8-bit PQ codebooks have 256 centroids
            raise KshotError("ivf_train_size must be at least 256")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexSpec:
        return cls(**data)


def ivfpq_layout(dim: int, count: int) -> tuple[int, int]:
    """(inverted lists, PQ sub-quantisers) for ``count`` training vectors of ``dim``.

    About 4*sqrt(n) lists with at least 39 training points each (FAISS's k-means minimum), and
    sub-quantisers of 8 dimensions or more (one byte each).
    """
    lists = max(1, min(int(4 * math.sqrt(count)), count // 39))
    subquantizers = max((m for m in range(1, dim // 8 + 1) if dim % m == 0), default=1)
    return lists, subquantizers


def _array(vectors) -> np.ndarray:
    """float32 numpy from FAISS's reconstruct calls, which return torch tensors once
    ``faiss.contrib.torch_utils`` is imported (pytorch-metric-learning imports it)."""
    return np.asarray(vectors, dtype=np.float32)


class VectorIndex:
    """Unit vectors ``(n, dim)`` float32 under int64 ids; inner-product (cosine) search."""

    def __init__(self, dim: int, spec: IndexSpec | None = None, index: faiss.Index | None = None):
        self.dim = dim
        self.spec = spec or IndexSpec()
        self._index = index if index is not None else self._empty()
        self._search_index: faiss.Index | None = None
        self._apply_search_params()

    def _empty(self) -> faiss.Index:
        if self.spec.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(self.dim, self.spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
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
        return self._index.ntotal

    def ids(self) -> np.ndarray:
        """All stored ids (int64), in storage order."""
        if isinstance(self._index, faiss.IndexIDMap2):
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
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
        lists, subquantizers = ivfpq_layout(self.dim, len(ids))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(
            quantizer, self.dim, lists, subquantizers, 8, faiss.METRIC_INNER_PRODUCT
        )
        index.own_fields = True
        quantizer.this.disown()
        index.train(vectors)
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
        # HNSW graphs cannot delete: rebuild from the vectors that stay.
        stored = self.ids()
        keep = stored[~np.isin(stored, ids)]
        vectors = (
            np.stack([_array(self._index.reconstruct(int(i))) for i in keep]) if len(keep) else None
        )
        self._index = self._empty()
        self._apply_search_params()
        if vectors is not None:
            self._index.add_with_ids(vectors, keep)
        return len(stored) - len(keep)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar stored vectors of each query: ``(scores, ids)``, each ``(m, k)``.

        Rows are sorted by decreasing inner product; missing neighbours have id -1.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0:
            raise KshotError("the index is empty")
        if self._search_index is None:
            gpu = to_gpu(self._index, self.spec.kind) if self.spec.use_gpu else None
            self._search_index = gpu if gpu is not None else self._index
        return self._search_index.search(queries, k)

    def save(self, path: Path) -> None:
        with atomic_path(Path(path)) as tmp:
            faiss.write_index(self._index, str(tmp))

    @classmethod
    def load(cls, path: Path, spec: IndexSpec) -> VectorIndex:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise KshotError(f"{path}: not a readable FAISS index ({reason})") from None
        return cls(index.d, spec, index)
