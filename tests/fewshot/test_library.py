import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kshot.embedder.checkpoint import load_checkpoint, model_hash, save_checkpoint
from kshot.errors import InputError, KshotError
from kshot.fewshot.labels import UNKNOWN
from kshot.fewshot.library import (
    CATALOGUE,
    INDEX,
    MANIFEST,
    MODEL,
    Library,
    Manifest,
    folder_items,
)
from kshot.index.vector_index import IndexSpec, VectorIndex

SPEC = IndexSpec(use_gpu=False)
CLASSES = {"Mildiou de la tomate": 3, "potato": 3, "トマト": 2}


def items_of(photos: dict[str, list[Path]]) -> list[tuple[Path, str]]:
    return [(path, label) for label, paths in photos.items() for path in paths]


def all_paths(photos: dict[str, list[Path]]) -> list[Path]:
    return [path for paths in photos.values() for path in paths]


def answers(library: Library, paths, method: str = "prototype", **kwargs):
    """(label, score, top_k) of each query, or the error's reason."""
    out = []
    for result in library.query(paths, method=method, **kwargs):
        if result.error is not None:
            out.append(("error", result.error.reason))
        else:
            d = result.decision
            out.append((d.label, round(d.score, 5), [(lab, round(s, 5)) for lab, s in d.top_k]))
    return out


def index_ids(root: Path) -> list[int]:
    """Ids of the index a process that opens the library searches: the saved index brought up
    to date from the catalogue's journal, or rebuilt."""
    return sorted(Library.open(root, device="cpu").index.ids().tolist())


def catalogue_ids(library: Library) -> list[int]:
    return library.catalogue.ids().tolist()


@pytest.fixture
def photos(tmp_path, make_class_images):
    return make_class_images(tmp_path / "photos", CLASSES)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "lib"


@pytest.fixture
def library(root, conv4_embedder, photos) -> Library:
    lib = Library.create(root, conv4_embedder, {"trained": False}, SPEC, device="cpu")
    report = lib.enroll(items_of(photos))
    assert len(report.added) == sum(CLASSES.values())
    return lib


# --- create and open ----------------------------------------------------------------------------


def test_create_writes_a_whole_library(root, conv4_embedder):
    lib = Library.create(root, conv4_embedder, {"note": "x"}, SPEC, device="cpu")
    for name in (MANIFEST, MODEL, CATALOGUE, INDEX):
        assert (root / name).is_file()
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["format"] == "kshot-library" and manifest["version"] == 1
    assert manifest["model_sha256"] == model_hash(conv4_embedder)
    assert manifest["embedding_dim"] == 64
    assert manifest["index"]["kind"] == "flat"
    assert lib.classes() == []
    embedder, info = load_checkpoint(root / MODEL)
    assert info == {"note": "x"}
    assert model_hash(embedder) == model_hash(conv4_embedder)
    assert len(VectorIndex.load(root / INDEX, SPEC)) == 0


def test_create_then_open_round_trip(library, root, photos):
    reopened = Library.open(root, device="cpu")
    assert reopened.manifest == library.manifest
    assert reopened.classes() == library.classes()
    assert model_hash(reopened.embedder) == library.manifest.model_sha256
    paths = all_paths(photos)
    assert answers(reopened, paths) == answers(library, paths)
    assert answers(reopened, paths, "knn") == answers(library, paths, "knn")


def test_manifest_json_round_trip():
    manifest = Manifest("ab" * 32, 64, IndexSpec(kind="hnsw", hnsw_m=8))
    data = json.loads(manifest.to_json())
    assert data["index"]["hnsw_m"] == 8
    assert Manifest(data["model_sha256"], data["embedding_dim"], IndexSpec(**data["index"])) == (
        manifest
    )


def test_manifest_records_the_precision_and_reads_older_ones_as_fp32(tmp_path):
    manifest = Manifest("ab" * 32, 64, IndexSpec(), precision="bf16")
    data = json.loads(manifest.to_json())
    assert data["precision"] == "bf16"
    path = tmp_path / "manifest.json"
    path.write_text(manifest.to_json())
    assert Manifest.read(path) == manifest
    del data["precision"]  # a library made before precisions were recorded
    path.write_text(json.dumps(data))
    assert Manifest.read(path).precision == "fp32"
    data["precision"] = "fp8"
    path.write_text(json.dumps(data))
    with pytest.raises(KshotError, match="unknown precision"):
        Manifest.read(path)


