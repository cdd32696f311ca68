"""Which embedder a command uses: a model file, or an untrained backbone; in which precision."""

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


def set_precision(embedder, precision: str, device: str) -> str:
    """Run ``embedder`` in ``precision`` (``auto`` measured, see kshot.embedder.precision) on
    ``device``; returns the precision chosen."""
    from kshot.embedder import precision as precisions
    from kshot.embedder.runtime import resolve_device

    target = resolve_device(device)
    embedder.for_inference(target)  # auto measures the embedder as it will run
    embedder.precision = precisions.resolve(precision, embedder, target)
    return embedder.precision


def open_library(root: Path, precision: str | None, photos, device: str, model=None):
    """The library at ``root``; a ``precision`` other than its own is used once
    ``check_mixing`` on ``photos`` finds the two precisions' embeddings alike."""
    from kshot.cli.console import say
    from kshot.embedder.precision import check_mixing
    from kshot.fewshot.library import Library

    lib = Library.open(root, model=model, device=device)
    if precision is None:
        return lib
    asked = set_precision(lib.embedder, precision, device)
    built = lib.manifest.precision
    if asked != built:
        say(check_mixing(lib.embedder, photos, built, asked))
    lib.precision = asked
    return lib
