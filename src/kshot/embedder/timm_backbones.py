"""Backbones from timm, by name: ``timm:NAME`` (``timm:vit_small_patch14_dinov2.lvd142m``).

timm builds the model with ``num_classes=0`` (its pooled features), and its ``pretrained_cfg``
gives the preprocessing (mean/std, input size, crop fraction -> resize size, interpolation) that
is saved into every kshot model file. Weights come from the Hugging Face cache (or hub), torch
hub's cache (or its URL), or ``--weights FILE``; a model file rebuilds from its config with no
network. timm is imported only when a ``timm:`` name is used: it costs seconds.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
from pathlib import Path

import torch
from torch import nn

from kshot.embedder.backbones import BackboneSpec
from kshot.embedder.preprocess import PreprocessConfig
from kshot.embedder.weights import load_state_dict_file, url_state_dict
from kshot.errors import KshotError

PREFIX = "timm:"


@functools.cache
def timm_backbone(name: str) -> BackboneSpec:
    """The spec of ``timm:MODEL``; ``KshotError`` with the closest names for an unknown one."""
    model_name = name[len(PREFIX) :]
    cfg = _pretrained_cfg(model_name)
    return BackboneSpec(
        name=name,
        feature_dim=lambda config: _feature_dim(model_name, config.input_size),
        default_preprocess=lambda: preprocess_from_cfg(cfg),
        build=lambda config: _build(model_name, config),
        pretrained=lambda: _pretrained_state(name, cfg),
        blocks=model_blocks,
        fit_weights=lambda state, model: _fit_weights(state, model, cfg),
        pretrained_source=lambda: (
            f"timm's pretrained weights of {model_name}"
            + (f" (https://huggingface.co/{cfg['hf_hub_id']})" if cfg.get("hf_hub_id") else "")
        ),
    )


def _pretrained_cfg(model_name: str) -> dict:
    import timm

    try:
        known = timm.is_model(model_name)
        cfg = timm.models.get_pretrained_cfg(model_name) if known else None
    except RuntimeError:  # a known architecture with an unknown pretrained tag
        known = False
    if not known:
        names = timm.list_models(pretrained=True) + timm.list_models()
        close = difflib.get_close_matches(model_name, names, n=5, cutoff=0.6)
        hint = f"; closest: {', '.join(PREFIX + c for c in close)}" if close else ""
        raise KshotError(f"timm has no model {model_name!r}{hint}")
    if cfg is None:  # an architecture without pretrained weights: its defaults
        return _meta_model(model_name, None).pretrained_cfg
    return cfg.to_dict()


def preprocess_from_cfg(cfg: dict) -> PreprocessConfig:
    """kshot's preprocessing from a timm ``pretrained_cfg``: the shorter side resized to
    ``floor(input_size / crop_pct)`` then the centre crop, as timm's eval transform does (its
    rarer ``crop_mode`` squash and border are read as the centre crop)."""
    size = int(cfg["input_size"][-1])
    crop_pct = cfg.get("crop_pct") or 1.0
    interpolation = cfg.get("interpolation") or "bilinear"
    return PreprocessConfig(
        input_size=size,
        resize_size=math.floor(size / crop_pct),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        interpolation=interpolation if interpolation in ("bicubic", "nearest") else "bilinear",
    )


def _create(model_name: str, config: PreprocessConfig, meta: bool = False) -> nn.Module:
    """The model with pooled output; built for ``config.input_size`` where the architecture has
    a fixed input size (ViTs' position embeddings), otherwise any size works."""
    import timm

    with torch.device("meta") if meta else contextlib.nullcontext():
        try:
            return timm.create_model(model_name, num_classes=0, img_size=config.input_size)
        except TypeError:  # convolutional networks take no img_size
            return timm.create_model(model_name, num_classes=0)


def _build(model_name: str, config: PreprocessConfig) -> nn.Module:
    """The model, once its pooled output is checked on the meta device (before any weights are
    made or looked for)."""
    if config.channels != 3:
        raise KshotError(f"timm:{model_name} takes colour images: preprocessing needs 3 channels")
    _feature_dim(model_name, config.input_size)
    return _create(model_name, config)


@functools.cache
def _meta_model(model_name: str, input_size: int | None) -> nn.Module:
    """The model on the meta device: shapes and configs without memory or weights."""
    import timm

    if input_size is None:
        with torch.device("meta"):
            return timm.create_model(model_name, num_classes=0)
    config = preprocess_from_cfg(_pretrained_cfg(model_name))
    return _create(
        model_name, PreprocessConfig(input_size, input_size, config.mean, config.std), True
    )


@functools.cache
def _feature_dim(model_name: str, input_size: int) -> int:
    """The width of the pooled output, from a forward pass on the meta device (no compute);
    ``KshotError`` for a model that does not pool to one vector per image."""
    try:
        model = _meta_model(model_name, input_size)
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, input_size, input_size, device="meta"))
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise KshotError(
            f"timm:{model_name} does not take {input_size}px images ({reason})"
        ) from None
    if out.ndim != 2:
        raise KshotError(
            f"timm:{model_name} returns {tuple(out.shape)} features per image, not one pooled "
            "vector: kshot needs a model with pooled output (a classification model, not an "
            "encoder of tokens or feature maps)"
        )
    return int(out.shape[1])


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _children_after(model: nn.Module, name: str) -> list[nn.Module]:
    children = list(model.named_children())
    index = [n for n, _ in children].index(name)
    return [m for _, m in children[index + 1 :]]