def test_create_into_an_existing_empty_directory(root, conv4_embedder):
    root.mkdir()
    Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    assert (root / MANIFEST).is_file()


def test_create_into_a_non_empty_directory_is_refused(root, conv4_embedder):
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(KshotError, match="not an empty directory"):
        Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt"]


def test_create_over_a_file_is_refused(root, conv4_embedder):
    root.write_text("a file")
    with pytest.raises(KshotError, match="already exists"):
        Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    assert root.read_text() == "a file"


def test_create_over_an_existing_library_is_refused(library, root, conv4_embedder):
    before = catalogue_ids(library)
    with pytest.raises(KshotError):
        Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    assert catalogue_ids(Library.open(root, device="cpu")) == before


def test_open_a_missing_directory(tmp_path):
    with pytest.raises(KshotError, match="does not exist"):
        Library.open(tmp_path / "nothing")


def test_open_a_directory_that_is_not_a_library(tmp_path):
    with pytest.raises(KshotError) as caught:
        Library.open(tmp_path)
    assert MANIFEST in str(caught.value)


# --- enroll -------------------------------------------------------------------------------------


def test_enroll_reports_added(root, conv4_embedder, photos):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    items = items_of(photos)
    progress = []
    report = lib.enroll(items, on_progress=progress.append)
    assert report.added == [(str(path), label) for path, label in items]
    assert report.duplicates == [] and report.errors == []
    assert sum(progress) == len(items)
    assert lib.classes() == sorted(CLASSES.items())
    assert len(catalogue_ids(lib)) == len(items)
    assert index_ids(root) == catalogue_ids(lib)


def test_enroll_stores_resolved_sources_and_digests(root, conv4_embedder, photos, monkeypatch):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    path, label = items_of(photos)[0]
    monkeypatch.chdir(path.parent)
    lib.enroll([(Path(path.name), label)])
    rows = lib.catalogue._db.execute("SELECT label, source, sha256 FROM images").fetchall()
    assert rows == [(label, str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest())]


def test_enrolling_the_same_file_again_adds_nothing(library, root, photos):
    before = library.classes()
    ids = catalogue_ids(library)
    items = items_of(photos)[:2]
    report = library.enroll(items)
    assert report.added == []
    assert report.duplicates == [(str(p), label) for p, label in items]
    assert library.classes() == before
    assert catalogue_ids(library) == ids
    assert index_ids(root) == ids


def test_a_copy_of_an_enrolled_file_is_a_duplicate(library, photos, tmp_path):
    label = "potato"
    copy = tmp_path / "copy.png"
    shutil.copy(photos[label][0], copy)
    report = library.enroll([(copy, label)])
    assert report.duplicates == [(str(copy), label)]
    assert dict(library.classes())[label] == CLASSES[label]


def test_the_same_file_under_another_label_is_refused_naming_the_first(library, photos):
    path = photos["potato"][0]
    report = library.enroll([(path, "pomme de terre")])
    assert report.added == []
    assert [e.source for e in report.errors] == [str(path)]
    assert "already enrolled as 'potato'" in report.errors[0].reason
    assert "--allow-relabel" in report.errors[0].reason
    assert "pomme de terre" not in dict(library.classes())


def test_the_same_file_under_another_label_is_added_when_asked(library, root, photos):
    path = photos["potato"][0]
    report = library.enroll([(path, "pomme de terre")], allow_relabel=True)
    assert report.added == [(str(path), "pomme de terre")]
    assert dict(library.classes())["pomme de terre"] == 1
    assert dict(library.classes())["potato"] == CLASSES["potato"]
    assert index_ids(root) == catalogue_ids(library)


def test_the_same_file_twice_in_one_batch(root, conv4_embedder, photos):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    path = photos["potato"][0]
    report = lib.enroll([(path, "potato"), (path, "potato")])
    assert report.added == [(str(path), "potato")]
    assert report.duplicates == [(str(path), "potato")]
    assert lib.classes() == [("potato", 1)]


