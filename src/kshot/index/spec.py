"""Which FAISS index a library uses and how it is searched: read without importing FAISS, so that
commands that only read a library's manifest start fast."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kshot.errors import KshotError

KINDS = ("flat", "hnsw", "ivfpq")


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build and how to search it."""

    kind: str = "flat"
    hnsw_m: int = 32  # graph degree
    # 512 and 200, not 128 and FAISS's 40: on 370,000 PlantVillage embeddings recall@10 went from
    # 0.71 to 1.00 for 0.7 ms more per query and 0.3 ms more per enrollment, the graph taking
    # 7.5x as long to build in one go (BENCHMARKS.md, "A library at scale").
    hnsw_ef_search: int = 512
    hnsw_ef_construction: int = 200  # candidates kept while linking a new vector into the graph
    # Inverted lists visited per query. 64, not 16: at 10^7 PlantVillage windows (4,096 lists) 32
    # lists found recall@10 0.93-0.95, 64 found 0.97-0.98 in 3-4 ms (BENCHMARKS.md).
    ivf_nprobe: int = 64
    # 39 x 256: FAISS's minimum of training points for 8-bit PQ codebooks.
    ivf_train_size: int = 9984
    use_gpu: bool = True
    # A flat index is rebuilt as an HNSW graph, with a notice, once an enrollment takes the
    # library to this many images: there exact search reaches milliseconds a query, the graph's
    # one-off build minutes (BENCHMARKS.md, "A library at scale"). 0: it stays flat (a flat index
    # chosen explicitly at ``kshot init``).
    graph_from: int = 200_000

    def __post_init__(self):
        if self.kind not in KINDS:
            raise KshotError(f"unknown index kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.graph_from < 0:
            raise KshotError("graph_from must be 0 (never) or a number of images")
        if self.ivf_train_size < 256:  # 8-bit PQ codebooks have 256 centroids
            raise KshotError("ivf_train_size must be at least 256")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexSpec:
        return cls(**data)
