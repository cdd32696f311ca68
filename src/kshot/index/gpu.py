"""Moving a FAISS index to the GPU for search, when faiss-gpu and a GPU are both present."""

from __future__ import annotations

import functools
import logging

import faiss

log = logging.getLogger("kshot")


@functools.cache
def gpu_resources():
    """FAISS GPU resources, or ``None`` with this FAISS build or machine (faiss-cpu, no GPU)."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return None
    return faiss.StandardGpuResources()


def to_gpu(index: faiss.Index, what: str) -> faiss.Index | None:
    """A GPU copy of ``index`` for search, or ``None`` (with a one-line notice) if it cannot be."""
    resources = gpu_resources()
    if resources is None:
        return None
    try:
        return faiss.index_cpu_to_gpu(resources, 0, index)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        log.warning(
            "searching the %s index on the CPU: FAISS cannot move it to the GPU (%s)", what, reason
        )
        return None
