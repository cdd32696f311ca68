"""The backbones `kshot init` and `kshot train` use when none is named, and their fallback on a
machine without MobileNetV2's weights."""

from __future__ import annotations

from kshot.embedder import mobilenet_v2_weights
from kshot.embedder.backbone_info import weights_present
from kshot.embedder.backbones import ENSEMBLE_SEPARATOR

# What `kshot init` builds with neither --model nor --backbone: the best measured on new classes
# with no training (BENCHMARKS.md, benchmarks/decisions.py and benchmarks/whitening.py).
DEFAULT_EMBEDDER = "efficientnet_lite0_bilinear+mobilenet_v2_bilinear"
# What `kshot train` trains without --backbone: the best measured after training
# (benchmarks/plantvillage.py); the bilinear variant has not been trained yet.
TRAINING_EMBEDDER = "efficientnet_lite0_multilevel+mobilenet_v2_multilevel"


def default_embedder(training: bool = False) -> tuple[str, str | None]:
    """The backbone of the default embedder (of ``kshot train`` if ``training``) and, when it
    must fall back to its Lite0 part because MobileNetV2's weights are not on this machine (Lite0's
    come with kshot itself), a notice saying how to get them."""
    ensemble = TRAINING_EMBEDDER if training else DEFAULT_EMBEDDER
    if weights_present("mobilenet_v2") != "absent":
        return ensemble, None
    fallback = ensemble.split(ENSEMBLE_SEPARATOR)[0]
    return fallback, (
        f"MobileNetV2's weights are not on this machine, so the default embedder is "
        f"{fallback} alone; for {ensemble} (better on new classes): "
        f"{mobilenet_v2_weights.INSTALL}"
    )
