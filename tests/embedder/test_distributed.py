"""Training on several processes: the context without torchrun, and two gloo processes on the
CPU training one epoch under ``torchrun``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from kshot.embedder.checkpoint import load_checkpoint
from kshot.embedder.distributed import Distributed, start_from_env, stop
from tests.cli.conftest import PATTERNS, make_image

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_without_torchrun_the_context_is_one_process(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    world, device = start_from_env("cpu")
    assert world == Distributed() and (world.rank, world.world_size) == (0, 1)
    assert not world.enabled and world.is_main
    assert device == torch.device("cpu")
    stop(world)  # nothing to stop
    assert not (dist.is_available() and dist.is_initialized())


def test_a_world_of_one_is_not_distributed(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    world, _ = start_from_env("cpu")
    assert not world.enabled
    assert not (dist.is_available() and dist.is_initialized())


def test_share_from_main_without_a_group_returns_the_value():
    value = {"precision_at_1": 0.5}
    assert Distributed().share_from_main(value) is value
    assert Distributed().share_from_main(None) is None


def test_rank_and_world_size_decide_the_roles():
    assert Distributed(0, 2).enabled and Distributed(0, 2).is_main
    assert Distributed(1, 2).enabled and not Distributed(1, 2).is_main


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_train_an_epoch(tmp_path):
    data = tmp_path / "data"
    for name in PATTERNS:
        for i in range(6):
            make_image(data / name / f"{i}.png", name, i)
    model = tmp_path / "model.kshot"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "kshot", "train", data, "--out", model]
    command += ["--backbone", "conv4", "--head-epochs", "0", "--image-size", "32", "--epochs", "1"]
    command += ["--batch-size", "8", "--holdout-classes", "0", "--device", "cpu"]
    done = subprocess.run(
        [str(part) for part in command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Only the main process prints, validates and writes.
    assert output.count("epoch 1/1 (train)") == 1, output
    assert output.count("training conv4 on 15 images of 3 classes") == 1, output
    assert output.count(f"wrote {model}") == 1, output
    assert model.exists() and not (tmp_path / "model.kshot.state").exists()
    embedder, info = load_checkpoint(model)
    assert info["classes"] == sorted(PATTERNS)
    assert [h["epoch"] for h in info["history"]] == [1]
    assert "precision_at_1" in info["scores_after"]
    assert embedder.config.preprocess.input_size == 32
