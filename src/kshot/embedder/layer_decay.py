"""Layer-wise learning rates, ``--layer-decay D``: in a stage that trains the backbone, its last
block learns at the stage's rate, the block before it at D times that, the one before at D²,
and so on to the input (discriminative fine-tuning, Howard and Ruder 2018; the layer decay of
BEiT and timm). The early blocks hold the generic features that classes training never sees
rely on, so they move least.

timm has this (``timm.optim.param_groups_layer_decay``) for timm models, which name their
layers through ``group_matcher``; kshot's backbones declare their blocks instead
(``BackboneSpec.blocks``, the same list ``--trainable-blocks`` counts), so the groups are made
from those here.
"""

from __future__ import annotations

from torch import nn

from kshot.embedder.freezing import backbone_blocks
from kshot.embedder.model import Embedder


def layer_decay_groups(embedder: Embedder, lr: float, decay: float) -> list[dict]:
    """Optimiser parameter groups ``{"params": [...], "lr": ...}`` of ``embedder``'s trainable
    parameters: of ``n`` blocks (input side first), block ``i`` at ``lr * decay ** (n - 1 - i)``;
    parameters in no block (a head, a final norm layer) at ``lr``, as the last block (as
    :func:`kshot.embedder.freezing.freeze_backbone` trains them with it). The group at ``lr``
    comes first; groups with nothing to train are left out."""
    blocks = backbone_blocks(embedder)
    placed: set[int] = set()
    groups = []
    for depth, block in enumerate(reversed(blocks)):
        params = _trainable(block, placed)
        if params:
            groups.append({"params": params, "lr": lr * decay**depth})
    rest = _trainable(embedder, placed)
    if rest:
        if groups and groups[0]["lr"] == lr:
            groups[0]["params"] = rest + groups[0]["params"]
        else:
            groups.insert(0, {"params": rest, "lr": lr})
    return groups


def _trainable(module: nn.Module, placed: set[int]) -> list[nn.Parameter]:
    """``module``'s trainable parameters not yet in a group (marked in ``placed``)."""
    params = [p for p in module.parameters() if p.requires_grad and id(p) not in placed]
    placed.update(id(p) for p in params)
    return params
