"""Training on several processes with DistributedDataParallel, as ``torchrun`` starts them.

``torchrun --nproc-per-node N -m kshot train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; each process then trains on its own class-balanced batches and DDP averages the
gradients, so N processes take N batches per step. nccl joins GPUs (one per process), gloo
joins CPU processes. Only the main process (rank 0) validates, writes files and prints.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from kshot.embedder.runtime import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share_from_main(self, value: Any) -> Any:
        """The main process's ``value``, in every process (e.g. validation results)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wait_for_all(self) -> None:
        """Return when every process has got here. A process that tears its gloo group down
        and exits while the main one still validates and writes could abort at exit
        ("terminate called without an active exception"); waiting first lets them all leave
        the group together."""
        if self.enabled:
            dist.barrier()


def start_from_env(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the process group ``torchrun`` describes in the environment, if any, and pick this
    process's device (under torchrun with CUDA: GPU ``LOCAL_RANK``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1:
        return Distributed(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size()), device


def stop(context: Distributed) -> None:
    """Leave the process group. The DistributedDataParallel wrappers of the training stages
    hold the group too, and an nn.Module with hooks sits in reference cycles that only the
    garbage collector frees: left to the interpreter's exit, gloo's threads are destroyed
    after Python's teardown began, and the process may abort ("terminate called without an
    active exception", seen once in four runs of two gloo processes). So collect first."""
    if context.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
