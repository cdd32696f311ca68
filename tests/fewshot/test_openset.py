import json

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from kshot.fewshot.openset import open_set_curve

KNOWN = np.array([0.9, 0.8, 0.7, 0.6])
CORRECT = np.array([True, True, False, True])
UNKNOWN = np.array([0.5, 0.4, 0.65])


def test_rates_by_hand_at_given_thresholds():
    curve = open_set_curve(KNOWN, CORRECT, UNKNOWN, thresholds=np.array([0.0, 0.62, 0.65, 0.75]))
    assert curve["thresholds"] == [0.0, 0.62, 0.65, 0.75]
    # t = 0:    nothing rejected; accepted and right: 0.9, 0.8, 0.6
    # t = 0.62: unknowns 0.5, 0.4 rejected; known 0.6; right and accepted: 0.9, 0.8
    # t = 0.65: as 0.62 (0.65 is not below 0.65)
    # t = 0.75: all unknowns; known 0.7, 0.6; right and accepted: 0.9, 0.8
    assert curve["unknown_rejected"] == pytest.approx([0, 2 / 3, 2 / 3, 1])
    assert curve["known_rejected"] == pytest.approx([0, 1 / 4, 1 / 4, 2 / 4])
    assert curve["known_accuracy"] == pytest.approx([3 / 4, 2 / 4, 2 / 4, 2 / 4])


def test_default_thresholds_and_balanced_point_by_hand():
    curve = open_set_curve(KNOWN, CORRECT, UNKNOWN)
    # every observed score, then one just above the highest
    assert curve["thresholds"][:-1] == [0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9]
    assert 0.9 < curve["thresholds"][-1] < 0.9 + 1e-12
    assert curve["unknown_rejected"] == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1])
    assert curve["known_rejected"] == pytest.approx([0, 0, 0, 1 / 4, 1 / 4, 2 / 4, 3 / 4, 1])
    # |unknown rejected - known accepted|: 1, 2/3, 1/3, |2/3 - 3/4| = 1/12, 1/4, 1/2, ...
    assert curve["balanced"] == pytest.approx(
        {
            "threshold": 0.65,
            "unknown_rejected": 2 / 3,
            "known_rejected": 1 / 4,
            "known_accuracy": 2 / 4,  # 0.9, 0.8 accepted and right; 0.7 accepted but wrong
        }
    )


def test_default_curve_agrees_with_sklearn_roc():
    rng = np.random.default_rng(0)
    known, unknown = rng.uniform(-0.2, 1, 40).round(2), rng.uniform(-0.5, 0.8, 30).round(2)
    curve = open_set_curve(known, np.ones(40, dtype=bool), unknown)
    # roc_curve accepts score >= threshold; known queries are its positives
    fpr, tpr, thresholds = roc_curve(
        np.r_[np.ones(40), np.zeros(30)], np.r_[known, unknown], drop_intermediate=False
    )
    expected = dict(zip(thresholds[1:], zip(fpr[1:], tpr[1:], strict=True), strict=True))
    for t, unknown_rejected, known_rejected in zip(
        curve["thresholds"], curve["unknown_rejected"], curve["known_rejected"], strict=True
    ):
        fp, tp = expected.get(t, (0.0, 0.0))  # the last threshold rejects everything
        assert unknown_rejected == pytest.approx(1 - fp)
        assert known_rejected == pytest.approx(1 - tp)


def test_rates_grow_with_the_threshold():
    rng = np.random.default_rng(1)
    known = rng.uniform(0.2, 1.0, 50)
    curve = open_set_curve(known, rng.random(50) < 0.8, rng.uniform(-0.3, 0.7, 30))
    for key in ("thresholds", "unknown_rejected", "known_rejected"):
        assert np.all(np.diff(curve[key]) >= 0), key
    assert np.all(np.diff(curve["known_accuracy"]) <= 0)
    assert curve["unknown_rejected"][0] == 0 and curve["known_rejected"][0] == 0
    assert curve["unknown_rejected"][-1] == 1 and curve["known_rejected"][-1] == 1
    assert curve["known_accuracy"][-1] == 0


def test_separable_scores_balance_with_no_errors():
    curve = open_set_curve(np.array([0.9, 0.85, 0.8]), np.ones(3, bool), np.array([0.3, 0.2]))
    assert curve["balanced"] == {
        "threshold": 0.8,  # the lowest threshold that rejects every unknown and no known
        "unknown_rejected": 1.0,
        "known_rejected": 0.0,
        "known_accuracy": 1.0,
    }


def test_result_is_json_and_bad_input_is_refused():
    curve = open_set_curve(np.float32(KNOWN), CORRECT, np.float32(UNKNOWN))
    assert json.loads(json.dumps(curve, allow_nan=False)) == curve
    with pytest.raises(ValueError, match="same length"):
        open_set_curve(KNOWN, CORRECT[:3], UNKNOWN)
    with pytest.raises(ValueError, match="at least one"):
        open_set_curve(KNOWN, CORRECT, np.array([]))
    with pytest.raises(ValueError, match="thresholds"):
        open_set_curve(KNOWN, CORRECT, UNKNOWN, thresholds=np.array([]))
