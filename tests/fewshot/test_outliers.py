import json

import numpy as np
import pytest

from kshot.fewshot import outliers
from kshot.fewshot.outliers import cross_label_duplicates, label_disagreements, nearest_others

DIM = 16


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clusters(sizes: dict[str, int], noise: float = 0.05, seed: int = 0):
    """Unit vectors in one tight cluster per label, each cluster along its own axis:
    ``(vectors (n, DIM), labels, ids)``, ids 100, 101, ... in row order."""
    rng = np.random.default_rng(seed)
    vectors, labels = [], []
    for axis, (label, count) in enumerate(sizes.items()):
        centre = np.eye(DIM, dtype=np.float32)[axis]
        vectors.append(centre + rng.normal(0, noise, (count, DIM)))
        labels += [label] * count
    return unit(np.concatenate(vectors)), labels, np.arange(100, 100 + len(labels))


def add(vectors, labels, ids, new_vectors, new_labels, new_ids):
    return (
        np.concatenate([vectors, unit(new_vectors)]),
        labels + list(new_labels),
        np.concatenate([ids, np.asarray(new_ids, dtype=np.int64)]),
    )


def test_image_of_a_inside_b_cluster_is_reported_with_suggestion_b():
    vectors, labels, ids = clusters({"a": 10, "b": 10, "c": 10})
    stray = np.eye(DIM)[1] + 0.01  # in b's cluster, filed under a
    vectors, labels, ids = add(vectors, labels, ids, [stray], ["a"], [7])
    found = label_disagreements(vectors, labels, ids)
    assert [item["id"] for item in found] == [7]
    item = found[0]
    assert item["label"] == "a" and item["suggested"] == "b"
    assert item["disagreement"] == 1.0
    assert len(item["neighbours"]) == 5
    assert {n["label"] for n in item["neighbours"]} == {"b"}
    assert {n["id"] for n in item["neighbours"]} <= set(range(110, 120))
    similarities = [n["similarity"] for n in item["neighbours"]]
    assert similarities == sorted(similarities, reverse=True) and similarities[-1] > 0.9
    assert json.loads(json.dumps(found)) == found  # plain Python values only


def test_clean_library_reports_nothing():
    vectors, labels, ids = clusters({"a": 8, "b": 8, "c": 8})
    assert label_disagreements(vectors, labels, ids) == []
    assert cross_label_duplicates(vectors, labels, ids) == []


def test_reports_sorted_by_disagreement_then_mean_similarity():
    vectors, labels, ids = clusters({"a": 10, "b": 10, "c": 10}, noise=0.02)
    b, c, off = np.eye(DIM)[1], np.eye(DIM)[2], np.eye(DIM)[5]
    near, far = b + 0.01 * c, c + 0.3 * off  # both filed under a: in b's cluster, off c's
    vectors, labels, ids = add(vectors, labels, ids, [far, near], ["a", "a"], [1, 2])
    found = label_disagreements(vectors, labels, ids)
    assert [(item["id"], item["suggested"]) for item in found] == [(2, "b"), (1, "c")]
    # A copy of `near`, also under a: the two copies now have one agreeing neighbour each
    # (disagreement 0.8) and come after `far` (1.0) although their neighbours are closer.
    vectors, labels, ids = add(vectors, labels, ids, [near], ["a"], [3])
    found = label_disagreements(vectors, labels, ids)
    assert [item["id"] for item in found][0] == 1
    assert {item["id"] for item in found[1:]} == {2, 3}
    assert [item["disagreement"] for item in found] == pytest.approx([1.0, 0.8, 0.8])


def test_partial_disagreement_and_threshold():
    # A one-image class "x" sitting where a and b meet: 3 of its 5 neighbours are a, 2 are b.
    vectors, labels, ids = clusters({"a": 3, "b": 2}, noise=0.01)
    vectors, labels, ids = add(vectors, labels, ids, [np.eye(DIM)[0] + np.eye(DIM)[1]], ["x"], [1])
    found = label_disagreements(vectors, labels, ids, neighbours=5, min_disagreement=1.0)
    assert [(item["id"], item["suggested"], item["disagreement"]) for item in found] == [
        (1, "a", 1.0)
    ]
    # b images: neighbours are the other b, x and the three a's: 4 of 5 disagree; a images:
    # two other a's, x and the two b's: 3 of 5.
    lenient = label_disagreements(vectors, labels, ids, neighbours=5, min_disagreement=0.8)
    assert [item["id"] for item in lenient] == [1, 103, 104]
    assert [item["disagreement"] for item in lenient] == pytest.approx([1.0, 0.8, 0.8])
    # At 0.6 the a images qualify too, but two of their neighbours are a's and two b's: their
    # own label ties the best other, so their neighbours do not say another label.
    at_06 = label_disagreements(vectors, labels, ids, min_disagreement=0.6)
    assert [item["id"] for item in at_06] == [1, 103, 104]
    for item in label_disagreements(vectors, labels, ids, min_disagreement=0.0):
        assert item["suggested"] != item["label"]


def test_exact_duplicates_exclude_the_image_itself_by_position():
    copy = np.eye(DIM)[3]
    vectors, labels, ids = clusters({"a": 6})
    # Seven identical vectors: six labelled b, one labelled a. FAISS's order among the ties
    # is arbitrary: the image itself may come after its copies.
    vectors, labels, ids = add(vectors, labels, ids, [copy] * 7, ["b"] * 6 + ["a"], range(1, 8))
    found = label_disagreements(vectors, labels, ids, neighbours=5)
    odd = next(item for item in found if item["id"] == 7)
    assert odd["suggested"] == "b" and odd["disagreement"] == 1.0
    assert 7 not in [n["id"] for n in odd["neighbours"]]
    assert len({n["id"] for n in odd["neighbours"]}) == 5
    for item in label_disagreements(vectors, labels, ids, neighbours=6, min_disagreement=0.0):
        assert item["id"] not in [n["id"] for n in item["neighbours"]]


