import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from kshot.fewshot.calibration import softmax
from kshot.fewshot.rules import make_rule
from kshot.fewshot.rules.logistic import LogisticRule, row_space


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


def _few_shot(classes=6, shots=5, dim=200, seed=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    vectors = np.concatenate([c + 1.5 * rng.normal(size=(shots, dim)) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), [f"c{c}" for c in range(classes) for _ in range(shots)]


def test_row_space_is_an_orthonormal_basis_of_the_vectors():
    vectors, _ = _few_shot()
    basis = row_space(vectors)
    assert basis.shape == (200, 30)
    assert np.allclose(basis.T @ basis, np.eye(30), atol=1e-8)
    assert np.allclose(vectors @ basis @ basis.T, vectors, atol=1e-5)  # nothing of them lost
    assert row_space(np.ones((120, 200), dtype=np.float32)) is None  # N > D / 2: not worth it


def test_fitting_in_the_row_space_gives_the_full_fit(monkeypatch):
    """The representer theorem: the same weights as a fit in all dimensions."""
    vectors, labels = _few_shot()
    queries, _ = _few_shot(seed=4)
    projected = LogisticRule().fit(vectors, labels)
    monkeypatch.setattr("kshot.fewshot.rules.logistic.row_space", lambda v: None)
    full = LogisticRule().fit(vectors, labels)
    assert np.allclose(projected.weights, full.weights, atol=2e-3)
    assert np.allclose(projected.scores(queries), full.scores(queries), atol=5e-3)
    assert (projected.scores(queries).argmax(1) == full.scores(queries).argmax(1)).all()


def test_the_solver_runs_blas_on_one_thread(monkeypatch):
    """Idle BLAS threads spin beside torch's OpenMP threads: the fit keeps BLAS to one."""
    from threadpoolctl import threadpool_info

    seen = []
    fit = LogisticRegression.fit

    def watched(self, *args, **kwargs):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", watched)
    LogisticRule().fit(*_few_shot())
    assert seen and set(seen) == {1}


def test_a_large_class_is_fitted_on_a_fixed_sample_of_its_images(monkeypatch):
    from kshot.fewshot.rules.logistic import MAX_PER_CLASS, per_class_sample

    codes = np.array([0] * 500 + [1] * 20)
    kept = per_class_sample(codes)
    assert np.sum(codes[kept] == 0) == MAX_PER_CLASS and np.sum(codes[kept] == 1) == 20
    assert np.array_equal(kept, per_class_sample(codes))  # the same sample every time
    assert per_class_sample(np.array([0] * 20 + [1] * 20)) is None

    rows = []
    fit = LogisticRegression.fit
    monkeypatch.setattr(
        LogisticRegression, "fit", lambda self, x, y: rows.append(len(x)) or fit(self, x, y)
    )
    vectors, labels = _few_shot(classes=2, shots=300, dim=50)
    LogisticRule().fit(vectors, labels)
    assert rows == [2 * MAX_PER_CLASS]