def test_bad_files_are_reported_and_good_ones_enrolled(root, conv4_embedder, photos, tmp_path):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    text = tmp_path / "text.jpg"
    text.write_text("no pixels here")
    missing = tmp_path / "missing.png"
    good = photos["potato"]
    items = [(good[0], "potato"), (text, "potato"), (good[1], "potato"), (missing, "other")]
    report = lib.enroll(items)
    assert report.added == [(str(good[0]), "potato"), (str(good[1]), "potato")]
    assert [e.source for e in report.errors] == [str(text), str(missing)]
    assert all(isinstance(e, InputError) for e in report.errors)
    assert lib.classes() == [("potato", 2)]
    assert index_ids(root) == catalogue_ids(lib)


@pytest.mark.parametrize("label", ["unknown", "Unknown", "to\tmato", "to\nmato"], ids=repr)
def test_enroll_refuses_labels_that_cannot_be_classes(root, conv4_embedder, photos, label):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    try:
        report = lib.enroll([(photos["potato"][0], label)])
    except (KshotError, ValueError):
        pass
    else:
        assert report.added == []
    assert lib.classes() == []


def test_enroll_normalises_labels(root, conv4_embedder, photos):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    lib.enroll([(photos["potato"][0], "E\u0301te\u0301"), (photos["potato"][1], "Été")])
    assert lib.classes() == [("Été", 2)]


def test_a_batch_of_only_bad_files(root, conv4_embedder, tmp_path):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    report = lib.enroll([(bad, "x")])
    assert report.added == [] and len(report.errors) == 1
    assert lib.classes() == []


# --- query --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["prototype", "knn"])
def test_query_finds_enrolled_images(library, photos, method):
    paths = all_paths(photos)
    results = library.query(paths, method=method, top_k=5)
    assert [r.image for r in results] == [str(p) for p in paths]
    for (_, label), result in zip(items_of(photos), results, strict=True):
        assert result.error is None
        decision = result.decision
        assert decision.label == label
        assert decision.score == pytest.approx(1.0, abs=1e-3)
        assert decision.top_k[0] == (label, decision.score)
        assert len(decision.top_k) == len(CLASSES)
        scores = [s for _, s in decision.top_k]
        assert scores == sorted(scores, reverse=True)
        assert {lab for lab, _ in decision.top_k} == set(CLASSES)


@pytest.mark.parametrize("method", ["prototype", "knn"])
def test_query_top_k_truncates(library, photos, method):
    (result,) = library.query([photos["potato"][0]], method=method, top_k=2)
    assert len(result.decision.top_k) == 2
    assert result.decision.top_k[0][0] == "potato"


def test_query_of_a_new_image_of_a_known_class(library, photos, tmp_path, make_class_images):
    # the pattern of "potato" (seed 1), with noise none of its 3 enrolled images has
    new = make_class_images(tmp_path / "new", {"potato": 5}, first_seed=1)["potato"][4]
    assert new.read_bytes() not in [p.read_bytes() for p in photos["potato"]]
    for method in ("prototype", "knn"):
        (result,) = library.query([new], method=method)
        assert result.decision.label == "potato"


def test_prototype_confidences_rank_classes_by_cosine_to_their_means(library, photos):
    from kshot.embedder.inference import embed_files

    query = photos["トマト"][0]
    (result,) = library.query([query], method="prototype", top_k=10, threshold=0.0)
    vector = embed_files(library.embedder, [query]).vectors[0]
    cosines = {}
    for label in photos:
        mean = embed_files(library.embedder, photos[label]).vectors.sum(axis=0)
        cosines[label] = float(vector @ mean / np.linalg.norm(mean))
    assert [label for label, _ in result.decision.top_k] == sorted(cosines, key=cosines.get)[::-1]
    assert 0.0 < sum(score for _, score in result.decision.top_k) <= 1.0 + 1e-9


@pytest.mark.parametrize("method", ["prototype", "knn", "logistic"])
def test_threshold_of_one_gives_unknown_unless_certain(library, photos, method):
    results = library.query(all_paths(photos), method=method, threshold=1.0)
    for (_, label), result in zip(items_of(photos), results, strict=True):
        assert result.decision.top_k[0][0] == label  # the best class is still reported
        expected = label if result.decision.score >= 1.0 else UNKNOWN
        assert result.decision.label == expected
    accepted = library.query(all_paths(photos), method=method, threshold=0.0)
    assert [r.decision.label for r in accepted] == [label for _, label in items_of(photos)]


