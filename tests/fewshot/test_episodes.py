import json

import numpy as np
import pytest

from kshot.fewshot.episodes import (
    episode_accuracy,
    mean_ci95,
    run_episodes,
    run_library_episodes,
    sample_episode,
)


def at(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane at these angles."""
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def separable(classes: int = 8, per_class: int = 12, seed: int = 0):
    """Each class's images near its own axis of R^classes: every rule classifies them right."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"class {i}" for i in range(classes)], per_class)
    vectors = np.eye(classes)[np.repeat(np.arange(classes), per_class)]
    vectors = vectors + 0.1 * rng.standard_normal(vectors.shape)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


def test_episode_has_ways_classes_shots_and_queries_each_disjoint():
    labels = np.repeat(np.arange(10), [3, 9, 9, 9, 9, 9, 9, 4, 9, 9])  # classes 0, 7 too small
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        support, query = sample_episode(rng, labels, ways=4, shots=2, queries=3)
        assert support.shape == (8,) and query.shape == (12,)
        assert not set(support) & set(query)
        assert len(set(support)) == 8 and len(set(query)) == 12
        support_classes, query_classes = labels[support], labels[query]
        # grouped by class, same class order in both
        assert np.array_equal(support_classes, np.repeat(support_classes[::2], 2))
        assert np.array_equal(query_classes, np.repeat(support_classes[::2], 3))
        assert len(set(support_classes)) == 4
        seen |= set(support_classes)
    assert not seen & {0, 7}  # never a class with fewer than shots + queries = 5 images
    assert seen == {1, 2, 3, 4, 5, 6, 8, 9}


def test_sampling_is_repeatable_and_seeded():
    labels = np.repeat(["a", "b", "c", "d", "e", "f"], 10)

    def draw(seed):
        return sample_episode(np.random.default_rng(seed), labels, 3, 1, 5)

    assert all(np.array_equal(x, y) for x, y in zip(draw(7), draw(7), strict=True))
    assert not np.array_equal(np.concatenate(draw(7)), np.concatenate(draw(8)))


def test_too_few_classes_is_a_clear_error():
    labels = np.repeat(["a", "b", "c"], [6, 6, 2])
    with pytest.raises(ValueError, match="needs 3 classes of at least 6 images; only 2 of the 3"):
        sample_episode(np.random.default_rng(0), labels, ways=3, shots=1, queries=5)
    with pytest.raises(ValueError, match="shots must be at least 1"):
        sample_episode(np.random.default_rng(0), labels, ways=2, shots=0, queries=5)


def test_mean_ci95_is_the_normal_approximation():
    # mean 0.7; sample std sqrt(((-0.2)^2 + 0 + 0.2^2)/2) = 0.2; 1.96 * 0.2 / sqrt(3)
    mean, half = mean_ci95([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7)
    assert half == pytest.approx(1.96 * 0.2 / np.sqrt(3))
    assert mean_ci95([0.25]) == (0.25, 0.0)
    assert mean_ci95([0.6, 0.6, 0.6, 0.6]) == pytest.approx((0.6, 0.0))
    with pytest.raises(ValueError):
        mean_ci95([])


def test_hand_computed_accuracy_prototype_versus_knn():
    # support: a at 0 and 20 degrees (prototype 10), b at 90 and 170 (prototype 130)
    vectors = at(0, 20, 90, 170, 5, 60, 150, 50)
    labels = np.array(["a", "a", "b", "b", "a", "b", "b", "a"])
    support, query = np.arange(4), np.arange(4, 8)
    # b@60 is 50 degrees from a's prototype, 70 from b's: prototype says a (wrong); its nearest
    # image is b@90 (30 degrees), so 1-NN says b (right); over all four supports a scores
    # (cos 60 + cos 40)/2 = 0.63 and b (cos 30 + cos 110)/2 = 0.26: a (wrong).
    # The other three queries are right by every rule.
    assert episode_accuracy(vectors, labels, support, query, "prototype") == 0.75
    assert episode_accuracy(vectors, labels, support, query, "knn", neighbours=1) == 1.0
    assert episode_accuracy(vectors, labels, support, query, "knn", neighbours=10) == 0.75
    with pytest.raises(ValueError, match="unknown method"):
        episode_accuracy(vectors, labels, support, query, "nearest")
    with pytest.raises(ValueError, match="neighbours must be at least 1"):
        episode_accuracy(vectors, labels, support, query, "knn", neighbours=0)


@pytest.mark.parametrize("method", ["prototype", "knn"])
def test_separable_embedding_scores_one(method):
    vectors, labels = separable()
    result = run_episodes(vectors, labels, ways=5, shots=3, queries=4, episodes=20, method=method)
    assert result["accuracies"] == [1.0] * 20
    assert result["mean_accuracy"] == 1.0 and result["ci95"] == 0.0


@pytest.mark.parametrize("method", ["prototype", "knn"])
def test_two_identical_classes_are_half_confused(method):
    # classes a and b share one direction, c has its own: a's queries tie between a and b and
    # the tie goes to the first name (a: right), b's go to a (wrong), c's are right: 2/3.
    vectors = np.repeat(at(0, 0, 90), 6, axis=0)
    labels = np.repeat([1, 2, 3], 6)  # class codes work as labels too
    result = run_episodes(vectors, labels, 3, 2, 4, episodes=5, method=method, neighbours=10)
    assert result["accuracies"] == pytest.approx([2 / 3] * 5)


def test_run_episodes_is_repeatable_and_reports_its_settings():
    vectors, labels = separable(classes=6, per_class=10)
    noisy = vectors + 0.6 * np.random.default_rng(1).standard_normal(vectors.shape)
    noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    result = run_episodes(noisy, labels, 5, 1, 3, episodes=30, seed=3, method="knn", neighbours=5)
    assert result == run_episodes(noisy, labels, 5, 1, 3, 30, 3, "knn", 5)
    assert {k: result[k] for k in ("ways", "shots", "queries", "episodes", "seed")} == {
        "ways": 5,
        "shots": 1,
        "queries": 3,
        "episodes": 30,
        "seed": 3,
    }
    assert result["method"] == "knn" and result["neighbours"] == 5
    assert len(result["accuracies"]) == 30
    assert 0 < result["mean_accuracy"] < 1  # noisy enough to be neither
    assert (result["mean_accuracy"], result["ci95"]) == pytest.approx(
        mean_ci95(result["accuracies"])
    )
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    other = run_episodes(noisy, labels, 5, 1, 3, episodes=30, seed=4, method="knn", neighbours=5)
    assert other["accuracies"] != result["accuracies"]


def test_run_episodes_rejects_bad_settings():
    vectors, labels = separable(classes=3)
    with pytest.raises(ValueError, match="needs 4 classes"):
        run_episodes(vectors, labels, ways=4, shots=1, queries=1, episodes=1)
    with pytest.raises(ValueError, match="episodes must be at least 1"):
        run_episodes(vectors, labels, ways=2, shots=1, queries=1, episodes=0)
    with pytest.raises(ValueError, match="unknown method"):
        run_episodes(vectors, labels, 2, 1, 1, 1, method="svm")


def test_library_episodes_see_new_photos_taken_for_known_classes():
    """New class n1 lies where known class k1 does: among the new classes alone every query is
    right, in the library n1's queries tie with k1 and the tie goes to the first name (k1)."""
    vectors = np.repeat(at(0, 90), 6, axis=0)
    labels = np.repeat(["n1", "n2"], 6)
    known, known_labels = np.repeat(at(0, 180), 3, axis=0), np.repeat(["k1", "k2"], 3)
    alone = run_episodes(vectors, labels, ways=2, shots=2, queries=4, episodes=3)
    library = run_library_episodes(vectors, labels, known, known_labels, 2, 4, episodes=3)
    assert alone["mean_accuracy"] == 1.0
    assert library["accuracies"] == [0.5] * 3  # n2's queries right, n1's taken for k1
    assert (library["ways"], library["shots"], library["queries"]) == (4, 2, 4)


def test_library_episodes_are_repeatable_and_score_separable_classes_right():
    vectors, labels = separable(classes=8, per_class=12)
    new = np.isin(labels, [f"class {i}" for i in range(3)])
    args = (vectors[new], labels[new], vectors[~new], labels[~new], 5, 3, 10, 7)
    result = run_library_episodes(*args)
    assert result == run_library_episodes(*args)
    assert result["accuracies"] == [1.0] * 10 and result["ways"] == 8


def test_library_episodes_refuse_a_class_both_new_and_known():
    vectors, labels = separable(classes=3)
    with pytest.raises(ValueError, match="both new and known: class 0"):
        run_library_episodes(vectors, labels, vectors[:2], labels[:2], 1, 1, 1)
    with pytest.raises(ValueError, match="episodes must be at least 1"):
        run_library_episodes(vectors, labels, vectors[:0], labels[:0], 1, 1, 0)
