"""Option types shared by the commands."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Method(str, Enum):
    prototype = "prototype"
    knn = "knn"
    logistic = "logistic"


class Centre(str, Enum):
    none = "none"
    library = "library"


METHOD_HELP = (
    "logistic: a linear classifier fitted on the enrolled images; prototype: nearest class mean; "
    "knn: weighted vote of the nearest images."
)


class IndexKind(str, Enum):
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


class Normalization(str, Enum):
    backbone = "backbone"
    imagenet = "imagenet"
    dataset = "dataset"


Device = Annotated[str, typer.Option(help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1")]
AsJson = Annotated[
    bool, typer.Option("--json", help="Machine-readable output, a JSON object per line.")
]
LibraryDir = Annotated[Path, typer.Argument(help="The library directory.")]
