"""WiSE-FT (Wortsman et al. 2022): the fine-tuned backbone's weights interpolated back toward
the pretrained ones, ``(1 - alpha) * pretrained + alpha * fine-tuned``.

Fine-tuning on a few known classes moves the backbone away from what made its features
general; a point between the two weight sets often keeps most of the gain on the known classes
and loses less on new ones. Only the backbone is interpolated: the head and the loss's weights
have no pretrained counterpart. ``alpha = 0`` gives the pretrained weights and ``alpha = 1`` the
fine-tuned ones, bit for bit (``torch.lerp`` is exact at both ends). Integer buffers (batch-norm
counters) keep the fine-tuned values.

``auto`` tries :data:`kshot.embedder.recipe.INTERPOLATION_GRID` and keeps the weight that scores
best on the run's validation (the held-out classes' few-shot accuracy, which is what the
interpolation is for; known-class precision@1 when no class is held out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kshot.embedder.model import Embedder
from kshot.embedder.recipe import INTERPOLATION_GRID, interpolation_weight
from kshot.embedder.training import selection_score
from kshot.errors import KshotError


def interpolate_state(original: dict, tuned: dict, alpha: float) -> dict:
    """``(1 - alpha) * original + alpha * tuned`` for each floating-point tensor."""
    if not 0.0 <= alpha <= 1.0:
        raise KshotError(f"the interpolation weight must be in [0, 1], not {alpha}")
    mixed = {}
    for name, value in tuned.items():
        if value.is_floating_point():
            mixed[name] = torch.lerp(original[name].to(value), value, alpha)
        else:
            mixed[name] = value.clone()
    return mixed


@dataclass
class Interpolation:
    alpha: float
    chosen: bool  # by validation (``auto``), not given
    metrics: dict  # the validation's at ``alpha``
    tried: dict = field(default_factory=dict)  # alpha -> metrics, for ``auto``

    def describe(self) -> str:
        how = "chosen on the held-out data" if self.chosen else "as asked"
        line = f"backbone interpolated toward its pretrained weights at alpha {self.alpha} ({how})"
        if self.tried:
            line += "; " + ", ".join(
                f"{alpha}: {selection_score(metrics):.1%}" for alpha, metrics in self.tried.items()
            )
        return line

    def to_dict(self) -> dict:
        tried = {str(alpha): metrics for alpha, metrics in self.tried.items()}
        return {"alpha": self.alpha, "chosen": self.chosen, "metrics": self.metrics, "tried": tried}


def apply_interpolation(
    embedder: Embedder,
    original: dict | None,
    setting: str | float | None,
    validate: Callable[[Embedder], dict] | None,
) -> Interpolation | None:
    """Interpolate ``embedder``'s backbone in place as ``setting`` (``--interpolate``) says."""
    alpha = interpolation_weight(setting)
    if alpha is None:
        return None
    backbone = embedder.backbone
    tuned = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    if alpha != "auto":
        backbone.load_state_dict(interpolate_state(original, tuned, alpha))
        metrics = validate(embedder) if validate is not None else {}
        return Interpolation(alpha, False, metrics)
    if validate is None:
        raise KshotError(
            "--interpolate auto chooses the weight on held-out data, and this run holds none "
            "out; give a weight, or keep --val-fraction or --holdout-classes above 0"
        )
    tried = {}
    for candidate in INTERPOLATION_GRID:
        backbone.load_state_dict(interpolate_state(original, tuned, candidate))
        tried[candidate] = validate(embedder)
    best = max(tried, key=lambda a: (selection_score(tried[a]), a))  # ties: the fine-tuned end
    backbone.load_state_dict(interpolate_state(original, tuned, best))
    return Interpolation(best, True, tried[best], tried)
