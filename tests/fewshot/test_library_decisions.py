"""The library's fitted decision: derived state, saved by writers, refitted when stale."""

from pathlib import Path

import numpy as np
import pytest

from kshot.errors import KshotError
from kshot.fewshot import store
from kshot.fewshot.catalogue import NewImage
from kshot.fewshot.decider import Decider, DecisionSettings
from kshot.fewshot.labels import UNKNOWN
from kshot.fewshot.library import Library
from kshot.fewshot.store import DECISION
from kshot.index.vector_index import IndexSpec

SPEC = IndexSpec(use_gpu=False)
CLASSES = {"Tomato/Late blight": 3, "Tomato/Leaf mold": 3, "Potato/Late blight": 3}


@pytest.fixture
def photos(tmp_path, make_class_images):
    return make_class_images(tmp_path / "photos", CLASSES)


def _library(root: Path, embedder, photos, **kwargs) -> Library:
    lib = Library.create(root, embedder, {"trained": False}, SPEC, device="cpu", **kwargs)
    lib.enroll([(path, label) for label, paths in photos.items() for path in paths])
    return lib


def test_enrolling_saves_the_decision_fitted_on_the_catalogue(tmp_path, conv4_embedder, photos):
    lib = _library(tmp_path / "lib", conv4_embedder, photos)
    decider, stamp = Decider.load(tmp_path / "lib" / DECISION)
    assert stamp == lib.catalogue.stamp()
    assert decider.settings == DecisionSettings()  # prototypes on whitened embeddings
    assert decider.classes == sorted(CLASSES)
    assert decider.calibration.threshold is not None


def test_forget_refits_and_a_reader_never_writes(tmp_path, conv4_embedder, photos):
    root = tmp_path / "lib"
    lib = _library(root, conv4_embedder, photos)
    lib.forget("Tomato/Leaf mold")
    decider, stamp = Decider.load(root / DECISION)
    assert decider.classes == ["Potato/Late blight", "Tomato/Late blight"]
    assert stamp == lib.catalogue.stamp()
    # A crash between the catalogue's commit and the decision's save: the file is stale.
    lib.catalogue.remove_label("Potato/Late blight")
    before = (root / DECISION).read_bytes()
    reader = Library.open(root, device="cpu")
    assert reader.decider().classes == ["Tomato/Late blight"]  # fitted in memory, from the truth
    assert (root / DECISION).read_bytes() == before  # and nothing written by a reader


def test_a_damaged_decision_file_is_refitted_with_a_notice(
    tmp_path, conv4_embedder, photos, caplog
):
    root = tmp_path / "lib"
    _library(root, conv4_embedder, photos)
    (root / DECISION).write_bytes(b"garbage")
    reader = Library.open(root, device="cpu")
    assert reader.decider().classes == sorted(CLASSES)
    assert "damaged decision file" in caplog.text


def test_answers_name_the_group_and_refused_queries_keep_their_nearest(
    tmp_path, conv4_embedder, photos, make_class_images
):
    lib = _library(tmp_path / "lib", conv4_embedder, photos)
    (result,) = lib.query([photos["Tomato/Leaf mold"][0]], threshold=0.0)
    assert result.decision.label == "Tomato/Leaf mold"
    assert result.decision.group == "Tomato"
    assert [g for g, _ in result.decision.groups] == ["Tomato", "Potato"]
    stranger = make_class_images(tmp_path / "other", {"x": 1}, first_seed=7)["x"][0]
    (answered,) = lib.query([stranger], method="prototype", threshold=0.0)
    (refused,) = lib.query([stranger], method="prototype", threshold=0.5)
    assert answered.decision.score < 0.5
    assert refused.decision.label == UNKNOWN
    assert refused.decision.top_k == answered.decision.top_k  # still shows its nearest classes


@pytest.mark.parametrize("method", ["prototype", "knn", "logistic"])
def test_every_rule_answers_its_own_images(tmp_path, conv4_embedder, photos, method):
    lib = _library(tmp_path / "lib", conv4_embedder, photos)
    for label, paths in photos.items():
        for result in lib.query(paths, method=method, threshold=0.0):
            assert result.decision.label == label
            assert 0.0 < result.decision.score <= 1.0