def test_query_with_bad_files(library, photos, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("x")
    good = photos["potato"][0]
    results = library.query([bad, good, tmp_path / "missing.png"])
    assert [r.image for r in results] == [str(bad), str(good), str(tmp_path / "missing.png")]
    assert results[0].decision is None and isinstance(results[0].error, InputError)
    assert results[1].error is None and results[1].decision.label == "potato"
    assert results[2].decision is None and "does not exist" in results[2].error.reason


def test_query_an_empty_library(root, conv4_embedder, photos):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    for method in ("prototype", "knn"):
        with pytest.raises(KshotError, match="no enrolled images"):
            lib.query([photos["potato"][0]], method=method)


def test_query_unknown_method(library, photos):
    with pytest.raises(KshotError, match="unknown method"):
        library.query([photos["potato"][0]], method="svm")


def test_knn_with_fewer_images_than_neighbours(root, conv4_embedder, photos):
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    lib.enroll([(photos["potato"][0], "potato")])
    (result,) = lib.query([photos["potato"][0]], method="knn", neighbours=10)
    assert result.decision.label == "potato"
    assert result.decision.top_k == [("potato", pytest.approx(1.0, abs=1e-4))]


def test_query_sees_images_enrolled_after_a_first_query(library, photos, tmp_path, make_image):
    paths = all_paths(photos)
    library.query(paths[:1])
    library.query(paths[:1], method="knn")
    new = make_image(tmp_path / "new.png", size=(56, 56), seed=50)
    library.enroll([(new, "new class")])
    for method in ("prototype", "knn"):
        (result,) = library.query([new], method=method)
        assert result.decision.label == "new class"
        assert result.decision.score == pytest.approx(1.0, abs=1e-4)


# --- forget -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["prototype", "knn"])
def test_forget_removes_a_label(library, root, photos, method):
    library.query(all_paths(photos), method=method)  # warm any cache first
    assert library.forget("potato") == CLASSES["potato"]
    assert "potato" not in dict(library.classes())
    assert len(library.classes()) == len(CLASSES) - 1
    assert index_ids(root) == catalogue_ids(library)
    assert len(catalogue_ids(library)) == sum(CLASSES.values()) - CLASSES["potato"]
    for result in library.query(all_paths(photos), method=method, top_k=10):
        assert result.decision.label != "potato"
        assert "potato" not in [label for label, _ in result.decision.top_k]
    reopened = Library.open(root, device="cpu")
    assert "potato" not in dict(reopened.classes())
    for result in reopened.query(photos["potato"], method=method, top_k=10):
        assert "potato" not in [label for label, _ in result.decision.top_k]


def test_forget_an_unknown_label(library, root):
    before = catalogue_ids(library)
    assert library.forget("never enrolled") == 0
    assert catalogue_ids(library) == before == index_ids(root)


def test_forget_then_enroll_again_gets_new_ids(library, root, photos):
    old = set(catalogue_ids(library))
    library.forget("potato")
    report = library.enroll([(p, "potato") for p in photos["potato"]])
    assert len(report.added) == CLASSES["potato"]
    new = set(catalogue_ids(library)) - old
    assert len(new) == CLASSES["potato"] and min(new) > max(old)
    assert index_ids(root) == catalogue_ids(library)
    (result,) = library.query([photos["potato"][0]], method="knn")
    assert result.decision.label == "potato"


def test_forget_everything_then_query(library, photos):
    for label in CLASSES:
        library.forget(label)
    assert library.classes() == []
    with pytest.raises(KshotError, match="no enrolled images"):
        library.query([photos["potato"][0]])


def test_a_reader_does_not_answer_a_label_forgotten_by_another_writer(library, root, photos):
    reader = Library.open(root, device="cpu")
    reader.query(photos["potato"][:1])  # builds the reader's prototypes
    library.forget("potato")
    for result in reader.query(photos["potato"], top_k=10):
        assert "potato" not in [label for label, _ in result.decision.top_k]


# --- the index is derived: rebuilt when missing, damaged or stale ------------------------------


@pytest.mark.parametrize("damage", ["delete", "garbage", "empty", "stale"])
def test_damaged_index_is_rebuilt(library, root, photos, tmp_path, damage, conv4_embedder):
    paths = all_paths(photos)
    expected = answers(library, paths, "knn")
    path = root / INDEX
    if damage == "delete":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage\xff" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid index that misses the last image
        stale = VectorIndex.load(path, SPEC)
        stale.remove(np.array(catalogue_ids(library)[-1:]))
        stale.save(path)
    reopened = Library.open(root, device="cpu")
    assert answers(reopened, paths, "knn") == expected
    assert answers(reopened, paths) == answers(library, paths)
    assert index_ids(root) == catalogue_ids(reopened)


def test_damaged_index_is_rebuilt_before_a_write(library, root, photos, tmp_path, make_image):
    (root / INDEX).write_bytes(b"garbage")
    reopened = Library.open(root, device="cpu")
    new = make_image(tmp_path / "new.png", size=(56, 56), seed=60)
    reopened.enroll([(new, "new")])
    assert index_ids(root) == catalogue_ids(reopened)
    assert len(catalogue_ids(reopened)) == sum(CLASSES.values()) + 1


def test_index_of_another_dimension_is_rebuilt(library, root, photos):
    expected = answers(library, all_paths(photos), "knn")
    other = VectorIndex(32, SPEC)
    other.add(np.eye(32, dtype=np.float32)[: len(catalogue_ids(library))], catalogue_ids(library))
    other.save(root / INDEX)
    reopened = Library.open(root, device="cpu")
    assert answers(reopened, all_paths(photos), "knn") == expected
    assert VectorIndex.load(root / INDEX, SPEC).dim == 32  # a reader never writes the index
    reopened.compact()  # a writer does
    assert VectorIndex.load(root / INDEX, SPEC).dim == 64


def test_crash_between_catalogue_and_index_write(
    library, root, photos, tmp_path, make_class_images
):
    before = index_ids(root)
    saved = (root / INDEX).read_bytes()
    new = make_class_images(tmp_path / "new", {"new": 2}, first_seed=40)["new"]

    def crash(self):
        raise RuntimeError("simulated crash before the index is saved")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Library, "_after_write", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            library.enroll([(p, "new") for p in new])
    assert (root / INDEX).read_bytes() == saved  # the index on disk missed the write...
    assert len(catalogue_ids(library)) == len(before) + 2  # ...the catalogue did not

    reopened = Library.open(root, device="cpu")
    for method in ("knn", "prototype"):
        results = reopened.query(new, method=method)
        assert [r.decision.label for r in results] == ["new", "new"]
        assert all(r.decision.score == pytest.approx(1.0, abs=1e-3) for r in results)
    assert index_ids(root) == catalogue_ids(reopened)


def test_crash_during_forget(library, root, photos):
    def crash(self):
        raise RuntimeError("simulated crash")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Library, "_after_write", crash)
        with pytest.raises(RuntimeError):
            library.forget("potato")
    reopened = Library.open(root, device="cpu")
    for result in reopened.query(photos["potato"], method="knn", top_k=10):
        assert "potato" not in [label for label, _ in result.decision.top_k]
    assert index_ids(root) == catalogue_ids(reopened)


