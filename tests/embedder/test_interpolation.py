"""WiSE-FT interpolation of the backbone's weights, and choosing its weight on held-out data."""

import pytest
import torch

from kshot.embedder.interpolation import apply_interpolation, interpolate_state
from kshot.embedder.recipe import TrainConfig
from kshot.errors import KshotError
from tests.embedder.test_training import tiny_embedder


def states():
    original, tuned = tiny_embedder(0).backbone.state_dict(), tiny_embedder(1).backbone.state_dict()
    return original, tuned


def test_the_two_ends_are_the_two_weight_sets_bit_for_bit():
    original, tuned = states()
    at_zero, at_one = interpolate_state(original, tuned, 0.0), interpolate_state(original, tuned, 1)
    assert all(
        torch.equal(at_zero[k], original[k]) for k in original if original[k].is_floating_point()
    )
    assert all(torch.equal(at_one[k], tuned[k]) for k in tuned)


def test_half_way_is_the_mean_and_counters_keep_the_tuned_value():
    original, tuned = states()
    tuned = {k: v + 1 if not v.is_floating_point() else v for k, v in tuned.items()}
    half = interpolate_state(original, tuned, 0.5)
    for name, value in tuned.items():
        if value.is_floating_point():
            assert torch.allclose(half[name], (original[name] + value) / 2)
        else:
            assert torch.equal(half[name], value)


@pytest.mark.parametrize("weight", ["-0.1", "1.5", "half"])
def test_a_weight_outside_zero_to_one_is_refused_before_training(weight):
    with pytest.raises(KshotError, match="--interpolate takes a weight in"):
        TrainConfig(interpolate=weight)
    with pytest.raises(KshotError):
        interpolate_state(*states(), 1.5)


def test_auto_keeps_the_weight_that_scores_best_on_held_out_classes():
    embedder = tiny_embedder(1)
    original = {k: v.clone() for k, v in tiny_embedder(0).backbone.state_dict().items()}
    name = next(k for k, v in original.items() if v.is_floating_point())
    tuned_value = embedder.backbone.state_dict()[name].clone()

    def validate(model):  # the few-shot accuracy peaks at alpha 0.25; P@1 at alpha 1
        current = model.backbone.state_dict()[name]
        alpha = ((current - original[name]).norm() / (tuned_value - original[name]).norm()).item()
        return {"precision_at_1": alpha, "fewshot_accuracy": 1 - abs(alpha - 0.25)}

    chosen = apply_interpolation(embedder, original, "auto", validate)
    assert chosen.alpha == 0.25 and chosen.chosen and set(chosen.tried) == {0, 0.25, 0.5, 0.75, 1}
    expected = interpolate_state(original, {name: tuned_value}, 0.25)[name]
    assert torch.equal(embedder.backbone.state_dict()[name], expected)


def test_auto_without_held_out_data_is_an_error_and_no_setting_changes_nothing():
    embedder = tiny_embedder(1)
    original = tiny_embedder(0).backbone.state_dict()
    with pytest.raises(KshotError, match="chooses the weight on held-out data"):
        apply_interpolation(embedder, original, "auto", None)
    before = {k: v.clone() for k, v in embedder.state_dict().items()}
    assert apply_interpolation(embedder, original, None, None) is None
    assert all(torch.equal(v, embedder.state_dict()[k]) for k, v in before.items())