def test_the_library_threshold_is_used_unless_one_is_given(tmp_path, conv4_embedder, photos):
    lib = _library(tmp_path / "lib", conv4_embedder, photos)
    threshold = lib.decider().calibration.threshold
    (result,) = lib.query([photos["Tomato/Leaf mold"][1]])
    expected = "Tomato/Leaf mold" if result.decision.score >= threshold else UNKNOWN
    assert result.decision.label == expected


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_a_threshold_outside_the_confidence_range_is_refused(
    tmp_path, conv4_embedder, photos, threshold
):
    lib = _library(tmp_path / "lib", conv4_embedder, photos)
    with pytest.raises(KshotError, match="outside the confidence range"):
        lib.query([photos["Tomato/Leaf mold"][0]], threshold=threshold)


def test_one_class_with_one_image_still_answers(tmp_path, conv4_embedder, photos):
    lib = Library.create(tmp_path / "lib", conv4_embedder, {}, SPEC, device="cpu")
    lib.enroll([(photos["Tomato/Leaf mold"][0], "Tomato/Leaf mold")])
    assert lib.decider().calibration.threshold is None
    for method in ("prototype", "knn", "logistic"):
        (result,) = lib.query([photos["Potato/Late blight"][0]], method=method)
        assert result.decision.label == "Tomato/Leaf mold"


def test_centred_settings_travel_in_the_manifest(tmp_path, conv4_embedder, photos):
    settings = DecisionSettings("prototype", centre="library")
    _library(tmp_path / "lib", conv4_embedder, photos, settings=settings)
    reopened = Library.open(tmp_path / "lib", device="cpu")
    assert reopened.settings == settings
    entries = reopened.entries()
    assert np.allclose(reopened.decider().mean, entries.vectors.mean(axis=0), atol=1e-6)


def test_a_library_within_the_sample_cap_is_fitted_on_every_image(tmp_path, conv4_embedder, photos):
    lib = _library(tmp_path / "lib", conv4_embedder, photos)
    entries = lib.entries()
    everything = Decider.fit(DecisionSettings(), entries.vectors, entries.labels)
    queries = entries.vectors[:4]
    np.testing.assert_allclose(lib.decider().scores(queries), everything.scores(queries), atol=1e-6)
    np.testing.assert_allclose(lib.decider().prototypes, everything.prototypes, atol=1e-6)


def _add(lib: Library, label: str, sha256: str, vector: np.ndarray) -> None:
    """One enrollment's commit, the embedding given."""
    with lib.locked(), lib.catalogue.writing():
        lib.catalogue.add([NewImage(label, f"/new/{sha256[:8]}.jpg", sha256, vector)])
    lib.refit_decision()


def test_an_image_outside_the_classes_sample_keeps_the_rule_and_moves_the_prototype(
    tmp_path, conv4_embedder, photos, monkeypatch
):
    monkeypatch.setattr(store, "DECISION_SAMPLE", 2)
    lib = _library(tmp_path / "lib", conv4_embedder, photos)
    before = lib.decider()
    assert len(lib.catalogue.decision_sample(2)) == 2 * len(CLASSES)
    vector = lib.entries().vectors[0]

    def no_fit(*args, **kwargs):
        raise AssertionError("the rule was fitted again")

    with monkeypatch.context() as patched:
        patched.setattr(Decider, "fit", no_fit)
        _add(lib, "Tomato/Leaf mold", "f" * 64, vector)  # the largest hash: not in the sample
        after, stamp = Decider.load(tmp_path / "lib" / DECISION)
    assert stamp == lib.catalogue.stamp()
    kept = after.rule.state()
    for name, array in before.rule.state().items():
        np.testing.assert_array_equal(kept[name], array)
    entries = lib.catalogue.entries()
    mold = entries.vectors[np.asarray(entries.labels) == "Tomato/Leaf mold"].mean(axis=0)
    row = after.classes.index("Tomato/Leaf mold")
    np.testing.assert_allclose(after.prototypes[row], mold / np.linalg.norm(mold), atol=1e-6)
    _add(lib, "Tomato/Leaf mold", "0" * 64, -vector)  # the smallest hash enters the sample
    refitted = lib.decider()
    assert not np.array_equal(refitted.sample.ids, after.sample.ids)
    assert not np.array_equal(refitted.rule.state()["prototypes"], kept["prototypes"])
