import numpy as np

from kshot.fewshot.rules import make_rule
from kshot.fewshot.rules.prototype import PrototypeRule


def test_scores_are_cosines_to_renormalised_class_means():
    s = np.sqrt(0.5)
    vectors = np.array(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [s, s, 0.0], [0.0, 0.0, 1.0]],
        dtype=np.float32,
    )
    rule = PrototypeRule().fit(vectors, ["b", "a", "b", "a", "c"])
    assert rule.classes == ["a", "b", "c"]
    a = np.array([s, 1 + s, 0.0]) / np.hypot(s, 1 + s)  # (0,1,0) + (s,s,0), normalised
    expected = np.stack([a, [s, 0.0, s], [0.0, 0.0, 1.0]])
    assert np.allclose(rule.prototypes, expected, atol=1e-6)
    query = np.array([[0.6, 0.8, 0.0]], dtype=np.float32)
    assert np.allclose(rule.scores(query), query @ expected.T, atol=1e-6)


def test_opposite_vectors_do_not_divide_by_zero():
    rule = PrototypeRule().fit(np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32), ["x", "x"])
    assert np.isfinite(rule.scores(np.eye(2, dtype=np.float32))).all()


def test_unicode_labels_sort_and_keep_their_columns():
    rule = make_rule("prototype").fit(np.eye(3, dtype=np.float32), ["トマト", "apple", "Été"])
    assert rule.classes == sorted(["トマト", "apple", "Été"])
    best = rule.scores(np.eye(3, dtype=np.float32)).argmax(axis=1)
    assert [rule.classes[b] for b in best] == ["トマト", "apple", "Été"]


def test_state_round_trip_gives_the_same_scores():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 5)).astype(np.float32)
    labels = ["a", "b", "c"] * 4
    rule = PrototypeRule().fit(vectors, labels)
    again = PrototypeRule.from_state(rule.state())
    assert again.classes == rule.classes
    assert np.array_equal(again.scores(vectors), rule.scores(vectors))
