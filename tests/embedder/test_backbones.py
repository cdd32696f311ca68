import urllib.error

import pytest
import torch
from torch import nn

from kshot.embedder import backbones, mobilenet_v2_weights
from kshot.embedder.backbone_info import meta_backbone
from kshot.embedder.backbones import (
    BACKBONES,
    LITE_MEAN,
    LITE_STD,
    build_backbone,
    get_backbone,
)
from kshot.embedder.conv4 import conv4, conv4_feature_dim
from kshot.embedder.preprocess import PreprocessConfig
from kshot.errors import KshotError

TORCHVISION = [n for n in BACKBONES if n != "conv4" and not n.startswith("efficientnet_lite0")]


SEEDS = {
    # ConvNeXt-Small, EfficientNet-B3, Inception-V3, MNASNet1.3, MobileNetV2, MobileNetV3-Large,
    # RegNetX-1.6GF, ResNet101, ResNeXt50; ResNet50, DenseNet, AlexNet, ResNeXt101,
    # EfficientNet-B7 and V2, ConvNeXt Base and Large.
    "convnext_small",
    "efficientnet_b3",
    "inception_v3",
    "mnasnet1_3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "regnet_x_1_6gf",
    "resnet101",
    "resnext50_32x4d",
    "resnet50",
    "densenet121",
    "densenet201",
    "alexnet",
    "resnext101_32x8d",
    "efficientnet_b7",
    "efficientnet_v2_s",
    "convnext_base",
    "convnext_large",
}
# Built and run for real (random weights) on small inputs: one of each family, the largest left
# to the meta-device test below (building convnext_large's 200M weights alone takes seconds).
RUN = [
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "resnet50",
    "convnext_small",
    "inception_v3",
    "mnasnet1_3",
    "regnet_x_1_6gf",
    "densenet121",
    "alexnet",
    "efficientnet_v2_s",
]
SMALLEST_INPUT = {"inception_v3": 75, "alexnet": 63}


def test_registry_holds_the_seed_backbones():
    multilevel = {
        f"{base}_{kind}"
        for base in ("efficientnet_lite0", "mobilenet_v2")
        for kind in ("multilevel", "bilinear")
    }
    assert set(BACKBONES) == SEEDS | multilevel | {"efficientnet_lite0", "efficientnet_b0", "conv4"}
    assert all(spec.name == name for name, spec in BACKBONES.items())


def test_unknown_backbone_lists_known_names():
    with pytest.raises(KshotError) as caught:
        get_backbone("vgg_nonexistent")
    message = str(caught.value)
    assert "vgg_nonexistent" in message and "timm:NAME" in message
    for name in BACKBONES:
        assert name in message


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_backbone_pooled_features_on_the_meta_device(name):
    """Every registered backbone at its own input size: shapes only, no arithmetic."""
    spec = get_backbone(name)
    config = spec.default_preprocess()  # read from the weights' metadata: no download
    assert config.channels == 3
    assert config.resize_size >= config.input_size >= 200
    assert len(config.mean) == 3 and len(config.std) == 3
    model = meta_backbone(name, config)
    with torch.no_grad():
        features = model(torch.zeros(2, 3, config.input_size, config.input_size, device="meta"))
    assert features.shape == (2, spec.feature_dim(config))


@pytest.mark.parametrize("name", RUN)
def test_torchvision_backbone_returns_pooled_features(name):
    spec = get_backbone(name)
    config = spec.default_preprocess()
    torch.manual_seed(0)
    model = build_backbone(name, config, pretrained=False).eval()
    side = SMALLEST_INPUT.get(name, 64)
    with torch.inference_mode():
        features = model(torch.randn(1, 3, side, side))
    assert features.shape == (1, spec.feature_dim(config))
    assert torch.isfinite(features).all()


