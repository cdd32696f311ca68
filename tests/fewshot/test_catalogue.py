import sqlite3

import numpy as np
import pytest

from kshot.errors import KshotError
from kshot.fewshot.catalogue import Catalogue, NewImage

DIM = 8


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def image(label: str, sha: str, seed: int = 0, source: str | None = None) -> NewImage:
    return NewImage(label, source or f"/photos/{label}/{sha}.jpg", sha, vec(seed))


@pytest.fixture
def catalogue(tmp_path):
    cat = Catalogue(tmp_path / "catalogue.sqlite", DIM, create=True)
    yield cat
    cat.close()


def test_new_catalogue_is_empty(catalogue):
    assert len(catalogue) == 0
    assert catalogue.class_counts() == []
    assert catalogue.ids().shape == (0,)
    entries = catalogue.entries()
    assert entries.ids.shape == (0,) and entries.labels == []
    assert entries.vectors.shape == (0, DIM)


def test_add_returns_new_ids(catalogue):
    ids = catalogue.add([image("a", "s1", 1), image("a", "s2", 2), image("b", "s3", 3)])
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == 3
    assert ids == sorted(ids)
    assert len(catalogue) == 3
    assert catalogue.ids().tolist() == ids


def test_duplicate_label_and_sha_is_ignored(catalogue):
    (first,) = catalogue.add([image("a", "same", 1)])
    ids = catalogue.add([image("a", "same", 2, source="/elsewhere/copy.jpg"), image("a", "new", 3)])
    assert ids[0] is None
    assert ids[1] is not None and ids[1] != first
    assert len(catalogue) == 2
    entries = catalogue.entries()
    assert np.array_equal(entries.vectors[0], vec(1))  # the first one stays


def test_duplicate_within_one_batch(catalogue):
    ids = catalogue.add([image("a", "same", 1), image("a", "same", 1)])
    assert ids[0] is not None and ids[1] is None
    assert len(catalogue) == 1


def test_same_sha_under_another_label_is_allowed(catalogue):
    ids = catalogue.add([image("a", "same", 1), image("b", "same", 1)])
    assert None not in ids
    assert catalogue.class_counts() == [("a", 1), ("b", 1)]


def test_ids_are_never_reused(catalogue):
    ids = catalogue.add([image("a", f"s{i}", i) for i in range(3)])
    removed = catalogue.remove_label("a")
    assert sorted(removed.tolist()) == ids
    assert removed.dtype == np.int64
    assert len(catalogue) == 0
    (new,) = catalogue.add([image("a", "s0", 0)])  # the very same image again
    assert new > max(ids)


def test_ids_are_never_reused_across_reopening(tmp_path):
    path = tmp_path / "c.sqlite"
    cat = Catalogue(path, DIM, create=True)
    ids = cat.add([image("a", "x", 1), image("b", "y", 2)])
    cat.remove_label("b")
    cat.close()
    cat = Catalogue(path, DIM)
    (new,) = cat.add([image("c", "z", 3)])
    assert new > max(ids)
    assert cat.ids().tolist() == [ids[0], new]
    cat.close()


def test_remove_unknown_label(catalogue):
    catalogue.add([image("a", "x", 1)])
    assert catalogue.remove_label("zzz").shape == (0,)
    assert len(catalogue) == 1


def test_entries_round_trip_vectors_exactly(tmp_path):
    path = tmp_path / "c.sqlite"
    cat = Catalogue(path, DIM, create=True)
    images = [image(label, f"s{i}", i) for i, label in enumerate(["b", "a", "b", "c"])]
    ids = cat.add(images)
    cat.close()
    entries = Catalogue(path, DIM).entries()
    assert entries.ids.tolist() == ids
    assert entries.labels == ["b", "a", "b", "c"]
    assert entries.vectors.dtype == np.float32
    assert np.array_equal(entries.vectors, np.stack([im.vector for im in images]))


def test_float64_vectors_are_stored_as_float32(catalogue):
    v = np.random.default_rng(0).normal(size=DIM)
    catalogue.add([NewImage("a", "/x", "s", v)])
    assert np.array_equal(catalogue.entries().vectors[0], v.astype(np.float32))


def test_class_counts_sorted_by_label(catalogue):
    catalogue.add(
        [image("zebra", "1"), image("ant", "2"), image("zebra", "3"), image("Été", "4")]
        + [image("ant", str(i)) for i in range(5, 8)]
    )
    assert catalogue.class_counts() == [("ant", 4), ("zebra", 2), ("Été", 1)]


def test_labels_of(catalogue):
    ids = catalogue.add([image("a", "1"), image("b", "2"), image("a", "3")])
    found = catalogue.labels_of(np.array([[ids[2], -1, ids[0]], [ids[1], 999, -1]]))
    assert found == {ids[0]: "a", ids[1]: "b", ids[2]: "a"}
    assert catalogue.labels_of(np.array([], dtype=np.int64)) == {}


def test_labels_of_more_ids_than_sqlite_parameters(catalogue):
    ids = catalogue.add([image(f"l{i % 7}", str(i), i) for i in range(1200)])
    found = catalogue.labels_of(np.array(ids))
    assert len(found) == 1200
    assert all(found[i] == f"l{j % 7}" for j, i in enumerate(ids))


def test_unicode_labels_round_trip(catalogue):
    labels = ["Mildiou de la tomate", "トマト", "🍅"]
    catalogue.add([image(label, str(i)) for i, label in enumerate(labels)])
    assert catalogue.entries().labels == labels


