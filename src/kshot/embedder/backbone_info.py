"""What ``kshot backbones`` shows of each backbone, without downloading or computing anything
heavy: parameters and GFLOPs come from the model built on the meta device (shapes, no memory,
no arithmetic), and whether the pretrained weights are present is a look into the caches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kshot.embedder.backbones import BACKBONES, get_backbone
from kshot.embedder.preprocess import PreprocessConfig

# timm models listed by `kshot backbones` (any other is reached by name, `timm:NAME`): the
# self-supervised and image-text models that give the best frozen features, and BiT and
# ConvNeXt-XLarge from the plant-disease comparisons.
TIMM_SUGGESTED = (
    "timm:vit_small_patch14_dinov2.lvd142m",
    "timm:vit_base_patch14_dinov2.lvd142m",
    "timm:vit_base_patch16_clip_224.openai",
    "timm:vit_base_patch16_siglip_224.v2_webli",
    "timm:eva02_base_patch14_224.mim_in22k",
    "timm:convnext_small.fb_in22k",
    "timm:convnext_xlarge.fb_in22k",
    "timm:resnetv2_50x1_bit.goog_in21k",
)


def meta_backbone(name: str, config: PreprocessConfig) -> nn.Module:
    """Backbone ``name`` on the meta device, classifier stripped. A few torchvision builders
    compute with tensors while building (RegNet's widths): those are built on the CPU, then
    moved."""
    spec = get_backbone(name)
    try:
        with torch.device("meta"):
            model = spec.build(config)
    except (NotImplementedError, RuntimeError):
        model = spec.build(config).to("meta")
    spec.strip_classifier(model)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, config: PreprocessConfig) -> float:
    """GFLOPs of one image's forward pass (a multiply-add counts 2), counted by torch's
    ``FlopCounterMode`` on meta tensors: convolutions, matmuls and attention."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    image = torch.zeros(1, config.channels, config.input_size, config.input_size, device=device)
    counter = FlopCounterMode(display=False)
    model.requires_grad_(False)  # the counter's module hooks trip on parameters under no_grad
    with counter:
        model(image)
    return counter.get_total_flops() / 1e9


def weights_present(name: str) -> str:
    """``installed`` (shipped with kshot), ``cached``, ``absent`` (a download on first use) or
    ``none`` (a backbone trained from scratch). Looks at files only."""
    if name.startswith("timm:"):
        from kshot.embedder.timm_backbones import weights_cached

        return "cached" if weights_cached(name) else "absent"
    spec = get_backbone(name)
    if spec.pretrained is None:
        return "none"
    base = spec.weights_of or name
    if base == "efficientnet_lite0":
        return "installed"
    from torchvision.models import get_model_weights

    from kshot.embedder import mobilenet_v2_weights
    from kshot.embedder.weights import url_cache_file

    if url_cache_file(get_model_weights(base).DEFAULT.url).is_file():
        return "cached"
    if base == "mobilenet_v2" and mobilenet_v2_weights.packaged_file():
        return "installed"
    return "absent"


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    feature_dim: int
    input_size: int
    weights: str
    parameters: int | None = None
    gflops: float | None = None


def describe(name: str, details: bool = False) -> BackboneInfo:
    """Sizes and weights of backbone ``name``; with ``details`` its parameters and GFLOPs."""
    spec = get_backbone(name)
    config = spec.default_preprocess()
    info = dict(
        name=name,
        feature_dim=spec.feature_dim(config),
        input_size=config.input_size,
        weights=weights_present(name),
    )
    if details:
        model = meta_backbone(name, config)
        info.update(parameters=count_parameters(model), gflops=gflops(model, config))
    return BackboneInfo(**info)


def listed_backbones() -> list[str]:
    return [*BACKBONES, *TIMM_SUGGESTED]