# --- damaged or replaced library files ----------------------------------------------------------


def assert_names(error: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(error.value) or (
        path.name in str(error.value) and str(path.parent) in str(error.value)
    )


@pytest.mark.parametrize("name", [MANIFEST, CATALOGUE])
def test_deleted_file_fails_on_open(library, root, name):
    (root / name).unlink()
    with pytest.raises(KshotError) as caught:
        Library.open(root, device="cpu")
    assert_names(caught, root / name)
    if name == CATALOGUE:
        assert not (root / CATALOGUE).exists()  # not silently re-created empty


def test_deleted_model_fails_on_use(library, root, photos):
    (root / MODEL).unlink()
    with pytest.raises(KshotError) as caught:
        Library.open(root, device="cpu").query(photos["potato"][:1])
    assert_names(caught, root / MODEL)


@pytest.mark.parametrize("name", [MANIFEST, CATALOGUE, MODEL])
def test_garbage_file(library, root, photos, name):
    (root / name).write_bytes(b"\x00\xffgarbage bytes\x80" * 64)
    with pytest.raises(KshotError) as caught:
        Library.open(root, device="cpu").query(photos["potato"][:1])
    assert_names(caught, root / name)


@pytest.mark.parametrize(
    "edit",
    [
        {"version": 2},
        {"format": "something-else"},
        {"index": {"kind": "annoy"}},
        {"index": {"no_such_option": 1}},
        {"model_sha256": None, "embedding_dim": "many"},
    ],
    ids=["version", "format", "index-kind", "index-option", "dim"],
)
def test_edited_manifest(library, root, edit):
    path = root / MANIFEST
    data = json.loads(path.read_text())
    data.update(edit)
    path.write_text(json.dumps(data))
    with pytest.raises(KshotError) as caught:
        Library.open(root, device="cpu")
    assert_names(caught, path)
    assert "damaged library manifest" in str(caught.value)


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "{}"])
def test_manifest_that_is_not_an_object(library, root, content):
    (root / MANIFEST).write_text(content)
    with pytest.raises(KshotError, match="damaged library manifest"):
        Library.open(root, device="cpu")


