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
    whiten = "whiten"


CENTRE_HELP = (
    "What the rule compares: whiten: embeddings centred on the library's mean and whitened by "
    "how photos of one class differ; library: centred only; none: as enrolled."
)
METHOD_HELP = (
    "prototype: nearest class mean; logistic: a linear classifier fitted on the enrolled images; "
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


# Embedding takes auto (measured per backbone, kshot.embedder.precision); training fp32 or bf16.
Precision = Enum("Precision", {name: name for name in ("fp32", "bf16", "auto")}, type=str)
TrainPrecision = Enum("TrainPrecision", {name: name for name in ("fp32", "bf16")}, type=str)


PRECISION_HELP = (
    "fp32; bf16 (autocast, on a CPU with AVX-512 BF16 or AMX); auto: bf16 where a one-off "
    "measurement finds it faster for this backbone"
)
PrecisionOption = Annotated[Precision, typer.Option(help=PRECISION_HELP)]
LibraryPrecision = Annotated[
    Precision | None,
    typer.Option(
        help="Embed in another precision than the library's own, once a check on these photos "
        "finds fp32 and bf16 embeddings alike (mean cosine >= 0.999). " + PRECISION_HELP
    ),
]
Device = Annotated[str, typer.Option(help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1")]
AsJson = Annotated[
    bool, typer.Option("--json", help="Machine-readable output, a JSON object per line.")
]
LibraryDir = Annotated[Path, typer.Argument(help="The library directory.")]
