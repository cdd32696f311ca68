import numpy as np
import pytest

from kshot.fewshot.decision import Decision, decide, knn_scores, prototypes
from kshot.fewshot.labels import UNKNOWN


def test_prototypes_are_renormalised_class_means():
    s = np.sqrt(0.5)
    vectors = np.array(
        [
            [1.0, 0.0, 0.0],  # b
            [0.0, 1.0, 0.0],  # a
            [0.0, 0.0, 1.0],  # b
            [s, s, 0.0],  # a
            [0.0, 0.0, 1.0],  # c
        ],
        dtype=np.float32,
    )
    names, centres = prototypes(vectors, ["b", "a", "b", "a", "c"])
    assert names == ["a", "b", "c"]
    assert centres.dtype == np.float32 and centres.shape == (3, 3)
    # a: (0,1,0) + (s,s,0) = (s, 1+s, 0), normalised
    a = np.array([s, 1 + s, 0.0]) / np.hypot(s, 1 + s)
    assert np.allclose(centres[0], a, atol=1e-6)
    assert np.allclose(centres[1], [s, 0.0, s], atol=1e-6)  # b: (1,0,1)/sqrt 2
    assert np.allclose(centres[2], [0.0, 0.0, 1.0], atol=1e-6)
    assert np.allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-6)


def test_prototype_of_opposite_vectors_does_not_divide_by_zero():
    names, centres = prototypes(np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32), ["x", "x"])
    assert names == ["x"]
    assert np.isfinite(centres).all()


def test_prototypes_sort_unicode_labels():
    vectors = np.eye(3, dtype=np.float32)
    names, centres = prototypes(vectors, ["トマト", "apple", "Été"])
    assert names == sorted(["トマト", "apple", "Été"])
    assert np.allclose(centres[names.index("トマト")], [1, 0, 0])
    assert np.allclose(centres[names.index("Été")], [0, 0, 1])


def test_knn_scores_formula():
    # k = 4; class sizes: a 10, b 2, c 1 (smaller than k), d not among the neighbours
    similarities = np.array([[0.9, 0.8, 0.7, 0.1], [0.95, 0.5, 0.4, 0.3]], dtype=np.float32)
    neighbours = [["a", "b", "a", None], ["c", "a", "b", "b"]]
    sizes = {"a": 10, "b": 2, "c": 1, "d": 5}
    first, second = knn_scores(similarities, neighbours, sizes)
    # a: (0.9 + 0.7) / min(4, 10); b: 0.8 / min(4, 2); the missing neighbour counts for nobody
    assert first == pytest.approx({"a": 1.6 / 4, "b": 0.8 / 2})
    # c: 0.95 / min(4, 1); a: 0.5 / 4; b: (0.4 + 0.3) / 2
    assert second == pytest.approx({"c": 0.95, "a": 0.5 / 4, "b": 0.7 / 2})
    assert "d" not in first and "d" not in second


def test_knn_one_shot_class_is_not_outvoted():
    # one very close image of "rare" against three fairly close images of "common"
    scores = knn_scores(
        np.array([[0.97, 0.9, 0.9, 0.9]]),
        [["rare", "common", "common", "common"]],
        {"rare": 1, "common": 50},
    )[0]
    assert decide(scores, 5, None).label == "rare"


def test_knn_all_neighbours_identical_scores_one():
    scores = knn_scores(np.ones((1, 3)), [["a", "a", "a"]], {"a": 3})[0]
    assert scores == pytest.approx({"a": 1.0})


def test_knn_needs_one_label_per_neighbour():
    with pytest.raises(ValueError):
        knn_scores(np.ones((1, 3)), [["a", "a"]], {"a": 3})


def test_decide_ranks_best_first():
    decision = decide({"a": 0.2, "b": 0.9, "c": 0.5}, top_k=5, threshold=None)
    assert isinstance(decision, Decision)
    assert decision.label == "b"
    assert decision.score == pytest.approx(0.9)
    assert decision.top_k == [("b", 0.9), ("c", 0.5), ("a", 0.2)]
    assert all(isinstance(s, float) for _, s in decision.top_k)


def test_decide_truncates_to_top_k():
    scores = {f"l{i}": i / 10 for i in range(8)}
    decision = decide(scores, top_k=3, threshold=None)
    assert [label for label, _ in decision.top_k] == ["l7", "l6", "l5"]
    assert decide(scores, top_k=1, threshold=None).top_k == [("l7", pytest.approx(0.7))]


def test_decide_threshold_gives_unknown_with_the_best_score():
    scores = {"a": 0.6, "b": 0.7}
    decision = decide(scores, top_k=5, threshold=0.8)
    assert decision.label == UNKNOWN
    assert decision.score == pytest.approx(0.7)
    assert decision.top_k[0] == ("b", pytest.approx(0.7))  # whatever the threshold
    assert decide(scores, top_k=5, threshold=0.7).label == "b"  # at the threshold: accepted
    assert decide(scores, top_k=5, threshold=0.69).label == "b"


def test_decide_ties_are_broken_by_label_name():
    decision = decide({"zebra": 0.5, "ant": 0.5, "mole": 0.5, "bee": 0.1}, top_k=3, threshold=None)
    assert decision.label == "ant"
    assert [label for label, _ in decision.top_k] == ["ant", "mole", "zebra"]
    assert decide({"b": 0.5, "a": 0.5}, top_k=5, threshold=None).label == "a"


def test_decide_negative_scores():
    decision = decide({"a": -0.2, "b": -0.1}, top_k=2, threshold=None)
    assert decision.label == "b"
    assert decide({"a": -0.2, "b": -0.1}, top_k=2, threshold=0.0).label == UNKNOWN
