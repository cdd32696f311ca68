"""Adapting an embedder to a library's classes: the classifier starts at the prototypes, the
loss falls, batch norm keeps its statistics, classes are drawn evenly, bad settings refused."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.embedder.adapt import _balanced_batches, adapt_embedder
from kshot.embedder.adapt_config import AdaptConfig
from kshot.errors import KshotError
from tests.conftest import pattern


def _pixels(classes: int = 3, per_class: int = 4) -> tuple[torch.Tensor, np.ndarray]:
    """Grey 28-pixel crops ``(N, 1, 28, 28)`` uint8 of block patterns, one per class."""
    crops, codes = [], []
    for c in range(classes):
        for i in range(per_class):
            grey = pattern(c, side=28, cell=4, noise=20.0, noise_seed=100 * c + i).mean(axis=2)
            crops.append(torch.as_tensor(grey.astype(np.uint8))[None])
            codes.append(c)
    return torch.stack(crops), np.array(codes)


def _prototypes(embedder, pixels, codes) -> np.ndarray:
    with torch.no_grad():
        vectors = embedder(embedder.config.preprocess.normalize(pixels)).numpy()
    means = np.stack([vectors[codes == c].mean(axis=0) for c in np.unique(codes)])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def test_the_first_step_scores_the_prototypes_and_the_loss_falls(conv4_factory):
    embedder = conv4_factory(0, embedding_dim=None)
    pixels, codes = _pixels()
    prototypes = _prototypes(embedder, pixels, codes)
    config = AdaptConfig(steps=15, batch_size=len(codes), augment="none", seed=1)
    (first,) = _balanced_batches(codes, AdaptConfig(steps=1, batch_size=len(codes), seed=1))
    with torch.no_grad():
        vectors = embedder(embedder.config.preprocess.normalize(pixels[first]))
    logits = vectors @ torch.as_tensor(prototypes).T / config.temperature
    expected = F.cross_entropy(logits, torch.as_tensor(codes[first])).item()
    losses = adapt_embedder(embedder, pixels, codes, prototypes, config)
    assert len(losses) == 15
    assert losses[0] == pytest.approx(expected, rel=1e-4)
    assert losses[-1] < 0.5 * losses[0]
    assert not embedder.training  # handed back ready to embed


def test_batch_norm_keeps_its_statistics_while_the_weights_change(conv4_factory):
    embedder = conv4_factory(0, embedding_dim=None)
    before = {k: v.clone() for k, v in embedder.state_dict().items()}
    pixels, codes = _pixels()
    config = AdaptConfig(steps=3, batch_size=6, augment="none")
    adapt_embedder(embedder, pixels, codes, _prototypes(embedder, pixels, codes), config)
    after = embedder.state_dict()
    statistics = [k for k in after if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in after if k.endswith("weight") and k not in statistics]
    assert statistics and weights
    assert all(torch.equal(before[k], after[k]) for k in statistics)
    assert any(not torch.equal(before[k], after[k]) for k in weights)


def test_a_small_class_is_drawn_as_often_as_a_large_one():
    codes = np.array([0] * 5 + [1] * 200)
    batches = _balanced_batches(codes, AdaptConfig(steps=50, batch_size=40))
    drawn = codes[torch.cat(batches).numpy()]
    assert len(batches) == 50 and all(len(b) == 40 for b in batches)
    assert 0.4 < np.mean(drawn == 0) < 0.6  # 5 photos of 205, drawn half the time


def test_every_class_needs_photos(conv4_factory):
    embedder = conv4_factory(0, embedding_dim=None)
    pixels, codes = _pixels(classes=2)
    prototypes = np.eye(3, embedder.embedding_dim, dtype=np.float32)  # 3 classes, photos of 2
    with pytest.raises(KshotError, match="every class"):
        adapt_embedder(embedder, pixels, codes, prototypes, AdaptConfig(steps=1))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 0}, "at least 1 step"),
        ({"batch_size": 1}, "at least 2 photos"),
        ({"lr": 0.0}, "must be positive"),
        ({"augment": "sideways"}, "unknown augmentation preset"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(KshotError, match=message):
        AdaptConfig(**settings)