def test_manifest_with_a_wrong_embedding_dim(library, root, photos):
    path = root / MANIFEST
    data = json.loads(path.read_text())
    data["embedding_dim"] = 32
    path.write_text(json.dumps(data))
    with pytest.raises(KshotError):
        Library.open(root, device="cpu").query(photos["potato"][:1])


def test_model_replaced_by_another_models_checkpoint(library, root, photos, conv4_factory):
    save_checkpoint(conv4_factory(seed=1), root / MODEL)
    calls = [
        lambda lib: lib.query(photos["potato"][:1]),
        lambda lib: lib.query(photos["potato"][:1], method="knn"),
        lambda lib: lib.enroll([(photos["potato"][0], "x")]),
    ]
    for call in calls:
        reopened = Library.open(root, device="cpu")
        with pytest.raises(KshotError) as caught:
            call(reopened)
        assert_names(caught, root / MODEL)
        assert "not the model" in str(caught.value)
    assert dict(Library.open(root, device="cpu").classes()) == CLASSES


def test_model_with_one_weight_edited(library, root, photos):
    embedder, info = load_checkpoint(root / MODEL)
    with torch.no_grad():
        embedder.backbone[0].bias[0] += 0.01
    save_checkpoint(embedder, root / MODEL, info)
    with pytest.raises(KshotError, match="not the model"):
        Library.open(root, device="cpu").enroll([(photos["potato"][0], "potato")])


def test_open_with_the_bound_model(library, root, tmp_path, conv4_embedder, conv4_factory):
    same = tmp_path / "same.kshot"
    save_checkpoint(conv4_embedder, same, {"other": "info"})
    assert Library.open(root, model=same, device="cpu").classes() == library.classes()
    other = tmp_path / "other.kshot"
    save_checkpoint(conv4_factory(seed=1), other)
    with pytest.raises(KshotError) as caught:
        Library.open(root, model=other, device="cpu")
    assert str(other) in str(caught.value)
    assert "not the model" in str(caught.value)
    with pytest.raises(KshotError):
        Library.open(root, model=tmp_path / "absent.kshot", device="cpu")


def test_a_copied_library_gives_identical_answers(library, root, photos, tmp_path):
    paths = all_paths(photos)
    expected = {m: answers(library, paths, m) for m in ("prototype", "knn")}
    copy = tmp_path / "elsewhere" / "lib-copy"
    shutil.copytree(root, copy)
    shutil.rmtree(root)
    copied = Library.open(copy, device="cpu")
    assert copied.classes() == sorted(CLASSES.items())
    for method, result in expected.items():
        assert answers(copied, paths, method) == result


# --- folder_items -------------------------------------------------------------------------------


def test_folder_items_sub_folders_become_labels(tmp_path, make_image):
    root = tmp_path / "classes"
    for name in ("tomato", "Été", "トマト"):
        make_image(root / name / "b.png", color=(1, 2, 3))
        make_image(root / name / "a.JPG", color=(1, 2, 3))
    (root / "tomato" / "notes.txt").write_text("x")
    make_image(root / "tomato" / "deeper" / "c.png", color=(1, 2, 3))
    make_image(root / "top-level.png", color=(1, 2, 3))
    items, errors = folder_items(root)
    assert [(e.source, e.reason) for e in errors] == [
        (
            str(root / "tomato" / "deeper"),
            "is a folder among the images of class 'tomato'; not read",
        )
    ]
    expected = [
        (root / name / file, name)
        for name in sorted(["tomato", "Été", "トマト"])
        for file in ("a.JPG", "b.png")
    ]
    assert items == expected