def test_nearest_others_never_returns_the_row_itself():
    vectors = unit(np.tile(np.eye(DIM)[:1], (9, 1)))  # all identical
    similarities, positions = nearest_others(vectors, 8)
    assert positions.shape == (9, 8)
    for row in range(9):
        assert sorted(positions[row]) == [p for p in range(9) if p != row]
    assert np.allclose(similarities, 1.0)
    with pytest.raises(ValueError):
        nearest_others(vectors, 9)


def test_neighbours_capped_when_classes_are_tiny():
    vectors, labels, ids = clusters({"a": 2, "b": 1})
    found = label_disagreements(vectors, labels, ids, neighbours=5)
    # k = n - 1 = 2: b's two neighbours are both a; each a has one a and one b (0.5 < 0.6).
    assert [item["id"] for item in found] == [102]
    assert found[0]["suggested"] == "a" and len(found[0]["neighbours"]) == 2
    pair = label_disagreements(vectors[1:], labels[1:], ids[1:], neighbours=5)
    assert sorted(item["id"] for item in pair) == [101, 102]
    assert all(len(item["neighbours"]) == 1 for item in pair)
    assert label_disagreements(vectors[:1], labels[:1], ids[:1]) == []
    assert label_disagreements(np.zeros((0, DIM), np.float32), [], np.zeros(0, np.int64)) == []


def test_suggestion_ties_go_to_the_closer_label():
    base = np.eye(DIM)
    vectors = unit([base[0], base[0] + 0.1 * base[1], base[0] + 0.1 * base[1], base[0] + base[2]])
    vectors = np.concatenate([vectors, unit([base[0] + 1.2 * base[2]])])
    # image 0 (label x) has neighbours: two "near" (close), two "far" (farther).
    labels = ["x", "near", "near", "far", "far"]
    found = label_disagreements(vectors, labels, np.arange(5), neighbours=4)
    assert next(item for item in found if item["id"] == 0)["suggested"] == "near"


def test_mismatched_inputs_are_refused():
    vectors, labels, ids = clusters({"a": 3, "b": 3})
    with pytest.raises(ValueError, match="one each"):
        label_disagreements(vectors, labels[:-1], ids)
    with pytest.raises(ValueError, match="one each"):
        cross_label_duplicates(vectors, labels, ids[:-1])
    with pytest.raises(ValueError):
        label_disagreements(vectors, labels, ids, neighbours=0)


def test_duplicate_under_two_labels_is_one_pair():
    vectors, labels, ids = clusters({"a": 5, "b": 5, "c": 5})
    copy = np.eye(DIM)[4]
    vectors, labels, ids = add(vectors, labels, ids, [copy, copy], ["cat", "dog"], [50, 60])
    found = cross_label_duplicates(vectors, labels, ids)
    assert len(found) == 1
    assert found[0]["ids"] == [50, 60] and found[0]["labels"] == ["cat", "dog"]
    assert found[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert json.loads(json.dumps(found)) == found


def test_same_label_duplicates_are_not_reported():
    vectors, labels, ids = clusters({"a": 4, "b": 4})
    copy = np.eye(DIM)[5]
    vectors, labels, ids = add(vectors, labels, ids, [copy] * 3, ["cat"] * 3, [1, 2, 3])
    assert cross_label_duplicates(vectors, labels, ids) == []


def test_every_cross_label_pair_is_found_once_even_among_many_copies():
    # Twelve copies under a and two under b: 24 cross pairs, which a kNN capped at a few
    # neighbours would miss (each copy's nearest ones are its own label's copies).
    copy = np.eye(DIM)[0]
    vectors = unit([copy] * 14)
    labels = ["a"] * 12 + ["b"] * 2
    ids = np.arange(14) * 10
    found = cross_label_duplicates(vectors, labels, ids)
    pairs = [tuple(item["ids"]) for item in found]
    assert len(pairs) == len(set(pairs)) == 24
    assert set(pairs) == {(a, b) for a in ids[:12] for b in ids[12:]}


def test_results_do_not_depend_on_the_query_block_size(monkeypatch):
    vectors, labels, ids = clusters({"a": 6, "b": 6}, noise=0.3, seed=3)
    copies = [np.eye(DIM)[7]] * 3 + [np.eye(DIM)[8]] * 2
    vectors, labels, ids = add(vectors, labels, ids, copies, ["a", "b", "c", "a", "c"], range(5))
    whole = cross_label_duplicates(vectors, labels, ids, min_similarity=0.9)
    monkeypatch.setattr(outliers, "_RANGE_BLOCK", 2)
    assert cross_label_duplicates(vectors, labels, ids, min_similarity=0.9) == whole
    assert len(whole) == 4  # {0,1}, {0,2}, {1,2} and {3,4}


def test_min_similarity_is_inclusive_and_pairs_sorted():
    # Inner products exactly representable in float32: 0.6 and 0.8.
    vectors = np.array([[1, 0, 0], [0.6, 0.8, 0], [0.8, 0.6, 0]], dtype=np.float32)
    labels = ["a", "b", "c"]
    ids = np.array([1, 2, 3])
    found = cross_label_duplicates(vectors, labels, ids, min_similarity=0.6)
    assert [item["ids"] for item in found] == [[2, 3], [1, 3], [1, 2]]
    assert [item["similarity"] for item in found] == pytest.approx([0.96, 0.8, 0.6])
    assert len(cross_label_duplicates(vectors, labels, ids, min_similarity=0.61)) == 2