class _Stem(nn.Module):
    """What comes before the first block: the top-level modules registered before it and the
    model's own parameters (a ViT's class token and position embeddings), shared, not copied."""

    def __init__(self, model: nn.Module, modules: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        for name, parameter in model.named_parameters(recurse=False):
            self.register_parameter(name, parameter)


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The stages "unfreeze the last N blocks" counts, from timm's ``feature_info``: every child
    of the container of its feature modules (``blocks``, ``stages``, ``layers``) or the modules
    themselves (a ResNet's ``layer1..4``); a stem before them; the final norm and pooling train
    with the last block."""
    names = [info["module"] for info in getattr(model, "feature_info", None) or []]
    parents = {name.rsplit(".", 1)[0] for name in names if "." in name}
    if len(parents) == 1 and all("." in name for name in names):
        (parent,) = parents
        blocks, top = list(model.get_submodule(parent).children()), parent.split(".")[0]
        first_top = last_top = top
    elif names:
        blocks = [model.get_submodule(name) for name in names]
        first_top, last_top = names[0].split(".")[0], names[-1].split(".")[0]
    else:
        return [model]
    children = [n for n, _ in model.named_children()]
    stem = _Stem(model, [getattr(model, n) for n in children[: children.index(first_top)]])
    blocks = [block for block in (stem, *blocks) if _has_parameters(block)]
    tail = [m for m in _children_after(model, last_top) if _has_parameters(m)]
    if tail:
        blocks[-1] = nn.ModuleList([blocks[-1], *tail])
    return blocks


def _fit_weights(state: dict, model: nn.Module, cfg: dict) -> dict:
    """Pretrained weights for the model with no classifier: the classifier's tensors dropped;
    ``ValueError`` for position embeddings made for another input size."""
    classifiers = cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    state = {
        key: value
        for key, value in state.items()
        if not any(key.startswith(c + ".") for c in classifiers)
    }
    own = model.state_dict()
    for key in ("pos_embed", "pos_embed.pos_embed", "rope.pos_embed"):
        if key in state and key in own and state[key].shape != own[key].shape:
            raise ValueError(
                f"weights for another input size: {key} has shape {tuple(state[key].shape)}, "
                f"the model built for this input size has {tuple(own[key].shape)}"
            )
    return state


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_file(name: str, repo: str, filename: str) -> Path:
    """``filename`` of Hugging Face repo ``repo``: from the cache, else downloaded into it."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    cached = try_to_load_from_cache(repo, filename, cache_dir=cache)
    if isinstance(cached, str):
        return Path(cached)
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache))
    except LocalEntryNotFoundError:  # offline, or the hub unreachable
        folder = cache / f"models--{repo.replace('/', '--')}"
        raise KshotError(
            f"the weights of {name} are not on this machine and cannot be downloaded: put "
            f"{filename} of https://huggingface.co/{repo} into the Hugging Face cache {cache} "
            f"(run `hf download {repo} {filename}` on a connected machine and copy its {folder} "
            f"here), or pass the file with --weights {filename}"
        ) from None
    except EntryNotFoundError:
        raise KshotError(f"https://huggingface.co/{repo} has no {filename}") from None


def _pretrained_state(name: str, cfg: dict) -> dict:
    if cfg.get("hf_hub_id"):
        filename = cfg.get("hf_hub_filename") or "model.safetensors"
        return load_state_dict_file(_hub_file(name, cfg["hf_hub_id"], filename))
    if cfg.get("url"):
        return url_state_dict(name, cfg["url"])
    raise KshotError(
        f"{name} has no pretrained weights in timm: pass a weights file with --weights FILE, "
        "or use --no-pretrained for random weights"
    )


def weights_cached(name: str) -> bool:
    """Whether the pretrained weights of ``timm:MODEL`` are on this machine (no network)."""
    from huggingface_hub import try_to_load_from_cache

    from kshot.embedder.weights import url_cache_file

    cfg = _pretrained_cfg(name[len(PREFIX) :])
    if cfg.get("hf_hub_id"):
        filename = cfg.get("hf_hub_filename") or "model.safetensors"
        found = try_to_load_from_cache(cfg["hf_hub_id"], filename, cache_dir=hub_cache_dir())
        if isinstance(found, str):
            return True
    return bool(cfg.get("url")) and url_cache_file(cfg["url"]).is_file()
