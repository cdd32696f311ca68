import numpy as np
import pytest

from kshot.fewshot.calibration import (
    calibrate,
    fit_open_set,
    fit_scale,
    out_of_fold_scores,
    softmax,
)
from kshot.fewshot.rules.prototype import PrototypeRule


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_out_of_fold_scores_never_see_the_image_they_score():
    vectors = _unit([[1, 0, 0], [1, 0.2, 0], [0, 1, 0], [0, 1, 0.3], [0, 0, 1]])
    labels = ["a", "a", "b", "b", "c"]
    scores, truth, classes, sims = out_of_fold_scores(PrototypeRule, vectors, labels)
    assert np.allclose(sims, scores)  # for prototypes, the similarities are the scores
    assert classes == ["a", "b", "c"]
    assert len(truth) == 4  # c has one image: never held out (its class must keep one)
    for row, code in zip(scores, truth, strict=True):
        # Held out alone, an image of a or b scores its class by the other image's cosine.
        members = [i for i, name in enumerate(labels) if name == classes[code]]
        cosines = sorted(float(vectors[i] @ vectors[j]) for i in members for j in members if i < j)
        assert row[code] == pytest.approx(cosines[0], abs=1e-6)


def test_folds_hold_out_at_most_five_images_per_class():
    rng = np.random.default_rng(0)
    vectors = _unit(rng.normal(size=(24, 4)))
    labels = ["a"] * 20 + ["b"] * 4
    _, truth, _, _ = out_of_fold_scores(PrototypeRule, vectors, labels)
    assert np.bincount(truth).tolist() == [5, 4]


def test_fit_scale_follows_how_often_the_best_score_is_right():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(400, 4))
    right = scores.argmax(axis=1)
    sure = fit_scale(scores, right)  # the best score is always right: confident
    unsure = fit_scale(scores, rng.integers(0, 4, 400))  # labels at random: near uniform
    assert sure > 10 * unsure
    probabilities = softmax(scores, unsure)
    assert probabilities.max(axis=1).mean() < 0.4


def test_softmax_rows_sum_to_one_and_keep_order():
    p = softmax(np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, 0.0]]), 2.0)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert (np.argsort(p[0]) == [0, 1, 2]).all() and p[1, 0] == pytest.approx(1.0)


def test_a_background_score_takes_the_mass_of_queries_far_from_every_class():
    scores = np.array([[0.9, 0.1], [0.2, 0.1]])  # near class 0; near nothing
    p = softmax(scores, 10.0, background=0.5)
    assert p.shape == (2, 2)
    assert p[0].sum() > 0.95 and p[1].sum() < 0.1


def test_fit_open_set_puts_the_background_between_known_and_stand_in_scores():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    scores = rng.uniform(0.0, 0.4, (300, 3))
    scores[np.arange(300), truth] = rng.uniform(0.6, 1.0, 300)  # own class scores high
    scale, background, slope = fit_open_set(scores, truth)
    assert 0.4 < background < 0.6 and scale > 10 and slope == 0.0


def test_separated_classes_get_a_threshold_that_keeps_them():
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:4] * 3
    vectors = _unit(np.concatenate([c + rng.normal(0, 0.3, (6, 6)) for c in centres]))
    labels = [name for name in "abcd" for _ in range(6)]
    calibration = calibrate(PrototypeRule, vectors, labels)
    assert calibration.threshold is not None and 0.0 < calibration.threshold < 1.0
    assert calibration.images == 20
    assert calibration.known_rejected <= 0.5


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        (["a", "b", "c"], "one image per class: nothing to hold out"),
        (["a", "a", "a"], "one class"),
    ],
)
def test_no_threshold_when_the_enrolled_images_cannot_tell(labels, why):
    vectors = _unit(np.random.default_rng(1).normal(size=(3, 4)))
    assert calibrate(PrototypeRule, vectors, labels).threshold is None, why


def test_the_background_rises_for_queries_near_no_class():
    # Logits that do not tell the stand-ins apart (the own class always wins by 2), but
    # similarities that do: held-out images sit near their class, stand-ins near none.
    rng = np.random.default_rng(0)
    m = 400
    truth = rng.integers(0, 3, m)
    scores = rng.normal(0, 0.1, (m, 3))
    scores[np.arange(m), truth] += 2.0
    near_known = rng.uniform(0.8, 0.9, m)
    near_unknown = rng.uniform(0.3, 0.4, m)
    scale, background, slope = fit_open_set(scores, truth, (near_known, near_unknown))
    assert slope > 0
    far = softmax(scores[:1] - 2.0, scale, background - slope * 0.35)
    near = softmax(scores[:1], scale, background - slope * 0.85)
    assert far.sum() < 0.5 < near.sum()