def test_inception_strips_both_classifiers_and_trains_to_one_output():
    config = get_backbone("inception_v3").default_preprocess()
    model = build_backbone("inception_v3", config, pretrained=False)
    assert model.AuxLogits is None and isinstance(model.fc, nn.Identity)
    out = model.train()(torch.randn(2, 3, 75, 75))  # no (logits, aux) pair in training
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2048)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_backbone_refuses_grey_preprocessing(name):
    grey = PreprocessConfig(224, 256, (0.5,), (0.5,), channels=1)
    with pytest.raises(KshotError, match="3 channels"):
        build_backbone(name, grey, pretrained=False)


@pytest.mark.parametrize("size", [28, 84])
@pytest.mark.parametrize("channels", [1, 3])
def test_conv4_feature_dim_matches_output(size, channels):
    mean = (0.5,) * channels
    config = PreprocessConfig(size, size, mean, mean, channels=channels)
    spec = get_backbone("conv4")
    model = build_backbone("conv4", config, pretrained=False).eval()
    with torch.inference_mode():
        features = model(torch.randn(2, channels, size, size))
    assert features.shape == (2, spec.feature_dim(config))
    assert spec.feature_dim(config) == 64 * (size // 16) ** 2


@pytest.mark.parametrize("size", [16, 31, 32, 47, 100])
def test_conv4_feature_dim_formula(size):
    with torch.inference_mode():
        out = conv4(1).eval()(torch.zeros(1, 1, size, size))
    assert out.shape[1] == conv4_feature_dim(64, size)


def test_conv4_refuses_too_small_inputs():
    with pytest.raises(ValueError, match="16"):
        conv4_feature_dim(64, 15)


def test_conv4_defaults_and_no_pretrained_weights():
    config = get_backbone("conv4").default_preprocess()
    assert (config.input_size, config.resize_size, config.channels) == (28, 28, 1)
    with pytest.raises(KshotError, match="no pretrained weights"):
        build_backbone("conv4", config, pretrained=True)


def test_efficientnet_lite0_default_preprocessing():
    config = get_backbone("efficientnet_lite0").default_preprocess()
    assert (config.input_size, config.resize_size, config.channels) == (224, 256, 3)
    assert config.mean == pytest.approx((127 / 255,) * 3)
    assert config.std == pytest.approx((128 / 255,) * 3)
    assert config.mean == LITE_MEAN and config.std == LITE_STD


def test_efficientnet_lite0_pretrained_weights_load():
    spec = get_backbone("efficientnet_lite0")
    config = spec.default_preprocess()
    torch.manual_seed(0)
    random = build_backbone("efficientnet_lite0", config, pretrained=False)
    pretrained = build_backbone("efficientnet_lite0", config, pretrained=True).eval()
    weights = spec.pretrained()
    name = "_conv_stem.weight"
    assert torch.equal(pretrained.state_dict()[name], weights[name])
    assert not torch.equal(random.state_dict()[name], weights[name])
    assert isinstance(pretrained._fc, nn.Identity)  # classifier stripped
    with torch.inference_mode():
        features = pretrained(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, spec.feature_dim(config))


def _mobilenet_config() -> PreprocessConfig:
    return get_backbone("mobilenet_v2").default_preprocess()


def test_weights_file_that_fits_is_used(tmp_path):
    torch.manual_seed(1)
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet.pth"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(2)
    model = build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=True, weights_file=path)
    name = "features.0.0.weight"
    assert torch.equal(model.state_dict()[name], reference.state_dict()[name])
    assert isinstance(model.classifier[1], nn.Identity)


def test_weights_file_under_a_state_dict_key(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(3)
    reference = mobilenet_v2(weights=None)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)
    model = build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=False, weights_file=path)
    name = "features.1.conv.0.0.weight"
    assert torch.equal(model.state_dict()[name], reference.state_dict()[name])


def test_weights_file_that_does_not_fit(tmp_path):
    path = tmp_path / "conv4_weights.pth"
    torch.save(conv4(3).state_dict(), path)
    with pytest.raises(KshotError) as caught:
        build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=False, weights_file=path)
    assert str(path) in str(caught.value)
    assert "does not fit mobilenet_v2" in str(caught.value)


