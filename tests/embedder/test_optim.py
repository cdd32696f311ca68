"""Optimisers and learning-rate schedules by name (optim.py)."""

import copy

import pytest
import torch
from torch import nn

from kshot.embedder.optim import (
    OPTIMIZERS,
    SCHEDULES,
    build_optimizer,
    build_schedule,
    step_schedule,
)
from kshot.errors import KshotError


def params() -> list[nn.Parameter]:
    return list(nn.Linear(3, 2).parameters())


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def test_adam_keeps_torchs_default_weight_decay_of_zero():
    optimizer = build_optimizer("adam", params(), 0.01, None)
    assert type(optimizer) is torch.optim.Adam
    assert lr_of(optimizer) == 0.01
    assert optimizer.param_groups[0]["weight_decay"] == 0


def test_adamw_keeps_torchs_default_weight_decay():
    optimizer = build_optimizer("adamw", params(), 0.002, None)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_an_explicit_weight_decay_is_used(name):
    optimizer = build_optimizer(name, params(), 0.01, 0.05)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    assert build_optimizer(name, params(), 0.01, 0.0).param_groups[0]["weight_decay"] == 0.0


def test_an_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(KshotError, match="unknown optimizer 'sgd'; known: adam, adamw"):
        build_optimizer("sgd", params(), 0.01, None)


def test_no_schedule_leaves_the_lr_alone():
    optimizer = build_optimizer("adam", params(), 0.01, None)
    schedule = build_schedule("none", optimizer, 5)
    assert schedule is None
    for _ in range(3):
        step_schedule(schedule, 0.0)
    assert lr_of(optimizer) == 0.01


def test_an_unknown_schedule_lists_the_known_ones():
    optimizer = build_optimizer("adam", params(), 0.01, None)
    with pytest.raises(KshotError, match="unknown schedule 'step'") as caught:
        build_schedule("step", optimizer, 5)
    assert all(name in str(caught.value) for name in SCHEDULES)


def test_cosine_anneals_to_zero_over_the_epochs():
    optimizer = build_optimizer("adam", params(), 0.1, None)
    schedule = build_schedule("cosine", optimizer, 4)
    lrs = [lr_of(optimizer)]
    for _ in range(4):
        optimizer.step()
        step_schedule(schedule, 0.0)  # the score plays no part
        lrs.append(lr_of(optimizer))
    assert lrs[0] == 0.1
    assert lrs[2] == pytest.approx(0.05)  # half way
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_over_zero_epochs_still_builds():
    optimizer = build_optimizer("adam", params(), 0.1, None)
    schedule = build_schedule("cosine", optimizer, 0)
    optimizer.step()
    step_schedule(schedule, 0.0)
    assert lr_of(optimizer) == pytest.approx(0.0, abs=1e-12)


def test_plateau_divides_the_lr_by_ten_after_two_epochs_without_a_better_score():
    optimizer = build_optimizer("adam", params(), 0.1, None)
    schedule = build_schedule("plateau", optimizer, 10)
    lrs = []
    for score in [0.5, 0.6, 0.6, 0.55, 0.6]:  # best 0.6 at the second epoch, then no better
        step_schedule(schedule, score)
        lrs.append(lr_of(optimizer))
    assert lrs[:4] == [0.1] * 4
    assert lrs[4] == pytest.approx(0.01)


def test_plateau_keeps_the_lr_while_the_score_rises():
    optimizer = build_optimizer("adam", params(), 0.1, None)
    schedule = build_schedule("plateau", optimizer, 10)
    for score in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]:
        step_schedule(schedule, score)
    assert lr_of(optimizer) == 0.1


def test_plateau_counts_a_lower_score_as_worse():
    """Higher is better (mode max): a falling score is what lowers the lr."""
    optimizer = build_optimizer("adam", params(), 0.1, None)
    schedule = build_schedule("plateau", optimizer, 10)
    for score in [0.9, 0.8, 0.7, 0.6]:
        step_schedule(schedule, score)
    assert lr_of(optimizer) == pytest.approx(0.01)


# --- Lookahead ---------------------------------------------------------------------------------


def _steps(optimizer, weight: nn.Parameter, count: int) -> list[torch.Tensor]:
    """``count`` steps on ``|weight - target|^2``; the weights after each."""
    target = torch.tensor([1.0, -2.0, 0.5])
    seen = []
    for _ in range(count):
        optimizer.zero_grad()
        ((weight - target) ** 2).sum().backward()
        optimizer.step()
        seen.append(weight.detach().clone())
    return seen


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lookahead_slow_weights_after_k_steps_follow_the_formula(name):
    """After k=5 inner steps the weights are slow + alpha (fast - slow), alpha=0.5, where fast
    is where the inner optimiser alone would be; before that they are the inner steps'."""
    start = torch.tensor([0.3, 0.2, -0.1])
    plain = nn.Parameter(start.clone())
    fast = _steps(build_optimizer(name, [plain], 0.05, None), plain, 5)
    wrapped = nn.Parameter(start.clone())
    optimizer = build_optimizer(name, [wrapped], 0.05, None, lookahead=True)
    seen = _steps(optimizer, wrapped, 5)
    assert all(torch.equal(a, b) for a, b in zip(seen[:4], fast[:4], strict=True))
    expected = start + 0.5 * (fast[4] - start)
    assert torch.allclose(seen[4], expected, atol=1e-7)
    assert lr_of(optimizer) == 0.05  # schedules see the inner optimiser's groups


def test_lookahead_state_round_trips_for_resume():
    weight = nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer("adam", [weight], 0.05, None, lookahead=True)
    _steps(optimizer, weight, 3)  # stopped before the first synchronisation
    again = nn.Parameter(weight.detach().clone())
    restored = build_optimizer("adam", [again], 0.05, None, lookahead=True)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as a state file has it
    assert torch.equal(_steps(optimizer, weight, 4)[-1], _steps(restored, again, 4)[-1])
