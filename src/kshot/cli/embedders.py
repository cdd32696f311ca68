"""Which embedder a command uses: a model file, or an untrained backbone."""

from __future__ import annotations

from pathlib import Path

from kshot.errors import KshotError


def embedder_from(model: Path | None, backbone: str | None, weights: Path | None, pretrained: bool):
    """The embedder of ``--model FILE``, or an untrained one on ``--backbone NAME``."""
    from kshot.embedder.backbones import get_backbone
    from kshot.embedder.checkpoint import load_checkpoint
    from kshot.embedder.model import EmbedderConfig, build_embedder

    if (model is None) == (backbone is None):
        raise KshotError("give either --model FILE or --backbone NAME")
    if model is not None:
        return load_checkpoint(model)
    config = EmbedderConfig.for_backbone(backbone)
    embedder = build_embedder(config, pretrained=pretrained, weights_file=weights).eval()
    if weights:
        source = f"weights file {weights}"
    elif pretrained:
        source = get_backbone(backbone).pretrained_source()
    else:
        source = "random weights"
    return embedder, {"trained": False, "source": f"{backbone}, {source}, no head"}
