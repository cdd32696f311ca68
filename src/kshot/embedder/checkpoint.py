"""One checkpoint file holds everything needed to rebuild an embedder.

The file is a plain dict of a format tag, the :class:`EmbedderConfig` as JSON-able data, the state
dict and free-form ``info`` (how it was trained). It loads with ``weights_only=True``. A model's
identity is :func:`model_hash`: a SHA-256 of its config and tensors, independent of how the file
was serialised, so a library can refuse a different model however it was saved.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import torch

from kshot.atomic import atomic_path
from kshot.embedder.model import Embedder, EmbedderConfig, build_embedder
from kshot.embedder.second_order import drawn_tensors
from kshot.embedder.weights import read_torch_file
from kshot.errors import KshotError

FORMAT = "kshot-embedder"
VERSION = 1


def model_hash(embedder: Embedder) -> str:
    digest = hashlib.sha256(json.dumps(embedder.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(embedder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(embedder: Embedder, path: Path, info: dict | None = None) -> str:
    """Write ``embedder`` to ``path`` atomically; returns its model hash."""
    state = embedder.state_dict()
    tensors = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    tensors._metadata = state._metadata  # module versions: MNASNet refuses weights without them
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": embedder.config.to_dict(),
        "state_dict": tensors,
        "info": info or {},
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return model_hash(embedder)


def load_checkpoint(path: Path) -> tuple[Embedder, dict]:
    """The embedder saved at ``path`` (in eval mode, on the CPU) and its ``info`` dict."""
    payload = read_torch_file(path, "kshot model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise KshotError(f"{path}: not a kshot model file (no {FORMAT!r} format tag)")
    if payload.get("version") != VERSION:
        raise KshotError(
            f"{path}: model file version {payload.get('version')} is not supported "
            f"by this kshot (it reads version {VERSION})"
        )
    try:
        config = EmbedderConfig.from_dict(payload["config"])
        embedder = build_embedder(config, pretrained=False)
        if set(drawn_tensors(embedder)) - set(payload["state_dict"]):
            raise KshotError(
                f"{path}: a {config.backbone} model file saved before kshot kept the "
                "second-order projection in it, so what it embeds cannot be checked; build its "
                "library again (kshot init, kshot enroll)"
            )
        embedder.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise KshotError(f"{path}: damaged model file ({exc})") from None
    return embedder.eval(), payload.get("info", {})
