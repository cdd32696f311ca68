"""Backbone ensembles: ``--backbone efficientnet_lite0+mobilenet_v2`` is one backbone whose
features are its members' pooled features, each L2-normalised, concatenated.

The image is decoded and cropped once, with the first member's crop geometry (input and resize
size, interpolation), and normalised only to 0..1 (the ensemble's preprocessing has mean 0 and
std 1): each member applies its own mean and std inside the module, so one model file carries
them all (as buffers: in the state dict and the model hash). A member that takes the same input
size as the first takes the crop as it is (and follows ``--image-size``); a member with another
input size gets the crop resized to its own size with ``F.interpolate`` (antialiased), which is
what a resize of the decoded image would do up to the resampling filter.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from kshot.embedder.backbones import BACKBONES, ENSEMBLE_SEPARATOR, BackboneSpec
from kshot.embedder.preprocess import PreprocessConfig
from kshot.errors import KshotError


class EnsembleMember(nn.Module):
    """One member: resize (if ``size``), its own normalisation, its network, L2 normalisation."""

    def __init__(self, net: nn.Module, config: PreprocessConfig, size: int | None):
        super().__init__()
        self.net = net
        self.size = size
        for name, tensor in self.normalization(config).items():
            self.register_buffer(name, tensor)

    @staticmethod
    def normalization(config: PreprocessConfig) -> dict[str, torch.Tensor]:
        """The member's ``mean`` and ``std`` buffers: in the state dict, so in the model file."""
        return {
            "mean": torch.tensor(config.mean).view(1, -1, 1, 1),
            "std": torch.tensor(config.std).view(1, -1, 1, 1),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.size is not None:
            size = (self.size, self.size)
            images = F.interpolate(
                images, size=size, mode="bilinear", antialias=True, align_corners=False
            )
        return F.normalize(self.net((images - self.mean) / self.std), dim=1)


class BackboneEnsemble(nn.Module):
    """``(N, C, H, W)`` images on the 0..1 scale -> the members' unit features, concatenated."""

    def __init__(self, members: list[EnsembleMember]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(images) for member in self.members], dim=1)


def is_ensemble(name: str) -> bool:
    return ENSEMBLE_SEPARATOR in name


def normalization_error(name: str) -> KshotError:
    return KshotError(
        f"{name} is an ensemble: each member normalises its input with its own mean and std, "
        "so --normalization imagenet or dataset does not apply (leave it at backbone)"
    )


def member_specs(name: str) -> list[BackboneSpec]:
    """The registered backbones ``name`` joins with ``+``; a clear error for any other name."""
    names = name.split(ENSEMBLE_SEPARATOR)
    unknown = [member for member in names if member not in BACKBONES]
    if unknown:
        known = ", ".join(BACKBONES)
        raise KshotError(
            f"unknown backbone {unknown[0]!r} in the ensemble {name!r}; an ensemble joins "
            f"registered backbones with '+'; known backbones: {known}"
        )
    return [BACKBONES[member] for member in names]


def ensemble_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of the ensemble ``name`` (``a+b``), composed from its members'."""
    specs = member_specs(name)
    defaults = [spec.default_preprocess() for spec in specs]
    first = defaults[0]
    for spec, default in zip(specs[1:], defaults[1:], strict=True):
        if default.channels != first.channels:
            raise KshotError(
                f"the ensemble {name!r} mixes {first.channels}-channel ({specs[0].name}) and "
                f"{default.channels}-channel ({spec.name}) inputs: its members must agree"
            )

    def member_configs(config: PreprocessConfig) -> list[tuple[PreprocessConfig, int | None]]:
        """Each member's preprocessing and the size its crop is resized to (``None``: as is)."""
        if config.channels != first.channels:
            raise KshotError(f"{name} takes {first.channels}-channel images")
        configs = []
        for default in defaults:
            if default.input_size == first.input_size:
                geometry = {"input_size": config.input_size, "resize_size": config.resize_size}
                configs.append((dataclasses.replace(default, **geometry), None))
            else:
                configs.append((default, default.input_size))
        return configs

    def build(config: PreprocessConfig) -> nn.Module:
        if config.mean != (0.0,) * config.channels or config.std != (1.0,) * config.channels:
            raise normalization_error(name)
        members = [
            EnsembleMember(spec.build(member_config), member_config, size)
            for spec, (member_config, size) in zip(specs, member_configs(config), strict=True)
        ]
        return BackboneEnsemble(members)

    def default_preprocess() -> PreprocessConfig:
        identity = (0.0,) * first.channels, (1.0,) * first.channels
        return first.with_normalization(*identity)

    def feature_dim(config: PreprocessConfig) -> int:
        pairs = zip(specs, member_configs(config), strict=True)
        return sum(spec.feature_dim(member_config) for spec, (member_config, _) in pairs)

    def pretrained() -> dict:
        missing = [spec.name for spec in specs if spec.pretrained is None]
        if missing:
            raise KshotError(
                f"{missing[0]} has no pretrained weights, so the ensemble {name} has none: "
                "use --no-pretrained for random weights"
            )
        state = {}
        for i, (spec, default) in enumerate(zip(specs, defaults, strict=True)):
            state.update({f"members.{i}.net.{k}": v for k, v in spec.pretrained().items()})
            normalization = EnsembleMember.normalization(default)
            state.update({f"members.{i}.{k}": v for k, v in normalization.items()})
        return state

    def strip_classifier(model: nn.Module) -> None:
        for spec, member in zip(specs, model.members, strict=True):
            spec.strip_classifier(member.net)

    def blocks(model: nn.Module) -> list[nn.Module]:
        """Every member's blocks, ordered by relative depth (position / member's block count):
        "the last N blocks" are the deepest blocks of all members, not of the last one only."""
        ranked = []
        for spec, member in zip(specs, model.members, strict=True):
            own = spec.blocks(member.net)
            ranked += [((i + 1) / len(own), block) for i, block in enumerate(own)]
        return [block for _, block in sorted(ranked, key=lambda pair: pair[0])]

    def pretrained_source() -> str:
        return "; ".join(f"{spec.name}: {spec.pretrained_source()}" for spec in specs)

    return BackboneSpec(
        name=name,
        feature_dim=feature_dim,
        default_preprocess=default_preprocess,
        build=build,
        pretrained=None if all(spec.pretrained is None for spec in specs) else pretrained,
        strip_classifier=strip_classifier,
        blocks=blocks,
        pretrained_source=pretrained_source,
    )