def test_missing_file_without_create(tmp_path):
    path = tmp_path / "absent.sqlite"
    with pytest.raises(KshotError) as caught:
        Catalogue(path, DIM)
    assert str(path) in str(caught.value)
    assert "missing" in str(caught.value)
    assert not path.exists()


@pytest.mark.parametrize("content", [b"garbage " * 200, b"SQLite format 3\x00" + b"\xff" * 200])
def test_garbage_file_is_damaged(tmp_path, content):
    path = tmp_path / "catalogue.sqlite"
    path.write_bytes(content)
    with pytest.raises(KshotError) as caught:
        Catalogue(path, DIM)
    assert str(path) in str(caught.value)
    assert "damaged" in str(caught.value)


# --- stamp, journal, single images, concurrency ---------------------------------------------------


def test_stamp_changes_with_every_commit_and_is_the_same_in_every_connection(tmp_path):
    path = tmp_path / "catalogue.sqlite"
    writer, reader = Catalogue(path, DIM, create=True), None
    reader = Catalogue(path, DIM)
    stamps = [writer.stamp()]
    writer.add([image("a", "s1", 1)])
    stamps.append(writer.stamp())
    assert reader.stamp() == stamps[-1]
    writer.add([image("a", "s1", 1)])  # a duplicate: nothing inserted, still a commit
    writer.remove_label("a")
    writer.add([image("a", "s1", 1)])  # the same row again: count and content as before
    stamps += [writer.stamp()]
    assert len(set(stamps)) == 3 and reader.stamp() == stamps[-1]
    other = Catalogue(tmp_path / "other.sqlite", DIM, create=True)
    assert other.stamp().split(":")[0] != stamps[-1].split(":")[0]  # another library's id


def test_the_journal_gives_what_was_added_and_removed_since_a_position(catalogue):
    catalogue.add([image("a", "s1", 1), image("b", "s2", 2)])
    position = catalogue.journal_position()
    new = catalogue.add([image("c", "s3", 3)])
    catalogue.remove_label("a")
    ids, vectors = catalogue.added_after(position[0])
    assert ids.tolist() == new and np.array_equal(vectors[0], vec(3))
    assert catalogue.removed_after(position[1]).tolist() == [1]
    catalogue.remove_label("c")
    assert catalogue.added_after(position[0])[0].tolist() == []  # added, then removed
    assert catalogue.journal_position()[0] == new[0]  # ids given stay counted


def test_remove_images_by_sha256_or_by_source(catalogue):
    catalogue.add([image("a", "s1", 1), image("a", "s2", 2), image("b", "s3", 3, "/p/x.jpg")])
    removed = catalogue.remove_images(["s1", "/p/x.jpg", "nothing"])
    assert [(r.label, r.sha256) for r in removed] == [("a", "s1"), ("b", "s3")]
    assert catalogue.class_counts() == [("a", 1)]


def test_labels_holding_names_the_first_label(catalogue):
    catalogue.add([image("first", "s1", 1)])
    catalogue.add([image("second", "s1", 1)])
    assert catalogue.labels_holding(["s1", "s9"]) == {"s1": "first"}
    assert catalogue.pairs_held({("second", "s1"), ("third", "s1")}) == {("second", "s1")}


def test_a_write_held_by_another_process_is_busy_not_damaged(tmp_path, monkeypatch):
    from kshot.fewshot import catalogue as module

    path = tmp_path / "catalogue.sqlite"
    Catalogue(path, DIM, create=True).close()
    monkeypatch.setattr(module, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(KshotError) as caught:
            Catalogue(path, DIM).add([image("a", "s1", 1)])
    finally:
        holder.execute("ROLLBACK")
    assert "another process holds the library" in str(caught.value)
    assert "damaged" not in str(caught.value)


def test_a_catalogue_made_before_the_journal_is_stamped_and_migrated(tmp_path):
    path = tmp_path / "catalogue.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL, "
        "source TEXT NOT NULL, sha256 TEXT NOT NULL, enrolled_at TEXT NOT NULL, "
        "vector BLOB NOT NULL, UNIQUE (label, sha256));"
    )
    old.close()
    catalogue = Catalogue(path, DIM)
    before = catalogue.stamp()
    assert catalogue.library_id() is None and catalogue.removed_after(0).tolist() == []
    catalogue.add([image("a", "s1", 1)])
    assert catalogue.stamp() != before
    catalogue.remove_label("a")
    assert catalogue.removed_after(0).tolist() == [1]


def test_the_count_kept_by_writes_is_the_rows_count(catalogue):
    catalogue.add([image("a", "s1", 1), image("a", "s2", 2), image("a", "s1", 1)])
    catalogue.remove_images(["s2", "absent"])
    catalogue.add([image("b", "s3", 3)])
    catalogue.remove_label("nothing")
    assert len(catalogue) == 2 == catalogue._query("SELECT COUNT(*) FROM images")[0][0]


def test_in_chunks_gives_every_row_once_by_id(catalogue):
    ids = catalogue.add([image("a", f"s{n}", n) for n in range(7)])
    catalogue.remove_images(["s3"])
    with catalogue.snapshot():
        chunks = list(catalogue.in_chunks(2))
    assert [len(chunk_ids) for chunk_ids, _ in chunks] == [2, 2, 2]
    assert np.concatenate([c for c, _ in chunks]).tolist() == [i for i in ids if i != ids[3]]
    expected = catalogue.entries().vectors
    np.testing.assert_array_equal(np.concatenate([v for _, v in chunks]), expected)
