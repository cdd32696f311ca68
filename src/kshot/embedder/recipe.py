"""Everything a training run is made of, in one dataclass: :class:`TrainConfig`.

Its defaults are ``kshot train``'s defaults (the recipe measured best on PlantVillage, see
BENCHMARKS.md), and the command's options are built from its fields (``field.metadata["cli"]``
holds each option's help, panel and bounds), so there is one place for a default. Fields without
``cli`` metadata (``loss_options``, ``augment``) are set by options of their own.

This module imports no torch: ``kshot train --help`` reads it.
"""

import dataclasses
from dataclasses import dataclass, field

from kshot.errors import KshotError

# kshot.embedder.losses.LOSSES, named here without importing torch (a test checks they agree).
LOSS_NAMES = (
    "contrastive",
    "triplet",
    "quadruplet",
    "sphereface",
    "cosface",
    "arcface",
    "softmax",
    "focal",
    "protonet",
)
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "cosine", "plateau")
NORMALIZATIONS = ("backbone", "imagenet", "dataset")
# Episodes when not given: 8 ways x (5 shots + 5 queries) images. Those 80 images of the default
# embedder take about 18 GB in training (BENCHMARKS.md, issue 9); 20 ways would not fit in 24 GB.
DEFAULT_WAYS, DEFAULT_SHOTS, DEFAULT_QUERIES = 8, 5, 5
# The interpolation weights ``--interpolate auto`` chooses from.
INTERPOLATION_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)

MODEL, RECIPE, EPISODES, KEEP = "Model", "Recipe", "Episodes (--loss protonet)", "Anti-forgetting"
AUGMENT, DATA, RUN = "Augmentation", "Data and validation", "Run"


@dataclass(frozen=True)
class CliOption:
    """How a field is offered on the command line."""

    help: str
    panel: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None


def _option(default, panel: str, help: str = "", **bounds):
    return field(default=default, metadata={"cli": CliOption(help, panel, **bounds)})


def _no_augmentation():
    from kshot.embedder.augment import AugmentConfig  # torch; not needed by --help

    return AugmentConfig()


