"""The prototypical loss against a direct computation of Snell et al.'s definition."""

import pytest
import torch
import torch.nn.functional as F

from kshot.embedder.losses import build_loss
from kshot.embedder.protonet import PrototypicalLoss, support_mask


def episode(seed: int = 0):
    """3 classes x (2 support + 3 queries), classes interleaved in batch order."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(15, 6, generator=generator), dim=1)
    labels = torch.tensor([7, 2, 5] * 5)
    return embeddings, labels


def direct_loss(embeddings, labels, shots, logit):
    """Each class's first ``shots`` rows are its support; mean cross-entropy of the rest."""
    classes = sorted(set(labels.tolist()))
    support = {c: [i for i, y in enumerate(labels.tolist()) if y == c][:shots] for c in classes}
    prototypes = torch.stack([embeddings[support[c]].mean(0) for c in classes])
    losses = []
    for i, y in enumerate(labels.tolist()):
        if i in support[y]:
            continue
        logits = torch.stack([logit(embeddings[i], p) for p in prototypes])
        losses.append(-torch.log_softmax(logits, 0)[classes.index(y)])
    return torch.stack(losses).mean()


def test_cosine_loss_is_the_cross_entropy_over_scaled_cosines_to_the_prototypes():
    embeddings, labels = episode()
    loss = PrototypicalLoss(shots=2, scale=10.0)(embeddings, labels)
    expected = direct_loss(
        embeddings, labels, 2, lambda q, p: 10.0 * F.cosine_similarity(q, p, dim=0)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_squared_distance_loss_uses_minus_the_scaled_squared_distance():
    embeddings, labels = episode(1)
    loss = PrototypicalLoss(shots=2, scale=3.0, learn_scale=False, squared_distance=True)
    expected = direct_loss(embeddings, labels, 2, lambda q, p: -3.0 * ((q - p) ** 2).sum())
    assert loss(embeddings, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_scale_is_learnt_unless_fixed():
    learnt, fixed = PrototypicalLoss(shots=1), PrototypicalLoss(shots=1, learn_scale=False)
    assert [name for name, _ in learnt.named_parameters()] == ["scale"]
    assert list(fixed.parameters()) == [] and fixed.scale.item() == 64.0
    embeddings, labels = episode()
    learnt(embeddings, labels).backward()
    assert learnt.scale.grad is not None and learnt.scale.grad.item() != 0


def test_support_is_the_first_shots_of_each_class_in_batch_order():
    labels = torch.tensor([4, 4, 1, 4, 1, 1, 9])
    assert support_mask(labels, 2).tolist() == [True, True, True, False, True, False, True]


def test_an_episode_without_queries_costs_nothing():
    embeddings, labels = episode()
    assert PrototypicalLoss(shots=5)(embeddings, labels).item() == 0


def test_protonet_is_a_loss_by_name_with_shots_from_the_episodes():
    loss, miner = build_loss("protonet", 10, 6, shots=3)
    assert isinstance(loss, PrototypicalLoss) and miner is None
    assert loss.shots == 3 and loss.scale.item() == 64.0