def test_folder_items_labels_are_nfc(tmp_path, make_image):
    root = tmp_path / "classes"
    make_image(root / "E\u0301te\u0301" / "a.png", color=(1, 2, 3))
    items, errors = folder_items(root)
    assert errors == []
    assert items[0][1] == "Été"


@pytest.mark.parametrize(
    "bad_name", ["to\tmato", "to\nmato", "unknown", "UNKNOWN", " padded"], ids=repr
)
def test_folder_items_refuses_bad_folder_names(tmp_path, make_image, bad_name):
    root = tmp_path / "classes"
    make_image(root / "good" / "a.png", color=(1, 2, 3))
    make_image(root / bad_name / "a.png", color=(1, 2, 3))
    items, errors = folder_items(root)
    assert items == [(root / "good" / "a.png", "good")]
    assert len(errors) == 1
    assert isinstance(errors[0], InputError)
    assert errors[0].source == str(root / bad_name)


def test_folder_items_reports_empty_folders(tmp_path, make_image):
    root = tmp_path / "classes"
    make_image(root / "good" / "a.png", color=(1, 2, 3))
    (root / "empty").mkdir()
    (root / "no-images").mkdir()
    (root / "no-images" / "readme.txt").write_text("x")
    items, errors = folder_items(root)
    assert items == [(root / "good" / "a.png", "good")]
    assert [e.source for e in errors] == [str(root / "empty"), str(root / "no-images")]
    assert all("no image" in e.reason for e in errors)


def test_folder_items_only_empty_folders(tmp_path):
    (tmp_path / "a").mkdir()
    items, errors = folder_items(tmp_path)
    assert items == [] and len(errors) == 1


def test_folder_items_without_sub_folders(tmp_path, make_image):
    make_image(tmp_path / "a.png", color=(1, 2, 3))
    with pytest.raises(KshotError, match="no sub-folders"):
        folder_items(tmp_path)


def test_folder_items_missing_root(tmp_path):
    with pytest.raises(KshotError, match="does not exist"):
        folder_items(tmp_path / "absent")


def test_folder_items_enroll(tmp_path, root, conv4_embedder, make_class_images):
    folders = tmp_path / "classes"
    for label, count in (("cat", 2), ("dog", 3)):
        seed = 20 if label == "cat" else 21
        make_class_images(folders / label, {label: count}, first_seed=seed)
    items, errors = folder_items(folders)
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    report = lib.enroll(items)
    assert errors == [] and len(report.added) == 5
    assert lib.classes() == [("cat", 2), ("dog", 3)]


# --- other index kinds --------------------------------------------------------------------------


def test_hnsw_library(tmp_path, conv4_embedder, photos):
    spec = IndexSpec(kind="hnsw", use_gpu=False)
    root = tmp_path / "hnsw-lib"
    lib = Library.create(root, conv4_embedder, {}, spec, device="cpu")
    lib.enroll(items_of(photos))
    labels = [label for _, label in items_of(photos)]
    results = lib.query(all_paths(photos), method="knn")
    assert [r.decision.label for r in results] == labels
    assert lib.forget("potato") == CLASSES["potato"]
    assert index_ids(root) == catalogue_ids(lib)
    reopened = Library.open(root, device="cpu")
    assert reopened.manifest.index.kind == "hnsw"
    assert reopened.index.trained_kind == "hnsw"
    for result in reopened.query(all_paths(photos), method="knn", top_k=10):
        assert "potato" not in [label for label, _ in result.decision.top_k]
    others = [(p, label) for p, label in items_of(photos) if label != "potato"]
    results = reopened.query([p for p, _ in others], method="knn")
    assert [r.decision.label for r in results] == [label for _, label in others]


