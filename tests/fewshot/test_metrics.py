import json
import warnings

import numpy as np
import pytest

from kshot.fewshot.labels import UNKNOWN
from kshot.fewshot.metrics import classification_metrics, retrieval_metrics

# Six queries, three classes; decisions: a, b, unknown, b, c, c (3 right).
TRUE = ["a", "a", "a", "b", "b", "c"]
RANKED = [
    ["a", "b", "c"],  # right
    ["b", "a", "c"],  # wrong, a second
    [UNKNOWN, "a", "b"],  # rejected: wrong, a second
    ["b", "a", "c"],  # right
    ["c", "a", "b"],  # wrong, b third
    ["c", "b", "a"],  # right
]


def at(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane at these angles."""
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def test_accuracy_and_top_k():
    result = classification_metrics(TRUE, RANKED, ks=(1, 2, 3, 5))
    assert result["queries"] == 6
    assert result["accuracy"] == pytest.approx(3 / 6)
    # top-2 misses only query 4 (b third); top-3 and top-5 miss none
    assert result["top_k_accuracy"] == pytest.approx({"1": 0.5, "2": 5 / 6, "3": 1.0, "5": 1.0})


def test_per_class_and_weighted_precision_recall_f1():
    result = classification_metrics(TRUE, RANKED)
    per_class = result["per_class"]
    assert list(per_class) == ["a", "b", "c"]  # the true classes only, not "unknown"
    # a: predicted once (query 0, right): P = 1/1; found 1 of 3: R = 1/3; F1 = 2PR/(P+R) = 1/2
    assert per_class["a"] == pytest.approx(
        {"precision": 1, "recall": 1 / 3, "f1": 0.5, "support": 3}
    )
    # b: predicted for queries 1 (a) and 3 (b): P = 1/2; found 1 of 2: R = 1/2; F1 = 1/2
    assert per_class["b"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    # c: predicted for queries 4 (b) and 5 (c): P = 1/2; found 1 of 1: R = 1; F1 = 2/3
    assert per_class["c"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    # weighted by support 3, 2, 1 over 6: P = (3 + 1 + 0.5)/6, R = (1 + 1 + 1)/6,
    # F1 = (1.5 + 1 + 2/3)/6 = 19/36
    assert result["weighted"] == pytest.approx({"precision": 0.75, "recall": 0.5, "f1": 19 / 36})


def test_unknown_is_wrong_and_a_confusion_column():
    result = classification_metrics(TRUE, RANKED)
    assert result["confusion"]["labels"] == ["a", "b", "c", UNKNOWN]
    assert result["confusion"]["matrix"] == [
        [1, 1, 0, 1],  # a: right, as b, unknown
        [0, 1, 1, 0],  # b: right, as c
        [0, 0, 1, 0],  # c: right
        [0, 0, 0, 0],  # no query is of class unknown
    ]


def test_all_rejected_scores_zero():
    result = classification_metrics(["a", "b"], [[UNKNOWN, "a"], [UNKNOWN, "b"]])
    assert result["accuracy"] == 0.0
    assert result["top_k_accuracy"]["1"] == 0.0 and result["top_k_accuracy"]["3"] == 1.0
    assert result["weighted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert result["confusion"]["matrix"] == [[0, 0, 1], [0, 0, 1], [0, 0, 0]]


def test_class_predicted_but_not_in_test_set_gets_a_column():
    result = classification_metrics(["a", "a", "b"], [["a"], ["z"], ["b"]])
    assert result["confusion"]["labels"] == ["a", "b", "z"]  # no unknown: never answered
    assert result["confusion"]["matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert list(result["per_class"]) == ["a", "b"]
    assert result["per_class"]["a"]["recall"] == 0.5


def test_classification_result_is_json():
    result = classification_metrics(TRUE, RANKED)
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="2 true labels but 1"):
        classification_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no queries"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match="at least one ranked label"):
        classification_metrics(["a"], [[]])


def test_retrieval_metrics_by_hand():
    # references: a at 0 and 40 degrees; b at 20, 90, 110 degrees. R(a) = 2, R(b) = 3.
    references, reference_labels = at(0, 40, 20, 90, 110), ["a", "a", "b", "b", "b"]
    queries, query_labels = at(5, 70, 28, 95), ["a", "b", "b", "a"]
    # query a@5:  nearest a, b, a.  P@1 1; R-prec 1/2; AP@R (1/1)/2 = 1/2
    # query b@70: nearest b, a, b.  P@1 1; R-prec 2/3; AP@R (1/1 + 2/3)/3 = 5/9
    # query b@28: nearest b, a, a.  P@1 1; R-prec 1/3; AP@R (1/1)/3 = 1/3
    # query a@95: nearest b, b.     P@1 0; R-prec 0;   AP@R 0
    result = retrieval_metrics(queries, query_labels, references, reference_labels)
    assert result == pytest.approx(
        {
            "queries": 4,
            "precision_at_1": 3 / 4,
            "r_precision": (1 / 2 + 2 / 3 + 1 / 3 + 0) / 4,
            "mean_average_precision_at_r": (1 / 2 + 5 / 9 + 1 / 3 + 0) / 4,
        }
    )
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_retrieval_metrics_same_set_leaves_each_query_out():
    vectors, labels = at(0, 30, 50, 90, 105), ["a", "a", "b", "b", "b"]
    # each image against the four others; R(a) = 1, R(b) = 2
    # a@0:   a.       P@1 1, R-prec 1,   AP@R 1
    # a@30:  b.       P@1 0, R-prec 0,   AP@R 0
    # b@50:  a, b.    P@1 0, R-prec 1/2, AP@R (1/2)/2 = 1/4
    # b@90:  b, b.    all 1
    # b@105: b, b.    all 1
    result = retrieval_metrics(vectors, labels, vectors, labels, same_set=True)
    assert result == pytest.approx(
        {
            "queries": 5,
            "precision_at_1": 3 / 5,
            "r_precision": 3.5 / 5,
            "mean_average_precision_at_r": 3.25 / 5,
        }
    )
    # as two different sets each query would find itself first
    assert retrieval_metrics(vectors, labels, vectors, labels)["precision_at_1"] == 1.0


def test_retrieval_leaves_out_queries_without_their_class_in_the_references():
    references, reference_labels = at(0, 40, 20, 90, 110), ["a", "a", "b", "b", "b"]
    result = retrieval_metrics(at(5, 95, 60), ["a", "a", "c"], references, reference_labels)
    assert result["queries"] == 2
    assert result["precision_at_1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(at(5), ["c"], references, reference_labels)
    with pytest.raises(ValueError, match="2 query vectors but 1"):
        retrieval_metrics(at(5, 6), ["a"], references, reference_labels)


def test_retrieval_takes_read_only_arrays_without_warning():
    vectors = at(0, 30, 50, 90, 105)
    vectors.setflags(write=False)  # as the catalogue's vectors are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = retrieval_metrics(vectors, list("aabbb"), vectors, list("aabbb"), same_set=True)
    assert result["precision_at_1"] == pytest.approx(3 / 5)
