import numpy as np
import pytest

from kshot.errors import KshotError
from kshot.fewshot.decider import Decider, DecisionSettings, centred


def _library(seed=0, classes=4, per_class=5, dim=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    vectors = np.concatenate([c + rng.normal(0, 0.5, (per_class, dim)) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [f"class {c}" for c in range(classes) for _ in range(per_class)]
    return vectors.astype(np.float32), labels


@pytest.mark.parametrize("method", ["prototype", "knn", "logistic"])
def test_save_and_load_give_the_same_answers(tmp_path, method):
    vectors, labels = _library()
    decider = Decider.fit(DecisionSettings(method), vectors, labels)
    decider.save(tmp_path / "decision.npz", "stamp-1")
    loaded, stamp = Decider.load(tmp_path / "decision.npz")
    assert stamp == "stamp-1" and loaded.settings == decider.settings
    assert loaded.calibration == decider.calibration
    if method == "knn":  # the vectors stay in the catalogue: compare the votes
        codes = np.array([[0, 1, 1]])
        sims = np.array([[0.9, 0.8, 0.1]])
        assert np.array_equal(loaded.rule.vote(sims, codes), decider.rule.vote(sims, codes))
    else:
        assert np.allclose(loaded.scores(vectors), decider.scores(vectors))


def test_confidences_are_probabilities_that_favour_the_right_class():
    vectors, labels = _library()
    decider = Decider.fit(DecisionSettings("prototype"), vectors, labels)
    confidences = decider.confidences(decider.scores(vectors), vectors)
    assert np.allclose(confidences.sum(axis=1), 1.0)
    assert np.mean(np.array(decider.classes)[confidences.argmax(axis=1)] == labels) == 1.0


def test_centring_subtracts_the_library_mean_before_the_rule():
    vectors, labels = _library()
    decider = Decider.fit(DecisionSettings("prototype", centre="library"), vectors, labels)
    assert np.allclose(decider.mean, vectors.mean(axis=0))
    shifted = centred(vectors, decider.mean)
    assert np.allclose(np.linalg.norm(shifted, axis=1), 1.0)
    assert np.allclose(decider.scores(vectors), decider.rule.scores(shifted))


def test_a_damaged_file_is_a_clear_error(tmp_path):
    path = tmp_path / "decision.npz"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(KshotError, match="damaged decision file"):
        Decider.load(path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "svm"}, "unknown method"),
        ({"centre": "median"}, "unknown centring"),
        ({"method": "knn", "neighbours": 0}, "at least 1"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(KshotError, match=message):
        DecisionSettings(**settings)


def test_ten_thousand_classes_decide_by_prototypes_with_a_notice(caplog):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10_000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [f"c{i:05d}" for i in range(10_000)]
    decider = Decider.fit(DecisionSettings("logistic"), vectors, labels)
    assert "deciding by class prototypes" in caplog.text
    assert decider.calibration.threshold is None  # one image per class: nothing to hold out
    best = decider.scores(vectors[:50]).argmax(axis=1)
    assert [decider.classes[b] for b in best] == labels[:50]
