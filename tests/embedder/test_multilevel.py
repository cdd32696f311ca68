"""Multi-level features, and the bilinear variant that also pools a level to second order."""

import torch
import torch.nn.functional as F

from kshot.embedder.backbones import BACKBONES, build_backbone, get_backbone
from kshot.embedder.checkpoint import load_checkpoint, save_checkpoint
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.second_order import SecondOrderPool


def _pair(base: str):
    """The ``_multilevel`` and ``_bilinear`` backbones of ``base`` with the same random weights."""
    config = get_backbone(f"{base}_multilevel").default_preprocess()
    torch.manual_seed(0)
    multilevel = build_backbone(f"{base}_multilevel", config, pretrained=False).eval()
    bilinear = build_backbone(f"{base}_bilinear", config, pretrained=False).eval()
    bilinear.load_state_dict(multilevel.state_dict())  # the same keys: the same weights load
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


def test_a_saved_bilinear_model_embeds_as_before(tmp_path):
    """The projection is not in the file: it is drawn again, the same, when the model loads."""
    config = EmbedderConfig.for_backbone("efficientnet_lite0_bilinear+mobilenet_v2_bilinear")
    torch.manual_seed(0)
    embedder = build_embedder(config, pretrained=False).eval()
    save_checkpoint(embedder, tmp_path / "model.kshot")
    loaded, _ = load_checkpoint(tmp_path / "model.kshot")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), embedder(images))
    assert embedder.embedding_dim == 1712 + 1696 + 2 * 2080
