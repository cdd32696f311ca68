import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from kshot.fewshot.calibration import softmax
from kshot.fewshot.rules import make_rule
from kshot.fewshot.rules.logistic import LogisticRule


def _clusters(centres, per_class, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    vectors, labels = [], []
    for name, centre in centres.items():
        points = np.asarray(centre) + rng.normal(0, spread, (per_class, len(centre)))
        vectors.append(points / np.linalg.norm(points, axis=1, keepdims=True))
        labels += [name] * per_class
    return np.concatenate(vectors).astype(np.float32), labels


def test_separates_classes_a_prototype_rule_confuses():
    # Class "wide" spreads along x; "narrow" sits near (1, 0.2), inside wide's span: their means
    # are close, but a linear boundary on y still separates them.
    rng = np.random.default_rng(1)
    wide = np.stack([rng.uniform(0.2, 1.0, 40), rng.uniform(-0.6, -0.1, 40)], axis=1)
    narrow = np.stack([rng.uniform(0.2, 1.0, 40), rng.uniform(0.1, 0.6, 40)], axis=1)
    vectors = np.concatenate([wide, narrow]).astype(np.float32)
    labels = ["wide"] * 40 + ["narrow"] * 40
    rule = LogisticRule(C=100.0).fit(vectors, labels)
    predicted = np.array(rule.classes)[rule.scores(vectors).argmax(axis=1)]
    assert np.mean(predicted == np.array(labels)) == 1.0


def test_two_classes_give_sklearns_probabilities_through_a_softmax():
    vectors, labels = _clusters({"a": [1, 0, 0], "b": [0, 1, 0]}, 6)
    rule = LogisticRule(C=10.0).fit(vectors, labels)
    model = LogisticRegression(C=10.0, max_iter=1000).fit(vectors, labels)
    assert np.allclose(softmax(rule.scores(vectors), 1.0), model.predict_proba(vectors), atol=1e-6)


def test_one_class_answers_by_cosine_to_its_prototype():
    vectors, labels = _clusters({"only": [1, 0, 0]}, 3)
    rule = make_rule("logistic").fit(vectors, labels)
    query = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    scores = rule.scores(query)
    assert scores.shape == (2, 1)
    assert scores[1, 0] > 0.9 and abs(scores[0, 0]) < 0.2


def test_state_round_trip_gives_the_same_scores():
    vectors, labels = _clusters({"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1]}, 4)
    rule = LogisticRule().fit(vectors, labels)
    again = LogisticRule.from_state(rule.state())
    assert again.classes == ["a", "b", "c"]
    assert np.array_equal(again.scores(vectors), rule.scores(vectors))


def test_unknown_rule_name():
    with pytest.raises(ValueError, match="unknown method 'svm'"):
        make_rule("svm")
