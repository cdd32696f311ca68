"""Optimisers and learning-rate schedules by name, as ``kshot train`` offers them.

``lookahead`` wraps the optimiser in Lookahead (Zhang et al. 2019) with k=5 and alpha=0.5:
every 5 steps the *slow* weights move half way toward the fast ones the inner optimiser
reached, and the fast weights restart from there. It is timm's ``timm.optim.Lookahead``
(imported only when asked for), a ``torch.optim.Optimizer`` whose ``param_groups`` are the
inner optimiser's, so the learning-rate schedules, the gradient scaler and ``state_dict`` (for
``--resume``) work on it as on the inner one.
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
    params: list[nn.Parameter],
    lr: float,
    weight_decay: float | None,
    lookahead: bool = False,
) -> torch.optim.Optimizer:
    """Adam or AdamW, in Lookahead if ``lookahead``; ``weight_decay=None`` keeps torch's
    default (0 for Adam, 0.01 for AdamW)."""
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if name not in kinds:
        raise KshotError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    optimizer = kinds[name](params, lr=lr, **extra)
    if lookahead:
        from timm.optim import Lookahead

        optimizer = Lookahead(optimizer, alpha=LOOKAHEAD_ALPHA, k=LOOKAHEAD_K)
    return optimizer


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
