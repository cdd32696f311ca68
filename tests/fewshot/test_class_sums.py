"""Per-class sums kept by every write, and the fixed sample a library's decision is fitted on."""

import sqlite3

import numpy as np
import pytest

from kshot.fewshot import class_sums as kept_sums
from kshot.fewshot.catalogue import Catalogue, NewImage

DIM = 8


def image(label: str, n: int) -> NewImage:
    v = np.random.default_rng(n).normal(size=DIM).astype(np.float32)
    return NewImage(label, f"/photos/{label}/{n}.jpg", f"{n:064x}", v / np.linalg.norm(v))


def summed_from_rows(catalogue: Catalogue) -> dict[str, tuple[int, np.ndarray]]:
    entries = catalogue.entries()
    labels = np.asarray(entries.labels)
    return {
        label: ((labels == label).sum(), entries.vectors[labels == label].astype(np.float64).sum(0))
        for label in sorted(set(entries.labels))
    }


def assert_sums_match_rows(catalogue: Catalogue) -> None:
    labels, counts, sums = catalogue.class_sums()
    expected = summed_from_rows(catalogue)
    assert labels == list(expected)
    for label, count, total in zip(labels, counts, sums, strict=True):
        assert count == expected[label][0]
        np.testing.assert_allclose(total, expected[label][1], atol=1e-9)


@pytest.fixture
def catalogue(tmp_path):
    cat = Catalogue(tmp_path / "catalogue.sqlite", DIM, create=True)
    yield cat
    cat.close()


def test_sums_follow_every_add_and_removal(catalogue):
    catalogue.add([image("b", n) for n in range(5)] + [image("a", n) for n in range(5, 12)])
    catalogue.add([image("b", 2), image("c", 12)])  # a duplicate is not counted twice
    assert_sums_match_rows(catalogue)
    catalogue.remove_images([f"{3:064x}", "/photos/a/7.jpg"])
    assert_sums_match_rows(catalogue)
    catalogue.remove_label("c")
    assert_sums_match_rows(catalogue)
    assert catalogue.class_sums()[0] == ["a", "b"]  # a class with no image left has no row
    assert catalogue.class_counts() == [("a", 6), ("b", 4)]


def test_a_catalogue_made_before_the_sums_is_summed_then_filled_by_its_first_write(tmp_path):
    path = tmp_path / "catalogue.sqlite"
    cat = Catalogue(path, DIM, create=True)
    cat.add([image("a", n) for n in range(4)] + [image("b", n) for n in range(4, 6)])
    cat.close()
    with sqlite3.connect(path) as db:  # as an older kshot left it
        db.execute("DROP TABLE class_sums")
        db.execute("DELETE FROM meta WHERE key = 'class_sums'")
    cat = Catalogue(path, DIM)
    assert_sums_match_rows(cat)  # summed from the rows, nothing written
    with sqlite3.connect(path) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'class_sums'").fetchall()
    cat.add([image("b", 6)])
    with sqlite3.connect(path) as db:
        kept = dict(db.execute("SELECT label, count FROM class_sums").fetchall())
    assert kept == {"a": 4, "b": 3}
    assert_sums_match_rows(cat)


def test_the_decision_sample_is_the_smallest_hashes_of_each_class(catalogue):
    ids = catalogue.add([image("a", n) for n in range(10, 0, -1)] + [image("b", 20)])
    by_sha = {f"{n:064x}": i for n, i in zip(range(10, 0, -1), ids, strict=False)}
    sample = catalogue.decision_sample(3)
    expected = sorted([by_sha[f"{n:064x}"] for n in (1, 2, 3)] + [ids[-1]])
    assert sample.tolist() == expected
    catalogue.add([image("a", 30)])  # a larger hash: the sample stays
    assert catalogue.decision_sample(3).tolist() == expected
    (new,) = catalogue.add([NewImage("a", "/x.jpg", "0" * 64, image("a", 31).vector)])
    assert new in catalogue.decision_sample(3).tolist()  # the smallest hash enters it
    assert len(catalogue.decision_sample(100)) == len(catalogue)


def test_a_sample_is_redrawn_only_for_the_classes_whose_mark_moved():
    counts, sums = np.array([2, 3]), np.arange(2 * DIM, dtype=np.float64).reshape(2, DIM)
    before = kept_sums.marks(counts, sums)
    sample = kept_sums.DecisionSample(np.array([1, 2, 5, 7]), np.array([0, 1, 0, 1]), before)
    asked: list[list[int]] = []

    def sample_of(codes):
        asked.append(codes)
        return np.array([2, 7]) if codes == [1] else np.array([2, 8])

    assert sample.still_drawn(before, sample_of) and asked == []  # nothing moved: nothing read
    moved = kept_sums.marks(np.array([2, 4]), sums)  # class 1 grew
    assert moved[0] == before[0] and moved[1] != before[1]
    assert sample.still_drawn(moved, sample_of) and asked == [[1]]
    assert not sample.still_drawn(moved, lambda codes: np.array([2, 8]))  # its sample changed
    assert not sample.still_drawn(moved[:1], sample_of)  # a class fewer
