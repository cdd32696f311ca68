"""Moving a FAISS index to the GPU for search, when faiss-gpu and a GPU are both present."""

from __future__ import annotations

import functools
import logging

import faiss

log = logging.getLogger("kshot")


def installed_faiss_builds() -> list[str]:
    """Which of the PyPI distributions faiss-cpu and faiss-gpu are installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("faiss-cpu", "faiss-gpu"):
        try:
            version(name)
            found.append(name)
        except PackageNotFoundError:
            pass
    return found


@functools.cache
def gpu_resources():
    """FAISS GPU resources, or ``None`` with this FAISS build or machine (faiss-cpu, no GPU)."""
    if len(installed_faiss_builds()) > 1:
        log.warning(
            "both faiss-cpu and faiss-gpu are installed and overwrite each other's module "
            "`faiss`: uninstall both, then install kshot[cpu] or kshot[gpu] alone"
        )
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
