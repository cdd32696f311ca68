import numpy as np
import pytest

from kshot.fewshot.decision import decide, group_of, group_ranking
from kshot.fewshot.labels import UNKNOWN


def test_best_class_or_unknown_under_the_threshold():
    classes = ["a", "b", "c"]
    confidences = np.array([0.2, 0.7, 0.1])
    decision = decide(classes, confidences, top_k=2, threshold=0.5)
    assert decision.label == "b" and decision.score == pytest.approx(0.7)
    assert decision.top_k == [("b", pytest.approx(0.7)), ("a", pytest.approx(0.2))]
    refused = decide(classes, confidences, top_k=5, threshold=0.8)
    assert refused.label == UNKNOWN
    assert refused.top_k[0][0] == "b"  # a refused query still shows its nearest classes
    assert decision.group is None and decision.groups == []


def test_ties_go_to_the_first_label():
    decision = decide(["b", "a"], np.array([0.5, 0.5]), 2, None)
    assert decision.label == "a"


def test_groups_sum_their_classes_and_can_be_known_when_the_class_is_not():
    classes = ["Potato/Late blight", "Tomato/Early blight", "Tomato/Late blight", "Grape"]
    confidences = np.array([0.1, 0.4, 0.45, 0.05])
    decision = decide(classes, confidences, top_k=3, threshold=0.6)
    assert decision.label == UNKNOWN  # no disease reaches 0.6 ...
    assert decision.group == "Tomato"  # ... but the crop does: 0.85
    assert decision.groups == [
        ("Tomato", pytest.approx(0.85)),
        ("Potato", pytest.approx(0.1)),
        ("Grape", pytest.approx(0.05)),
    ]
    assert decide(classes, confidences, 3, 0.9).group == UNKNOWN


def test_group_of():
    assert group_of("Tomato/Late blight") == "Tomato"
    assert group_of("Late blight") is None
    assert group_ranking(["a", "b"], np.array([0.5, 0.5])) == []
