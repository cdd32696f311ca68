import numpy as np
import pytest

from kshot.errors import KshotError
from kshot.fewshot.decider import Decider, DecisionSettings
from kshot.fewshot.whitening import Whitening, principal_directions, within_class_deviations


def _noisy_classes(seed=0, classes=6, per_class=40, dim=10, noise=3.0):
    """Class c is 1 along axis c; within each, a spread of ``noise`` along the last axis."""
    rng = np.random.default_rng(seed)
    vectors, labels = [], []
    for c in range(classes):
        x = rng.normal(0, 0.1, (per_class, dim))
        x[:, c] += 1
        x[:, -1] += rng.normal(0, noise, per_class)
        vectors.append(x)
        labels += [f"c{c}"] * per_class
    return np.concatenate(vectors), np.asarray(labels)


def test_deviations_are_from_each_class_mean_and_skip_single_images():
    x = np.array([[0.0, 0], [2, 0], [5, 5], [1, 1], [1, 3]])
    labels = np.array(["a", "a", "lone", "b", "b"])
    deviations = within_class_deviations(x, labels, most=10)
    assert np.allclose(deviations, [[-1, 0], [1, 0], [0, -1], [0, 1]])


def test_past_the_cap_pairs_of_one_class_estimate_the_same_scatter():
    x, labels = _noisy_classes(per_class=400, dim=8, noise=2.0)
    exact = within_class_deviations(x, labels, most=len(x))
    pairs = within_class_deviations(x, labels, most=1000)
    assert len(pairs) == 1000
    first, second = exact.T @ exact / len(exact), pairs.T @ pairs / len(pairs)
    # along the classes' axes the spread is 0.1 (a pair across classes would add ~0.14)
    assert np.allclose(second[:-1, :-1], first[:-1, :-1], atol=0.05)
    assert abs(second[-1, -1] - first[-1, -1]) < 0.6  # the noise's variance, 4, along the last


def test_without_shrinkage_the_within_class_scatter_becomes_the_identity():
    x, labels = _noisy_classes(dim=6)
    whitening = Whitening.fit(x, labels, shrinkage=0.0)
    z = x - whitening.mean
    along = z @ whitening.directions.T
    projected = (along * whitening.scales) @ whitening.directions  # before re-normalising
    spread = within_class_deviations(projected, labels, most=len(labels))
    assert np.allclose(spread.T @ spread / len(spread), np.eye(6), atol=1e-6)


@pytest.mark.parametrize("rows", [300, 12])  # more rows than dimensions, and fewer
def test_directions_match_an_exact_decomposition(rows):
    rng = np.random.default_rng(1)
    spread = rng.normal(size=(rows, 20)) * np.linspace(5, 0.1, 20)
    variances, directions = principal_directions(spread, 5)
    values, vectors = np.linalg.eigh(spread.T @ spread / rows)
    assert np.allclose(variances, values[::-1][:5])
    assert np.allclose(np.abs(directions @ vectors[:, ::-1][:, :5]), np.eye(5), atol=1e-6)


def test_whitening_damps_the_direction_a_class_varies_in():
    x, labels = _noisy_classes(dim=64)
    plain = Decider.fit(DecisionSettings("prototype", centre="library"), x, labels)
    white = Decider.fit(DecisionSettings("prototype", centre="whiten"), x, labels)
    queries, truth = _noisy_classes(seed=1, dim=64)

    def accuracy(decider):
        return np.mean(np.asarray(decider.classes)[decider.scores(queries).argmax(1)] == truth)

    assert accuracy(white) > accuracy(plain) + 0.2
    assert accuracy(white) > 0.9


def test_with_one_image_a_class_it_only_centres():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    whitening = Whitening.fit(x, [f"c{i}" for i in range(5)])
    centred = x - x.mean(axis=0)
    assert len(whitening.directions) == 0
    assert np.allclose(whitening(x), centred / np.linalg.norm(centred, axis=1, keepdims=True))


def test_a_saved_whitening_gives_the_same_scores(tmp_path):
    x, labels = _noisy_classes()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    decider = Decider.fit(DecisionSettings("logistic", centre="whiten"), x, labels)
    decider.save(tmp_path / "decision.npz", "s")
    loaded, _ = Decider.load(tmp_path / "decision.npz")
    assert np.allclose(loaded.scores(x), decider.scores(x), atol=1e-5)


def test_a_file_that_lost_its_whitening_is_damaged(tmp_path):
    x, labels = _noisy_classes()
    decider = Decider.fit(DecisionSettings("prototype", centre="whiten"), x, labels)
    decider.whitening = None
    decider.save(tmp_path / "decision.npz", "s")
    with pytest.raises(KshotError, match="damaged decision file .*whitening is missing"):
        Decider.load(tmp_path / "decision.npz")
