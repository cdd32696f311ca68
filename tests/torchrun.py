"""Running ``kshot`` under torchrun in the tests: two CPU processes over gloo, bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# What torchrun sets for its processes: left out of the environment a test starts it from.
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun_kshot(cwd: Path, *arguments) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m kshot ARGUMENTS``, on the CPU."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "kshot", *arguments]
    return subprocess.run(
        [str(part) for part in command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
