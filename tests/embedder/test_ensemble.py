import dataclasses

import pytest
import torch
import torch.nn.functional as F

from kshot.embedder.backbones import BACKBONES, get_backbone
from kshot.embedder.checkpoint import load_checkpoint, model_hash, save_checkpoint
from kshot.embedder.ensemble import BackboneEnsemble
from kshot.embedder.freezing import freeze_backbone
from kshot.embedder.mobilenet_v2_weights import packaged_file
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from kshot.errors import KshotError


def ensemble(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_embedder(EmbedderConfig.for_backbone(name), pretrained=False).eval()


@pytest.fixture
def conv4_40(monkeypatch):
    """A registered conv4 that takes 40-pixel crops (mean 0.3, std 0.2): another input size."""
    config = PreprocessConfig(40, 40, (0.3,), (0.2,), channels=1)
    conv4 = BACKBONES["conv4"]
    spec = dataclasses.replace(conv4, name="conv4_40", default_preprocess=lambda: config)
    monkeypatch.setitem(BACKBONES, "conv4_40", spec)
    return config


def test_spec_is_composed_from_the_members():
    spec = get_backbone("efficientnet_lite0+mobilenet_v2")
    config = spec.default_preprocess()
    lite0 = get_backbone("efficientnet_lite0").default_preprocess()
    assert (config.input_size, config.resize_size) == (lite0.input_size, lite0.resize_size)
    assert config.mean == (0.0, 0.0, 0.0) and config.std == (1.0, 1.0, 1.0)
    assert spec.feature_dim(config) == 1280 + 1280
    assert get_backbone("conv4+conv4").pretrained is None


def test_embedding_is_the_normalised_concatenation_of_unit_member_features():
    embedder = ensemble("conv4+conv4")
    assert isinstance(embedder.backbone, BackboneEnsemble)
    assert embedder.feature_dim == embedder.embedding_dim == 128
    pixels = torch.rand(3, 1, 28, 28)
    conv4_mean = torch.tensor(get_backbone("conv4").default_preprocess().mean)
    normalized = (pixels - conv4_mean) / 0.5
    with torch.inference_mode():
        members = [F.normalize(m.net(normalized), dim=1) for m in embedder.backbone.members]
        expected = F.normalize(torch.cat(members, dim=1), dim=1)
        assert torch.allclose(embedder(pixels), expected, atol=1e-6)
        # the two members have their own weights: their features differ
        assert not torch.allclose(members[0], members[1])


def test_member_with_another_input_size_gets_the_crop_resized(conv4_40):
    embedder = ensemble("conv4+conv4_40")
    assert embedder.config.preprocess.input_size == 28
    assert embedder.feature_dim == 64 + 64 * (40 // 16) ** 2
    pixels = torch.rand(2, 1, 28, 28)
    with torch.inference_mode():
        small, large = embedder.backbone.members
        resized = F.interpolate(pixels, size=(40, 40), mode="bilinear", antialias=True)
        expected = F.normalize(
            torch.cat(
                [
                    F.normalize(small.net((pixels - 0.5) / 0.5), dim=1),
                    F.normalize(large.net((resized - 0.3) / 0.2), dim=1),
                ],
                dim=1,
            ),
            dim=1,
        )
        assert torch.allclose(embedder(pixels), expected, atol=1e-6)


def test_model_file_round_trip_keeps_config_and_hash(tmp_path, conv4_40):
    embedder = ensemble("conv4+conv4_40", seed=3)
    path = tmp_path / "ensemble.kshot"
    saved_hash = save_checkpoint(embedder, path, {"source": "test"})
    loaded, info = load_checkpoint(path)
    assert loaded.config == embedder.config
    assert loaded.config.preprocess == embedder.config.preprocess
    assert info == {"source": "test"}
    assert model_hash(loaded) == saved_hash == model_hash(embedder)
    buffers = loaded.backbone.members[1]
    assert buffers.mean.flatten().tolist() == pytest.approx([0.3])
    pixels = torch.rand(2, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(loaded(pixels), embedder(pixels))
    members = [ensemble("conv4", seed=3), ensemble("conv4_40", seed=3)]
    assert saved_hash not in {model_hash(member) for member in members}
    assert model_hash(ensemble("conv4+conv4_40", seed=4)) != saved_hash


def test_unknown_member_lists_known_backbones():
    with pytest.raises(KshotError) as caught:
        get_backbone("efficientnet_lite0+vgg99")
    message = str(caught.value)
    assert "'vgg99'" in message and "efficientnet_lite0+vgg99" in message
    assert all(name in message for name in BACKBONES)


def test_members_must_agree_on_channels():
    with pytest.raises(KshotError, match="conv4.*efficientnet_lite0|efficientnet_lite0.*conv4"):
        get_backbone("efficientnet_lite0+conv4")


def test_other_normalisation_is_refused():
    config = EmbedderConfig.for_backbone("conv4+conv4")
    imagenet = dataclasses.replace(config.preprocess, mean=(0.45,), std=(0.22,))
    with pytest.raises(KshotError, match="normalization"):
        build_embedder(dataclasses.replace(config, preprocess=imagenet), pretrained=False)


def test_no_pretrained_weights_for_a_member_without_them():
    with pytest.raises(KshotError, match="no pretrained weights"):
        build_embedder(EmbedderConfig.for_backbone("conv4+conv4"), pretrained=True)


def test_blocks_interleave_members_by_depth():
    embedder = ensemble("conv4+conv4")
    assert len(get_backbone("conv4+conv4").blocks(embedder.backbone)) == 8
    frozen = freeze_backbone(embedder, 2)
    assert len(frozen) == 6
    trainable = {name for name, p in embedder.backbone.named_parameters() if p.requires_grad}
    last_block = [f"{i}.{kind}" for i in (12, 13) for kind in ("weight", "bias")]
    assert trainable == {f"members.{m}.net.{name}" for m in (0, 1) for name in last_block}


@pytest.mark.skipif(packaged_file() is None, reason="no offline MobileNetV2 weights installed")
def test_pretrained_ensemble_loads_each_members_weights():
    embedder = build_embedder(EmbedderConfig.for_backbone("efficientnet_lite0+mobilenet_v2"))
    lite0, mobilenet = (m.net for m in embedder.backbone.members)
    lite0_weights = get_backbone("efficientnet_lite0").pretrained()
    assert torch.equal(lite0._conv_stem.weight, lite0_weights["_conv_stem.weight"])
    mobilenet_weights = get_backbone("mobilenet_v2").pretrained()
    assert torch.equal(mobilenet.features[0][0].weight, mobilenet_weights["features.0.0.weight"])
    assert embedder.backbone.members[0].mean.flatten().tolist() == pytest.approx([127 / 255] * 3)
    assert embedder.backbone.members[1].mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert embedder.backbone.members[1].std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    with torch.inference_mode():
        vectors = embedder.eval()(torch.rand(1, 3, 224, 224))
    assert vectors.shape == (1, 2560) and torch.isfinite(vectors).all()