@dataclass(frozen=True)
class TrainConfig:
    # --- the embedder -------------------------------------------------------------------------
    # None: kshot init's default embedder, resolved when the run starts (run.resolve_backbone).
    backbone: str | None = _option(
        None,
        MODEL,
        "See `kshot backbones`; a+b is an ensemble. Default: kshot init's default embedder "
        "(efficientnet_lite0_multilevel+mobilenet_v2_multilevel; its first member alone where "
        "MobileNetV2's weights are not installed).",
    )
    embedding_dim: int | None = _option(None, MODEL, "Head output size; default: no head.")
    head_hidden: int | None = _option(
        None, MODEL, "A hidden layer in the head (Linear, ReLU, dropout 0.2, Linear)."
    )
    residual_head: bool = _option(
        False,
        MODEL,
        "The head adds a learnt correction to the backbone's features (starts at zero; "
        "--embedding-dim must be the feature size).",
    )
    image_size: int | None = _option(None, MODEL, "Input side in pixels.")
    channels: int | None = _option(None, MODEL, "1 (grey) or 3; conv4 only.")
    normalization: str = _option(
        "backbone",
        MODEL,
        "Per-channel mean/std: the backbone's, ImageNet's, or measured on DATA.",
        choices=NORMALIZATIONS,
    )
    pretrained: bool = _option(True, MODEL, "Start from ImageNet weights.")
    # --- the loss and the optimisation ----------------------------------------------------------
    loss: str = _option("protonet", RECIPE, "The metric-learning loss.", choices=LOSS_NAMES)
    # Laid over the loss's defaults (kshot.embedder.losses.LOSS_DEFAULTS), e.g. {"margin": 0.2}.
    loss_options: dict = field(default_factory=dict)
    head_epochs: int = _option(30, RECIPE, "Stage 1: epochs on a frozen backbone.", min=0)
    epochs: int = _option(3, RECIPE, "Stage 2: epochs with the backbone training.", min=0)
    trainable_blocks: int | None = _option(
        None, RECIPE, "Stage 2 trains only the backbone's last N blocks (default: all).", min=0
    )
    batch_size: int = _option(64, RECIPE, "", min=2)
    samples_per_class: int = _option(4, RECIPE, "Images of each class in a batch.", min=1)
    optimizer: str = _option("adam", RECIPE, "", choices=OPTIMIZERS)
    lookahead: bool = _option(
        False, RECIPE, "Wrap the optimizer in Lookahead (k=5, alpha=0.5; timm's)."
    )
    lr: float = _option(1e-2, RECIPE, "Learning rate of stage 1 and of the loss's own weights.")
    # None: lr / 10 after a stage 1, else lr.
    finetune_lr: float | None = _option(
        3e-4, RECIPE, "Learning rate of stage 2, where the backbone trains."
    )
    weight_decay: float | None = _option(None, RECIPE, "Default: 0 for adam, 0.01 for adamw.")
    layer_decay: float = _option(
        1.0,
        KEEP,
        "Stage 2: each backbone block learns at D x the rate of the block after it (the last "
        "at --finetune-lr), so early blocks move least; 1: one rate for all.",
        min=0.0,
        max=1.0,
    )
    schedule: str = _option("cosine", RECIPE, "Per stage.", choices=SCHEDULES)
    patience: int | None = _option(
        None,
        RECIPE,
        "Stop a stage after N epochs without a better validation score (held-out classes' "
        "few-shot accuracy if any, else known-class precision@1).",
        min=1,
    )
    class_weights: bool = _option(
        False, RECIPE, "Weigh each image by 1 / its class's size (for --no-balanced-batches)."
    )
    balanced_batches: bool = _option(
        True, RECIPE, "Batches of --samples-per-class images per class (else shuffled)."
    )
    # --- episodes of --loss protonet ----------------------------------------------------------
    # None: the default, or what the classes allow (episodic_sampler.episode_sizes).
    ways: int | None = _option(
        None,
        EPISODES,
        "Classes in an episode (default: 8, or every class with enough images where fewer).",
        min=2,
    )
    shots: int | None = _option(
        None,
        EPISODES,
        "Support images of each class, its prototype (default: 5, or half the images of the "
        "middle class where it has fewer than 10).",
        min=1,
    )
    queries: int | None = _option(
        None, EPISODES, "Query images of each class (default: 5, or the rest of them).", min=1
    )
    # --- keeping what the pretrained backbone knew -----------------------------------------------
    interpolate: str | None = _option(
        None,
        KEEP,
        "WiSE-FT: the backbone ends at (1 - A) x its pretrained weights + A x the fine-tuned "
        "ones; A in [0, 1], or 'auto': the A of 0, 0.25, 0.5, 0.75, 1 that scores best on the "
        "held-out classes. Default: the fine-tuned weights (A = 1).",
    )
    feature_distillation: float = _option(
        0.0,
        KEEP,
        "Stage 2 adds W x (1 - cosine) between the backbone's features and the frozen "
        "pretrained backbone's on the same images (LwF-style); 0: off.",
        min=0.0,
    )
    # --- augmentation -------------------------------------------------------------------------
    augment: "AugmentConfig" = field(default_factory=_no_augmentation)  # noqa: F821
    augment_head: bool = _option(
        False,
        AUGMENT,
        "Augment in stage 1 too (the frozen features are then computed every epoch).",
    )
    rotation_classes: bool = _option(
        False, AUGMENT, "Each class turned 90/180/270 degrees becomes 3 more classes."
    )
    # --- what training is checked on -------------------------------------------------------------
    val_fraction: float = _option(
        0.2, DATA, "Share of each class held out to validate.", min=0.0, max=0.9
    )
    holdout_classes: int | None = _option(
        None,
        DATA,
        "Whole classes kept out of training to measure few-shot accuracy on new classes "
        "(default: a fifth, at most 5; 0: none).",
        min=0,
    )
    # --- the run ------------------------------------------------------------------------------
    amp: bool = _option(True, RUN, "Mixed precision on CUDA.")
    precision: str = _option(
        "fp32",
        RUN,
        "On the CPU: bf16 autocast (needs AVX-512 BF16 or AMX).",
        choices=("fp32", "bf16"),
    )
    seed: int = _option(0, RUN, "")

    def __post_init__(self):
        interpolation_weight(self.interpolate)  # refuses a bad weight before any work
        if self.feature_distillation < 0:
            raise KshotError(
                f"--feature-distillation is a weight, at least 0, not {self.feature_distillation}"
            )
        if not 0.0 < self.layer_decay <= 1.0:
            raise KshotError(f"--layer-decay takes a factor in (0, 1], not {self.layer_decay}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def interpolation_weight(value: str | float | None) -> float | str | None:
    """``--interpolate``'s value: ``None`` (off), ``"auto"``, or a weight in [0, 1]."""
    if value is None or value == "auto":
        return value
    try:
        alpha = float(value)
    except ValueError:
        raise KshotError(
            f"--interpolate takes a weight in [0, 1] or 'auto', not {value!r}"
        ) from None
    if not 0.0 <= alpha <= 1.0:
        raise KshotError(f"--interpolate takes a weight in [0, 1], not {alpha}")
    return alpha


def cli_fields() -> list[tuple[dataclasses.Field, CliOption]]:
    """The fields offered as options of their own, in order, with how."""
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(TrainConfig) if "cli" in f.metadata]
