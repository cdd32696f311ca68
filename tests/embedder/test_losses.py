import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from kshot.embedder.losses import (
    LOSS_DEFAULTS,
    LOSSES,
    FocalLoss,
    LinearSoftmaxLoss,
    build_loss,
)
from kshot.embedder.quadruplet import QuadrupletLoss
from kshot.errors import KshotError

NAMES = ["contrastive", "triplet", "quadruplet", "sphereface", "cosface", "arcface", "softmax"]
NAMES += ["focal", "protonet"]


def _clusters(seed=0, classes=4, per_class=8, dim=8):
    """Gaussian class clusters in ``dim`` dimensions, ``per_class`` points each."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    x = centres.repeat_interleave(per_class, dim=0) + torch.randn(
        classes * per_class, dim, generator=g
    )
    return x, torch.arange(classes).repeat_interleave(per_class)


def test_the_registry_names_every_loss_with_its_defaults():
    assert list(LOSSES) == NAMES
    assert set(LOSS_DEFAULTS) == set(LOSSES)


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_falls_while_training_a_tiny_embedder(name):
    torch.manual_seed(0)
    x, y = _clusters()
    embedder = torch.nn.Linear(8, 8)
    loss_fn, miner = build_loss(name, 4, 8)
    own = [p.detach().clone() for p in loss_fn.parameters()]
    optimizer = torch.optim.Adam([*embedder.parameters(), *loss_fn.parameters()], lr=0.05)
    history = []
    for _ in range(25):
        embeddings = F.normalize(embedder(x), dim=1)  # unit vectors, like kshot's Embedder
        pairs = miner(embeddings, y) if miner is not None else None
        loss = loss_fn(embeddings, y, pairs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    first, last = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert first > 0
    assert last < 0.6 * first, history
    # Class weights or a scale (where the loss has any) are trained along with the embedder.
    assert all(not torch.equal(p0, p) for p0, p in zip(own, loss_fn.parameters(), strict=True))
    trained = {"sphereface", "cosface", "arcface", "softmax", "focal", "protonet"}
    assert bool(own) == (name in trained)


def test_the_defaults_are_those_of_the_table():
    contrastive, miner = build_loss("contrastive", 4, 8)
    assert isinstance(contrastive, losses.ContrastiveLoss)
    assert (contrastive.pos_margin, contrastive.neg_margin) == (0, 1)
    assert isinstance(miner, miners.MultiSimilarityMiner)

    triplet, miner = build_loss("triplet", 4, 8)
    assert isinstance(triplet, losses.TripletMarginLoss) and triplet.margin == 1
    assert isinstance(miner, miners.TripletMarginMiner)
    assert (miner.margin, miner.type_of_triplets) == (1, "semihard")

    quadruplet, miner = build_loss("quadruplet", 4, 8)
    assert isinstance(quadruplet, QuadrupletLoss) and miner is None
    assert (quadruplet.margin1, quadruplet.margin2) == (2, 1)

    sphereface, _ = build_loss("sphereface", 4, 8)
    assert isinstance(sphereface, losses.SphereFaceLoss) and sphereface.margin == 4

    cosface, _ = build_loss("cosface", 4, 8)
    assert isinstance(cosface, losses.CosFaceLoss)
    assert (cosface.margin, cosface.scale) == (0.4, 32)

    arcface, _ = build_loss("arcface", 4, 8)
    assert isinstance(arcface, losses.ArcFaceLoss)
    assert arcface.margin == pytest.approx(0.5)  # pml takes degrees and keeps radians
    assert arcface.scale == 32

    focal, _ = build_loss("focal", 4, 8)
    assert isinstance(focal, FocalLoss) and (focal.gamma, focal.alpha) == (2, 0.5)
    assert type(build_loss("softmax", 4, 8)[0]) is LinearSoftmaxLoss


def test_overrides_change_the_built_loss_and_not_the_defaults():
    cosface, _ = build_loss("cosface", 4, 8, margin=0.1, scale=64)
    assert (cosface.margin, cosface.scale) == (0.1, 64)
    triplet, miner = build_loss("triplet", 4, 8, margin=0.3)
    assert triplet.margin == miner.margin == 0.3  # the miner follows the loss's margin
    quadruplet, _ = build_loss("quadruplet", 4, 8, margin2=0.5)
    assert (quadruplet.margin1, quadruplet.margin2) == (2, 0.5)
    contrastive, _ = build_loss("contrastive", 4, 8, neg_margin=0.8)
    assert (contrastive.pos_margin, contrastive.neg_margin) == (0, 0.8)
    assert LOSS_DEFAULTS["cosface"] == {"margin": 0.4, "scale": 32}
    assert build_loss("cosface", 4, 8)[0].margin == 0.4


@pytest.mark.parametrize("name", NAMES)
def test_factories_called_without_overrides_still_give_the_defaults(name):
    direct, _ = LOSSES[name](5, 6)
    built, _ = build_loss(name, 5, 6)
    assert type(direct) is type(built)
    for key in LOSS_DEFAULTS[name]:
        assert getattr(direct, key) == getattr(built, key)
    if hasattr(direct, "W"):
        assert direct.W.shape == (6, 5)


def test_an_unknown_loss_lists_the_known_ones():
    with pytest.raises(KshotError, match="unknown loss 'nope'") as caught:
        build_loss("nope", 4, 8)
    assert all(name in str(caught.value) for name in NAMES)


def test_an_override_the_loss_does_not_take_is_a_kshot_error():
    with pytest.raises(KshotError, match="'cosface' cannot take \\['gamma'\\]"):
        build_loss("cosface", 4, 8, gamma=2)


def test_softmax_is_cross_entropy_of_the_linear_classifier():
    torch.manual_seed(0)
    embeddings, labels = F.normalize(torch.randn(10, 8), dim=1), torch.arange(10) % 3
    loss_fn = LinearSoftmaxLoss(3, 8)
    with torch.no_grad():
        loss_fn.b.copy_(torch.tensor([0.5, -0.2, 0.1]))
    expected = F.cross_entropy(embeddings @ loss_fn.W + loss_fn.b, labels)
    torch.testing.assert_close(loss_fn(embeddings, labels), expected)


def test_focal_is_the_softmax_focal_formula():
    torch.manual_seed(0)
    embeddings, labels = F.normalize(torch.randn(10, 8), dim=1), torch.arange(10) % 3
    loss_fn = FocalLoss(3, 8, gamma=2.0, alpha=0.5)
    log_p = F.log_softmax(embeddings @ loss_fn.W + loss_fn.b, dim=1)[torch.arange(10), labels]
    expected = (-0.5 * (1 - log_p.exp()) ** 2 * log_p).mean()
    torch.testing.assert_close(loss_fn(embeddings, labels), expected)
    # gamma 0 and alpha 1 leave plain cross-entropy.
    plain = FocalLoss(3, 8, gamma=0.0, alpha=1.0)
    plain.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(plain(embeddings, labels), -log_p.mean())
