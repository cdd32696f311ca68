"""Loading pretrained weights: torchvision's weights API (downloaded once, then cached) or a file.

Files are untrusted data: they are read with ``weights_only=True``, which refuses pickled code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from kshot.errors import KshotError


def read_torch_file(path: Path, what: str):
    """The data in a ``torch.save`` file, loaded on the CPU with ``weights_only=True``;
    ``KshotError`` naming the file otherwise. ``what`` names the kind of file in messages."""
    path = Path(path)
    if not path.is_file():
        raise KshotError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "it holds Python objects besides tensors, refused as possibly unsafe code"
    except Exception as exc:  # torch raises many types for malformed files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    raise KshotError(f"{path}: not a {what} ({reason})")


def load_state_dict_file(path: Path) -> dict:
    """A state dict from ``path`` (a bare state dict, or one under a ``state_dict`` key)."""
    state = read_torch_file(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KshotError(f"{path}: expected a state dict of tensors")
    return state


def torchvision_cache_file(weights) -> Path:
    """Where torch keeps torchvision ``weights`` once downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def torchvision_state_dict(name: str, weights, offline_hint: str = "") -> dict:
    """The state dict of torchvision ``weights``, from torch's cache or downloaded into it.
    ``offline_hint`` adds a way out of its own to the message when the download fails."""
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, progress=True, check_hash=True, weights_only=True
        )
    except OSError as exc:  # URLError and socket errors are OSErrors
        cache = torchvision_cache_file(weights)
        raise KshotError(
            f"cannot download the ImageNet weights of {name} ({exc}). Offline? Either run the "
            f"same command once on a connected machine and copy {cache} to this machine's same "
            f"path, or download {weights.url} and pass it with --weights FILE, {offline_hint}"
            f"or use --backbone efficientnet_lite0, whose weights come installed"
        ) from None
