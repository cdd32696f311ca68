import itertools

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners, reducers
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from kshot.embedder.quadruplet import QuadrupletLoss, Quadruplets


def _batch(seed=0, classes=4, per_class=3, dim=8):
    g = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(classes * per_class, dim, generator=g), dim=1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return embeddings, labels


def _all_quadruplets(labels):
    """Every valid (a, p, n, n2), by brute force."""
    y = labels.tolist()
    return {
        (a, p, n, n2)
        for a, p, n, n2 in itertools.product(range(len(y)), repeat=4)
        if a != p and y[a] == y[p] and y[n] != y[a] and y[n2] not in (y[a], y[n])
    }


def _rows(quads):
    """Quadruplets as a list of (a, p, n, n2) tuples."""
    return list(zip(*(q.tolist() for q in quads), strict=True))


def _some_quadruplets(labels, count=25, seed=1):
    quads = sorted(_all_quadruplets(labels))
    g = torch.Generator().manual_seed(seed)
    chosen = [quads[i] for i in torch.randperm(len(quads), generator=g)[:count].tolist()]
    return Quadruplets(*(torch.tensor(column) for column in zip(*chosen, strict=True)))


@pytest.mark.parametrize("margin1, margin2", [(2.0, 1.0), (0.5, 0.2)])
def test_loss_is_the_formula_on_explicit_quadruplets(margin1, margin2):
    embeddings, labels = _batch()
    quads = _some_quadruplets(labels)
    a, p, n, n2 = quads

    def d(i, j):  # the squared Euclidean distance of the paper
        return ((embeddings[i] - embeddings[j]) ** 2).sum(dim=1)

    first = torch.relu(d(a, p) - d(a, n) + margin1)
    second = torch.relu(d(a, p) - d(n, n2) + margin2)
    expected = first + second

    per_element = QuadrupletLoss(margin1, margin2, reducer=reducers.DoNothingReducer())(
        embeddings, labels, quads
    )["loss"]
    assert per_element["reduction_type"] == "element"
    assert torch.equal(per_element["indices"], a)
    torch.testing.assert_close(per_element["losses"], expected, atol=1e-5, rtol=1e-5)
    mean = QuadrupletLoss(margin1, margin2, reducer=reducers.MeanReducer())
    torch.testing.assert_close(mean(embeddings, labels, quads), expected.mean(), atol=1e-5, rtol=0)
    if margin1 < 1:  # small margins: the hinges must be seen cutting some terms off
        assert (first == 0).any() and (second == 0).any() and (expected > 0).any()


def test_a_similarity_flips_the_hinges():
    embeddings, labels = _batch(seed=2)
    quads = _some_quadruplets(labels, seed=3)
    a, p, n, n2 = quads
    s = embeddings @ embeddings.T
    expected = torch.relu(s[a, n] - s[a, p] + 0.3) + torch.relu(s[n, n2] - s[a, p] + 0.1)
    loss = QuadrupletLoss(0.3, 0.1, distance=CosineSimilarity(), reducer=reducers.MeanReducer())
    torch.testing.assert_close(loss(embeddings, labels, quads), expected.mean(), atol=1e-5, rtol=0)


def test_without_indices_every_valid_quadruplet_is_taken():
    _, labels = _batch(per_class=2)
    # The path forward takes when no miner gives indices: all triplets, expanded.
    quads = QuadrupletLoss().expand_triplets(lmu.get_all_triplets_indices(labels), labels)
    got = _rows(quads)
    assert len(got) == len(set(got))
    assert set(got) == _all_quadruplets(labels)


def test_without_indices_the_loss_sums_over_every_valid_quadruplet():
    embeddings, labels = _batch(per_class=2, seed=5)
    quads = Quadruplets(*(torch.tensor(c) for c in zip(*_all_quadruplets(labels), strict=True)))
    explicit = QuadrupletLoss(reducer=reducers.SumReducer())(embeddings, labels, quads)
    implicit = QuadrupletLoss(reducer=reducers.SumReducer())(embeddings, labels)
    torch.testing.assert_close(implicit, explicit)
    count = QuadrupletLoss(reducer=reducers.DoNothingReducer())(embeddings, labels)
    assert len(count["loss"]["losses"]) == len(quads.a)


def test_an_expansion_past_the_cap_is_a_sample_of_valid_quadruplets():
    _, labels = _batch(per_class=3)
    torch.manual_seed(0)
    loss = QuadrupletLoss(max_quadruplets=200)
    quads = loss.expand_triplets(lmu.get_all_triplets_indices(labels), labels)
    got = _rows(quads)
    assert len(got) == 200
    assert set(got) <= _all_quadruplets(labels)
    assert len(set(got)) > 150  # a sample, not one quadruplet repeated
    assert len({q[3] for q in got}) == len(labels)  # every element serves as a second negative


def test_triplets_from_a_miner_get_second_negatives_of_a_third_class():
    _, labels = _batch()
    triplets = (torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([6, 0]))
    quads = QuadrupletLoss().expand_triplets(triplets, labels)
    got = set(_rows(quads))
    # Anchor 0 (class 0) with negative 6 (class 2): n2 from classes 1 and 3.
    # Anchor 3 (class 1) with negative 0 (class 0): n2 from classes 2 and 3.
    expected = {(0, 1, 6, j) for j in [3, 4, 5, 9, 10, 11]}
    expected |= {(3, 4, 0, j) for j in [6, 7, 8, 9, 10, 11]}
    assert got == expected


@pytest.mark.parametrize(
    "reducer",
    [reducers.AvgNonZeroReducer(), reducers.MeanReducer(), reducers.SumReducer(), None],
    ids=["avg-non-zero", "mean", "sum", "default"],
)
@pytest.mark.parametrize(
    "miner",
    [
        miners.TripletMarginMiner(margin=1.0, type_of_triplets="all"),
        miners.MultiSimilarityMiner(),  # pairs, turned into triplets
        None,
    ],
    ids=["triplet-miner", "pair-miner", "no-miner"],
)
def test_works_with_pml_miners_and_reducers(miner, reducer):
    embeddings, labels = _batch(seed=4)
    embeddings = embeddings.clone().requires_grad_(True)
    loss_fn = QuadrupletLoss(reducer=reducer)
    indices = miner(embeddings, labels) if miner is not None else None
    loss = loss_fn(embeddings, labels, indices)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    assert embeddings.grad.abs().sum() > 0


@pytest.mark.parametrize("classes", [1, 2], ids=["one-class", "two-classes"])
def test_no_quadruplet_gives_a_zero_loss_that_still_backpropagates(classes):
    embeddings, labels = _batch(classes=classes, per_class=4)
    embeddings = embeddings.clone().requires_grad_(True)
    loss = QuadrupletLoss()(embeddings, labels)
    assert loss.item() == 0
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))