def test_ivfpq_library_trains_and_answers(tmp_path, conv4_embedder, make_class_images):
    spec = IndexSpec(kind="ivfpq", ivf_train_size=300, use_gpu=False)
    root = tmp_path / "ivf-lib"
    lib = Library.create(root, conv4_embedder, {}, spec, device="cpu")
    photos = make_class_images(tmp_path / "many", {"a": 100, "b": 100, "c": 60}, first_seed=0)
    lib.enroll(items_of(photos))
    assert lib.index.trained_kind == "flat"  # 260 < 300: still exact
    more = make_class_images(tmp_path / "more", {"d": 50}, first_seed=3)
    lib.enroll(items_of(more))
    assert lib.index.trained_kind == "ivfpq"
    assert index_ids(root) == catalogue_ids(lib)

    queries = [photos[label][0] for label in "abc"] + [more["d"][0]]
    for method in ("prototype", "knn"):
        labels = [r.decision.label for r in lib.query(queries, method=method)]
        assert labels == ["a", "b", "c", "d"]

    assert lib.forget("b") == 100
    assert index_ids(root) == catalogue_ids(lib)
    reopened = Library.open(root, device="cpu")
    assert reopened.index.trained_kind == "ivfpq"
    for result in reopened.query(queries, method="knn", top_k=10):
        assert "b" not in [label for label, _ in result.decision.top_k]
    labels = [r.decision.label for r in reopened.query(queries, method="knn")]
    assert labels[0] == "a" and labels[1] != "b" and labels[2:] == ["c", "d"]


def test_ivfpq_index_rebuilt_from_catalogue(tmp_path, conv4_embedder, make_class_images):
    spec = IndexSpec(kind="ivfpq", ivf_train_size=300, use_gpu=False)
    root = tmp_path / "ivf-lib"
    lib = Library.create(root, conv4_embedder, {}, spec, device="cpu")
    photos = make_class_images(tmp_path / "many", {"a": 160, "b": 160})
    lib.enroll(items_of(photos))
    (root / INDEX).unlink()
    reopened = Library.open(root, device="cpu")
    results = reopened.query([photos["a"][0], photos["b"][0]], method="knn")
    assert [r.decision.label for r in results] == ["a", "b"]
    assert reopened.index.trained_kind == "ivfpq"
    assert index_ids(root) == catalogue_ids(reopened)


def test_a_read_only_library_answers_queries(tmp_path, conv4_embedder, monkeypatch):
    """As on read-only storage: SQLite opens read-only and no file can be written."""
    import errno
    import sqlite3

    from kshot.fewshot import catalogue
    from kshot.fewshot.library import Library
    from kshot.index.vector_index import IndexSpec, VectorIndex
    from tests.cli.conftest import make_image

    image = make_image(tmp_path / "bars.png", "bars", 0)
    root = tmp_path / "lib"
    Library.create(root, conv4_embedder, {}, IndexSpec()).enroll([(image, "bars")])
    (root / "index.faiss").unlink()  # so it must be rebuilt, and cannot be saved

    connect = sqlite3.connect

    def read_only(path, **options):
        return connect(f"file:{path}?mode=ro", uri=True, **options)

    def no_writes(self, path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(catalogue.sqlite3, "connect", read_only)
    monkeypatch.setattr(VectorIndex, "save", no_writes)
    (result,) = Library.open(root).query([image], method="knn")
    assert result.decision.label == "bars"
    # Changing it is refused in one line that names the catalogue and says what to do.
    with pytest.raises(KshotError) as caught:
        Library.open(root).forget("bars")
    assert "catalogue.sqlite: cannot write it, it is read-only" in str(caught.value)
    assert "copy it to writable storage" in str(caught.value)


def test_a_path_with_a_newline(tmp_path, conv4_embedder, make_image):
    image = make_image(tmp_path / "two\nlines.png", size=(40, 40), seed=3)
    root = tmp_path / "lib"
    lib = Library.create(root, conv4_embedder, {}, SPEC, device="cpu")
    assert len(lib.enroll([(image, "odd")]).added) == 1
    assert lib.entries().sources == [str(image.resolve())]
    assert [r.label for r in lib.forget_images([str(image.resolve())])] == ["odd"]
    assert lib.classes() == []


def test_the_manifest_knows_the_precisions_the_embedder_has():
    from kshot.embedder.precision import PRECISIONS as EMBEDDER_PRECISIONS
    from kshot.fewshot.store import PRECISIONS

    assert PRECISIONS == EMBEDDER_PRECISIONS