def test_weights_file_with_wrong_shapes(tmp_path):
    from torchvision.models import mobilenet_v2

    path = tmp_path / "narrow.pth"
    torch.save(mobilenet_v2(weights=None, width_mult=0.5).state_dict(), path)
    with pytest.raises(KshotError, match="does not fit"):
        build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=False, weights_file=path)


@pytest.mark.parametrize("classes", [1001, None], ids=["other-classifier", "no-classifier"])
def test_weights_file_classifier_is_not_needed(tmp_path, classes):
    # kshot strips the classifier: one of another size, or none at all, loads all the same.
    from torchvision.models import mobilenet_v2

    torch.manual_seed(5)
    state = mobilenet_v2(weights=None, num_classes=classes or 1000).state_dict()
    if classes is None:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    model = build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=False, weights_file=path)
    name = "features.18.0.weight"
    assert torch.equal(model.state_dict()[name], state[name])


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage bytes, not a torch file", None],
    ids=["empty", "garbage", "not-tensors"],
)
def test_weights_file_unreadable(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content is None:
        torch.save({"a": 1, "b": "text"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(KshotError) as caught:
        build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=False, weights_file=path)
    assert str(path) in str(caught.value)


def test_weights_file_missing(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(KshotError, match="no such weights file"):
        build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=False, weights_file=path)


@pytest.mark.parametrize(
    "error",
    [urllib.error.URLError("name resolution failed"), OSError("network unreachable")],
    ids=["URLError", "OSError"],
)
def test_offline_pretrained_download_names_the_way_out(monkeypatch, error):
    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: None)
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise error

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(KshotError) as caught:
        build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=True)
    message = str(caught.value)
    assert calls and calls[0].startswith("http")
    assert "--weights" in message
    assert "mobilenet_v2" in message
    assert calls[0] in message
    assert "efficientnet_lite0" in message
    assert mobilenet_v2_weights.INSTALL in message


def test_pretrained_download_is_used_when_available(monkeypatch):
    from torchvision.models import mobilenet_v2

    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: None)

    torch.manual_seed(4)
    reference = mobilenet_v2(weights=None).state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: reference)
    model = build_backbone("mobilenet_v2", _mobilenet_config(), pretrained=True)
    name = "features.0.0.weight"
    assert torch.equal(model.state_dict()[name], reference[name])


def test_strip_classifier_paths():
    # "classifier.1" sets an item of a Sequential, "fc" an attribute.
    model = nn.Module()
    model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(4, 2))
    model.fc = nn.Linear(4, 2)
    backbones._set_identity("classifier.1")(model)
    backbones._set_identity("fc")(model)
    assert isinstance(model.classifier[0], nn.Dropout)
    assert isinstance(model.classifier[1], nn.Identity)
    assert isinstance(model.fc, nn.Identity)


@pytest.mark.parametrize("name", ["inception_v3", "mnasnet1_3", "regnet_x_1_6gf", "densenet121"])
def test_new_backbones_round_trip_through_a_model_file(name, tmp_path):
    """Rebuilt from the file's config with random weights (no download), then the file's
    weights: the same embeddings, the same preprocessing. The smaller new ones, for time;
    MNASNet needs its modules' version numbers, which the model file keeps."""
    from kshot.embedder.checkpoint import load_checkpoint, save_checkpoint
    from kshot.embedder.model import EmbedderConfig, build_embedder

    torch.manual_seed(0)
    embedder = build_embedder(EmbedderConfig.for_backbone(name), pretrained=False).eval()
    save_checkpoint(embedder, tmp_path / "model.kshot")
    loaded, _ = load_checkpoint(tmp_path / "model.kshot")
    assert loaded.config.preprocess == get_backbone(name).default_preprocess()
    side = SMALLEST_INPUT.get(name, 64)
    images = torch.randn(2, 3, side, side)
    with torch.inference_mode():
        assert torch.allclose(loaded(images), embedder(images), atol=1e-5)
