import numpy as np
import pytest

from kshot.fewshot.rules import make_rule
from kshot.fewshot.rules.knn import KNNRule


def test_vote_formula():
    # k = 4; class sizes: a 10, b 2, c 1 (smaller than k), d 5 and never among the neighbours
    rule = KNNRule(4)
    rule.classes = ["a", "b", "c", "d"]
    rule.sizes = np.array([10, 2, 1, 5])
    similarities = np.array([[0.9, 0.8, 0.7, 0.1], [0.95, 0.5, 0.4, 0.3]])
    codes = np.array([[0, 1, 0, -1], [2, 0, 1, 1]])
    first, second = rule.vote(similarities, codes)
    assert first == pytest.approx([(0.9 + 0.7) / 4, 0.8 / 2, 0.0, 0.0])
    assert second == pytest.approx([0.5 / 4, (0.4 + 0.3) / 2, 0.95 / 1, 0.0])


def test_exact_scores_vote_over_the_nearest_images():
    vectors = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    rule = make_rule("knn", neighbours=2).fit(vectors, ["x", "x", "y", "z"])
    (scores,) = rule.scores(np.array([[1.0, 0.0]], dtype=np.float32))
    # nearest two: (1,0) of x at 1.0 and (0.8,0.6) of x at 0.8 -> x: 1.8 / min(2, 2)
    assert scores == pytest.approx([0.9, 0.0, 0.0])


def test_a_loaded_rule_keeps_the_class_sizes_and_votes_alike():
    vectors = np.eye(3, dtype=np.float32)
    rule = KNNRule(2).fit(vectors, ["a", "a", "b"])
    again = KNNRule.from_state(rule.state(), neighbours=2)
    codes = np.array([[0, 1]])
    assert np.array_equal(
        again.vote(np.array([[0.5, 0.4]]), codes), rule.vote(np.array([[0.5, 0.4]]), codes)
    )
    with pytest.raises(ValueError, match="search an index"):
        again.scores(vectors)


def test_neighbours_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        KNNRule(0)
