"""Which parts of an embedder a training stage may change.

A frozen part keeps its weights (``requires_grad`` off) and also its batch-norm statistics and
dropout off: it is kept in eval mode while the rest trains, so a stage that trains only the head
leaves the backbone bit-for-bit as it was.
"""

from __future__ import annotations

from torch import nn

from kshot.embedder.backbones import get_backbone
from kshot.embedder.model import Embedder


def backbone_blocks(embedder: Embedder) -> list[nn.Module]:
    """The backbone's stages, input side first (see ``BackboneSpec.blocks``)."""
    return get_backbone(embedder.config.backbone).blocks(embedder.backbone)


def freeze_backbone(embedder: Embedder, trainable_blocks: int | None) -> list[nn.Module]:
    """Let only the backbone's last ``trainable_blocks`` blocks train (``None``: all of them;
    0: none). Parameters outside every block (a final norm layer) train with the last block.
    Returns the frozen modules, for :func:`set_train_mode`."""
    embedder.requires_grad_(True)
    blocks = backbone_blocks(embedder)
    if trainable_blocks is None or trainable_blocks >= len(blocks):
        return []
    if trainable_blocks <= 0:
        embedder.backbone.requires_grad_(False)
        return [embedder.backbone]
    frozen = blocks[: len(blocks) - trainable_blocks]
    for block in frozen:
        block.requires_grad_(False)
    return frozen


def set_train_mode(embedder: Embedder, frozen: list[nn.Module]) -> None:
    """Training mode for the embedder, eval mode for its ``frozen`` parts."""
    embedder.train()
    for module in frozen:
        module.eval()


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
