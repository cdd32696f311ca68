"""timm backbones (``timm:NAME``): preprocessing from ``pretrained_cfg``, pooled features, model
files, blocks, weights from a file or the Hugging Face cache, and the errors. Offline, on timm's
tiny ``test_*`` models with random weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from kshot.embedder.backbones import build_backbone, get_backbone
from kshot.embedder.checkpoint import load_checkpoint, save_checkpoint
from kshot.embedder.freezing import backbone_blocks, freeze_backbone
from kshot.embedder.inference import embed_files
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.timm_backbones import weights_cached
from kshot.errors import KshotError

VIT = "test_vit.r160_in1k"
TINY = [VIT, "test_resnet.r160_in1k", "test_efficientnet.r160_in1k", "test_convnext.r160_in1k"]


@pytest.fixture
def offline_hub(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache, and the hub switched off: a download fails at once."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _full_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """timm's model with its classifier: what a pretrained weights file holds."""
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


@pytest.mark.parametrize(
    "name",
    [
        "vit_small_patch14_dinov2.lvd142m",
        "convnext_small.fb_in22k",
        "resnetv2_50x1_bit.goog_in21k",
        "vit_base_patch16_clip_224.openai",
        "vit_base_patch16_siglip_224",
        VIT,
    ],
)
def test_preprocessing_follows_the_pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(name)
    config = get_backbone(f"timm:{name}").default_preprocess()
    assert config.input_size == cfg.input_size[-1]
    assert config.resize_size == math.floor(cfg.input_size[-1] / cfg.crop_pct)
    assert config.mean == pytest.approx(cfg.mean) and config.std == pytest.approx(cfg.std)
    assert config.interpolation == cfg.interpolation
    assert config.channels == 3


def test_dinov2_is_read_at_its_own_518_pixels_uncropped():
    config = get_backbone("timm:vit_small_patch14_dinov2.lvd142m").default_preprocess()
    assert (config.input_size, config.resize_size, config.interpolation) == (518, 518, "bicubic")


@pytest.mark.parametrize("name", TINY)
def test_builds_embeds_and_round_trips_through_a_model_file(
    name, tmp_path, offline_hub, make_image
):
    config = EmbedderConfig.for_backbone(f"timm:{name}")
    torch.manual_seed(0)
    embedder = build_embedder(config, pretrained=False).eval()
    assert embedder.embedding_dim == timm.create_model(name, num_classes=0).num_features
    paths = [make_image(tmp_path / f"{i}.png", size=(200, 180), seed=i) for i in range(3)]
    vectors = embed_files(embedder, paths).vectors
    assert vectors.shape == (3, embedder.embedding_dim)
    save_checkpoint(embedder, tmp_path / "model.kshot")
    loaded, _ = load_checkpoint(tmp_path / "model.kshot")  # no network: the hub is off
    assert loaded.config == embedder.config
    assert loaded.config.preprocess == get_backbone(f"timm:{name}").default_preprocess()
    assert embed_files(loaded, paths).vectors == pytest.approx(vectors, abs=1e-5)


def test_blocks_freeze_the_stem_with_the_first_blocks():
    embedder = build_embedder(EmbedderConfig.for_backbone(f"timm:{VIT}"), pretrained=False)
    blocks = backbone_blocks(embedder)
    vit = embedder.backbone
    assert len(blocks) == 1 + len(vit.blocks)  # the stem, then each transformer block
    freeze_backbone(embedder, 2)
    assert not vit.pos_embed.requires_grad and not vit.cls_token.requires_grad
    assert not vit.patch_embed.proj.weight.requires_grad
    assert [b.norm1.weight.requires_grad for b in vit.blocks] == [False] * 4 + [True] * 2
    assert vit.norm.weight.requires_grad  # the final norm trains with the last block
    freeze_backbone(embedder, None)
    assert all(p.requires_grad for p in embedder.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_with_a_classifier_loads(tmp_path, suffix):
    full = _full_model(VIT, seed=3)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(full.state_dict(), path)
    else:
        torch.save(full.state_dict(), path)
    config = get_backbone(f"timm:{VIT}").default_preprocess()
    model = build_backbone(f"timm:{VIT}", config, pretrained=True, weights_file=path).eval()
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = full.forward_head(full.eval().forward_features(images), pre_logits=True)
        assert torch.allclose(model(images), expected, atol=1e-5)


def _build_with(path: Path) -> None:
    config = get_backbone(f"timm:{VIT}").default_preprocess()
    build_backbone(f"timm:{VIT}", config, pretrained=True, weights_file=path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file(_full_model("test_resnet.r160_in1k").state_dict(), path)
    with pytest.raises(KshotError) as caught:
        _build_with(path)
    message = str(caught.value)
    assert str(path) in message and "another architecture" in message and "missing" in message


def test_weights_for_another_input_size_are_refused(tmp_path):
    path = tmp_path / "vit96.pth"
    torch.save(_full_model(VIT, img_size=96).state_dict(), path)
    with pytest.raises(KshotError) as caught:
        _build_with(path)
    assert str(path) in str(caught.value) and "another input size" in str(caught.value)


def test_damaged_safetensors_file_is_named(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(KshotError, match="not a safetensors weights file") as caught:
        _build_with(path)
    assert str(path) in str(caught.value)


def test_offline_without_cached_weights_names_the_file_and_the_cache(offline_hub):
    with pytest.raises(KshotError) as caught:
        build_embedder(EmbedderConfig.for_backbone(f"timm:{VIT}"), pretrained=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "model.safetensors" in message and str(offline_hub) in message
    assert f"models--timm--{VIT}" in message and "--weights" in message
    assert not weights_cached(f"timm:{VIT}")


def test_weights_in_the_hugging_face_cache_are_used_offline(offline_hub):
    full = _full_model(VIT, seed=5)
    snapshot = offline_hub / f"models--timm--{VIT}" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    save_file(full.state_dict(), snapshot / "model.safetensors")
    (offline_hub / f"models--timm--{VIT}" / "refs").mkdir()
    (offline_hub / f"models--timm--{VIT}" / "refs" / "main").write_text("a" * 40)
    assert weights_cached(f"timm:{VIT}")
    embedder = build_embedder(EmbedderConfig.for_backbone(f"timm:{VIT}"), pretrained=True)
    name = "blocks.0.attn.qkv.weight"
    assert torch.equal(embedder.backbone.state_dict()[name], full.state_dict()[name])


def test_unknown_name_suggests_the_closest():
    with pytest.raises(KshotError) as caught:
        get_backbone("timm:convnext_smal.fb_in22k")
    message = str(caught.value)
    assert "convnext_smal.fb_in22k" in message and "timm:convnext_small.fb_in22k" in message


def test_unknown_pretrained_tag_is_an_unknown_name():
    with pytest.raises(KshotError, match="timm has no model"):
        get_backbone("timm:vit_small_patch14_dinov2.nosuchtag")


def test_model_without_pooled_features_is_refused():
    """gemma4's ``_enc`` variant returns its 256 tokens, not one vector (checked on the meta
    device: no weights are made)."""
    spec = get_backbone("timm:gemma4_vit_167m_enc")
    with pytest.raises(KshotError, match="not one pooled vector"):
        spec.feature_dim(spec.default_preprocess())


def test_grey_preprocessing_is_refused():
    grey = get_backbone("conv4").default_preprocess()
    with pytest.raises(KshotError, match="3 channels"):
        build_backbone(f"timm:{VIT}", grey, pretrained=False)
