"""Optimisers and learning-rate schedules by name, as ``kshot train`` offers them.

``lookahead`` wraps the optimiser in Lookahead (Zhang et al. 2019) with k=5 and alpha=0.5:
every 5 steps the *slow* weights move half way toward the fast ones the inner optimiser
reached, and the fast weights restart from there. It is timm's ``timm.optim.Lookahead``
(imported only when asked for), a ``torch.optim.Optimizer`` whose ``param_groups`` are the
inner optimiser's, so the learning-rate schedules and the gradient scaler work on it as on the
inner one, with one correction (:func:`_lookahead`).
"""

from __future__ import annotations

import torch
from torch import nn

from kshot.embedder.recipe import OPTIMIZERS, SCHEDULES
from kshot.errors import KshotError

LOOKAHEAD_K = 5
LOOKAHEAD_ALPHA = 0.5


def build_optimizer(
    name: str,
    params: list[nn.Parameter] | list[dict],
    lr: float,
    weight_decay: float | None,
    lookahead: bool = False,
) -> torch.optim.Optimizer:
    """Adam or AdamW, in Lookahead if ``lookahead``; ``weight_decay=None`` keeps torch's
    default (0 for Adam, 0.01 for AdamW). ``params``: parameters, or torch's parameter groups
    (dicts with their own ``lr``, as ``--layer-decay`` makes)."""
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if name not in kinds:
        raise KshotError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    optimizer = kinds[name](params, lr=lr, **extra)
    return _lookahead(optimizer) if lookahead else optimizer


def _lookahead(inner: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """timm's Lookahead, with the slow weights starting at the initial weights, as in the
    paper. timm's start lazily at the weights the first k steps reach (it cannot keep them in
    the inner optimiser's state before the first step: Adam initialises a state that is empty),
    so its first synchronisation does nothing. The initial weights are kept here until then,
    and travel in ``state_dict`` so that a resumed run ends as an unbroken one."""
    from timm.optim import Lookahead

    class SlowFromTheStart(Lookahead):
        def __init__(self, base):
            super().__init__(base, alpha=LOOKAHEAD_ALPHA, k=LOOKAHEAD_K)
            self.initial = [p.detach().clone() for p in self._params()]

        def _params(self) -> list[torch.Tensor]:
            return [p for group in self.param_groups for p in group["params"]]

        def update_slow(self, group):
            in_group = {id(p) for p in group["params"]}
            for index, param in enumerate(self._params()):
                initial = self.initial[index]
                if initial is not None and id(param) in in_group and param.grad is not None:
                    self._base_optimizer.state[param]["lookahead_slow_buff"] = initial.to(param)
                    self.initial[index] = None
            super().update_slow(group)

        def state_dict(self):
            return {**super().state_dict(), "lookahead_initial": self.initial}

        def load_state_dict(self, state_dict):
            state_dict = dict(state_dict)
            self.initial = state_dict.pop("lookahead_initial")
            super().load_state_dict(state_dict)

    return SlowFromTheStart(inner)


def build_schedule(name: str, optimizer: torch.optim.Optimizer, epochs: int):
    """A per-epoch schedule: ``cosine`` anneals to 0 over ``epochs``; ``plateau`` divides the
    learning rate by 10 after 2 epochs without a better validation score (``step(score)``,
    higher is better); ``none`` keeps it."""
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.1, patience=2
        )
    raise KshotError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")


def step_schedule(schedule, score: float) -> None:
    if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
        schedule.step(score)
    elif schedule is not None:
        schedule.step()
