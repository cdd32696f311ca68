"""Multi-level features, and the bilinear variant that also pools a level to second order."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from kshot.embedder.backbones import BACKBONES, build_backbone, get_backbone
from kshot.embedder.checkpoint import load_checkpoint, model_hash, save_checkpoint
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.second_order import SecondOrderPool, drawn_tensors
from kshot.errors import KshotError


def _pair(base: str):
    """The ``_multilevel`` and ``_bilinear`` backbones of ``base`` with the same random weights."""
    config = get_backbone(f"{base}_multilevel").default_preprocess()
    torch.manual_seed(0)
    multilevel = build_backbone(f"{base}_multilevel", config, pretrained=False).eval()
    bilinear = build_backbone(f"{base}_bilinear", config, pretrained=False).eval()
    # the same keys but the projection the bilinear one drew: the same weights load
    bilinear.load_state_dict({**multilevel.state_dict(), **drawn_tensors(bilinear)})
    return multilevel, bilinear


def test_bilinear_features_are_the_multilevel_ones_then_the_second_order_part():
    multilevel, bilinear = _pair("efficientnet_lite0")
    images = torch.randn(2, 3, 64, 64)
    stride16 = []
    bilinear._blocks[10].register_forward_hook(lambda m, i, out: stride16.append(out))
    with torch.no_grad():
        plain, joined = multilevel(images), bilinear(images)
        expected = F.normalize(SecondOrderPool(112)(stride16[0]), dim=1)
    assert joined.shape == (2, 1712 + 2080) and plain.shape == (2, 1712)
    torch.testing.assert_close(joined[:, :1712], plain)
    torch.testing.assert_close(joined[:, 1712:], expected)


def test_feature_dims_of_the_registered_variants():
    for base, plain in (
        ("efficientnet_lite0", 1280 + 112 + 320),
        ("mobilenet_v2", 1280 + 96 + 320),
    ):
        config = BACKBONES[base].default_preprocess()
        assert BACKBONES[f"{base}_multilevel"].feature_dim(config) == plain
        assert BACKBONES[f"{base}_bilinear"].feature_dim(config) == plain + 2080


def test_a_saved_bilinear_model_embeds_as_before_where_torch_draws_another_projection(
    tmp_path, monkeypatch
):
    """The projection is in the file: loaded where the generator draws another one (here: another
    seed), the model embeds as it did when saved."""
    config = EmbedderConfig.for_backbone("efficientnet_lite0_bilinear+mobilenet_v2_bilinear")
    torch.manual_seed(0)
    embedder = build_embedder(config, pretrained=False).eval()
    save_checkpoint(embedder, tmp_path / "model.kshot")
    drawn = SecondOrderPool.__init__
    monkeypatch.setattr(
        SecondOrderPool,
        "__init__",
        lambda self, channels, dim=64, seed=0: drawn(self, channels, dim, 1),
    )
    saved = next(iter(drawn_tensors(embedder).values()))  # Lite0's, 112 channels
    assert not torch.equal(SecondOrderPool(112).projection, saved)
    loaded, _ = load_checkpoint(tmp_path / "model.kshot")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), embedder(images))
    assert model_hash(loaded) == model_hash(embedder)
    assert embedder.embedding_dim == 1712 + 1696 + 2 * 2080


def test_a_bilinear_model_file_without_its_projection_is_refused_with_the_reason(tmp_path):
    """Files saved before the projection was: what they embed cannot be checked."""
    config = EmbedderConfig.for_backbone("mobilenet_v2_bilinear")
    embedder = build_embedder(config, pretrained=False)
    save_checkpoint(embedder, tmp_path / "model.kshot")
    payload = torch.load(tmp_path / "model.kshot", weights_only=True)
    for key in drawn_tensors(embedder):
        del payload["state_dict"][key]
    torch.save(payload, tmp_path / "model.kshot")
    with pytest.raises(KshotError, match="saved before kshot kept the second-order projection"):
        load_checkpoint(tmp_path / "model.kshot")


def test_imagenet_weights_of_the_plain_network_load_into_the_bilinear_one(tmp_path):
    """A weights file (``--weights``) holds the classification network's tensors, not the
    projection: it loads strictly all the same, beside the projection the model drew."""
    plain = torchvision.models.mobilenet_v2()
    torch.save(plain.state_dict(), tmp_path / "weights.pth")
    config = get_backbone("mobilenet_v2_bilinear").default_preprocess()
    model = build_backbone("mobilenet_v2_bilinear", config, False, tmp_path / "weights.pth")
    torch.testing.assert_close(model.features[0][0].weight, plain.features[0][0].weight)
    torch.testing.assert_close(model.level_pools[0].projection, SecondOrderPool(96).projection)
