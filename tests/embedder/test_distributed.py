"""Training on several processes: the context without torchrun, and two gloo processes on the
CPU training one epoch under ``torchrun``."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from kshot.embedder.checkpoint import load_checkpoint
from kshot.embedder.distributed import Distributed, start_from_env, stop
from tests.cli.conftest import PATTERNS, make_image
from tests.torchrun import TORCHRUN_VARIABLES, torchrun_kshot


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
    options = "--backbone conv4 --head-epochs 0 --image-size 32 --epochs 1 --batch-size 8"
    options += " --holdout-classes 0 --device cpu"
    done = torchrun_kshot(tmp_path, "train", data, "--out", model, *options.split())
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
