"""Loading pretrained weights: torchvision's weights API (downloaded once, then cached) or a file.

Files are untrusted data: torch files are read with ``weights_only=True``, which refuses pickled
code; ``.safetensors`` files hold tensors only.
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


def read_safetensors_file(path: Path) -> dict:
    """The tensors of a ``.safetensors`` file; ``KshotError`` naming the file otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise KshotError(f"{path}: no such weights file")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise KshotError(f"{path}: not a safetensors weights file ({reason})") from None


def load_state_dict_file(path: Path) -> dict:
    """A state dict from ``path``: a ``.safetensors`` file, or a torch file holding a bare state
    dict or one under a ``state_dict`` key."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors_file(path)
    state = read_torch_file(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KshotError(f"{path}: expected a state dict of tensors")
    return state


def url_state_dict(name: str, url: str, offline_hint: str = "") -> dict:
    """The state dict at ``url``, from torch hub's cache or downloaded into it.
    ``offline_hint`` adds a way out of its own to the message when the download fails."""
    try:
        return torch.hub.load_state_dict_from_url(
            url, progress=True, check_hash=True, weights_only=True
        )
    except OSError as exc:  # URLError and socket errors are OSErrors
        cache = url_cache_file(url)
        raise KshotError(
            f"cannot download the pretrained weights of {name} ({exc}). Offline? Either run the "
            f"same command once on a connected machine and copy {cache} to this machine's same "
            f"path, or download {url} and pass it with --weights FILE, {offline_hint}"
            f"or use --backbone efficientnet_lite0, whose weights come installed"
        ) from None


def url_cache_file(url: str) -> Path:
    """Where torch hub keeps the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
