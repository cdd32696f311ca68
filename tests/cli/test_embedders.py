"""Which embedder a command builds (cli/embedders.py): a timm backbone by name, end to end, and
its refusals, which leave nothing behind."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

VIT = "timm:test_vit.r160_in1k"


@pytest.fixture
def vit_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit.r160_in1k").state_dict(), path)
    return path


@pytest.fixture
def offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


def test_timm_backbone_with_a_weights_file_builds_a_library(kshot, tmp_path, images, vit_weights):
    library = tmp_path / "lib"
    kshot("init", library, "--backbone", VIT, "--weights", vit_weights)
    assert json.loads((library / "manifest.json").read_text())["embedding_dim"] == 64
    for name, paths in images.items():
        kshot("enroll", library, "--label", name, *paths[:3])
    answers = kshot.json("query", library, images["bars"][3])
    assert answers[0]["image"].endswith("3.png") and len(answers[0]["top_k"]) == 3


@pytest.mark.parametrize(
    "backbone, expected",
    [
        ("timm:convnext_smal.fb_in22k", "timm:convnext_small.fb_in22k"),
        ("timm:gemma4_vit_167m_enc", "not one pooled vector"),
        (VIT, "model.safetensors"),
    ],
    ids=["unknown-name", "no-pooled-features", "no-weights-offline"],
)
def test_refused_timm_backbone_writes_nothing(kshot, tmp_path, offline, backbone, expected):
    library = tmp_path / "lib"
    output = kshot("init", library, "--backbone", backbone, code=1).output
    assert expected in output and output.count("\n") == 1
    assert not library.exists()


def test_wrong_weights_file_writes_nothing(kshot, tmp_path, vit_weights):
    torch.manual_seed(0)
    wrong = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet.r160_in1k").state_dict(), wrong)
    library = tmp_path / "lib"
    output = kshot("init", library, "--backbone", VIT, "--weights", wrong, code=1).output
    assert str(wrong) in output and "another architecture" in output
    assert not library.exists()
