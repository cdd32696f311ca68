"""Training an embedder (training.py): the two stages, what each may change, resuming a stopped
run exactly, the best epoch, early stopping and every loss, on a tiny grey image set."""

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.embedder.augment import AugmentConfig
from kshot.embedder.backbones import get_backbone
from kshot.embedder.inference import backbone_features
from kshot.embedder.losses import LOSSES
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.preprocess import PreprocessConfig
from kshot.embedder.step import LossModel
from kshot.embedder.training import (
    Observer,
    Stage,
    TrainConfig,
    _class_weights,
    plan_stages,
    selection_score,
    train_embedder,
)
from kshot.embedder.trainset import ImageSet
from kshot.errors import KshotError

SIDE = 16
# 4 classes x 6 images, batches of 4 classes x 2 images: three steps an epoch (protonet: one
# episode of 4 ways, 2 shots and 2 queries).
FAST = {"batch_size": 8, "samples_per_class": 2, "ways": 4, "shots": 2, "queries": 2}
# The training loop's plainest settings, which these tests vary one at a time (kshot train's
# defaults are a two-stage ArcFace recipe for pretrained backbones).
PLAIN = {"loss": "triplet", "head_epochs": 0, "lr": 1e-3, "finetune_lr": None, "schedule": "none"}


def recipe(**settings) -> TrainConfig:
    return TrainConfig(**{**PLAIN, **settings})


def tiny_images(classes: int = 4, per_class: int = 6, seed: int = 0) -> ImageSet:
    """``classes`` grey block patterns of ``SIDE`` pixels, each image its class's pattern plus a
    little noise of its own; labels ``0..classes-1``, ``per_class`` images each."""
    rng = np.random.default_rng(seed)
    pixels = []
    for _ in range(classes):
        base = np.kron(rng.integers(0, 256, (4, 4)), np.ones((SIDE // 4, SIDE // 4)))
        for _ in range(per_class):
            noisy = base + rng.normal(0, 8, base.shape)
            pixels.append(np.clip(noisy, 0, 255).astype(np.uint8)[None])
    labels = torch.arange(classes).repeat_interleave(per_class)
    return ImageSet(torch.from_numpy(np.stack(pixels)), labels)


def tiny_embedder(seed: int = 0, embedding_dim: int | None = 8, head_hidden: int | None = 16):
    torch.manual_seed(seed)
    preprocess = PreprocessConfig(SIDE, SIDE, (0.5,), (0.5,), channels=1)
    config = EmbedderConfig("conv4", preprocess, embedding_dim, head_hidden)
    return build_embedder(config, pretrained=False)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(before: dict, module: torch.nn.Module) -> list[str]:
    after = module.state_dict()
    return [k for k in before if torch.equal(before[k], after[k])]


def changed(before: dict, module: torch.nn.Module) -> list[str]:
    after = module.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


class Interrupted(Exception):
    pass


class Recorder(Observer):
    """Keeps the latest saved state (after a ``torch.save`` / ``torch.load(weights_only=True)``
    round trip, as the state file would give it back), the embedder's weights after each epoch,
    and stops the run like a Ctrl-C in the first step of epoch ``stop_in``."""

    def __init__(self, embedder=None, stop_in: int | None = None):
        self.embedder, self.stop_in = embedder, stop_in
        self.epoch = 0
        self.state: dict | None = None
        self.weights: dict[int, dict] = {}
        self.started: list[tuple[str, int, int]] = []

    def epoch_started(self, stage: str, epoch: int, steps: int) -> None:
        self.epoch = epoch
        self.started.append((stage, epoch, steps))

    def step_done(self) -> None:
        if self.epoch == self.stop_in:
            raise Interrupted

    def epoch_done(self, stats) -> None:
        if self.embedder is not None:
            self.weights[stats.epoch] = snapshot(self.embedder)

    def save_state(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        self.state = torch.load(buffer, weights_only=True)


def scores_by_epoch(recorder: Recorder, scores: dict[int, float]):
    """A ``validate`` that scores each epoch from a preset table (the recorder knows the epoch)."""
    return lambda embedder: {"precision_at_1": scores[recorder.epoch]}


# --- plan_stages --------------------------------------------------------------------------------


def test_plan_with_a_head_stage_finetunes_at_a_tenth_of_the_lr():
    stages = plan_stages(recipe(head_epochs=2, epochs=3, lr=1e-3, trainable_blocks=2))
    assert [s.name for s in stages] == ["head", "finetune"]
    assert [s.epochs for s in stages] == [2, 3]
    assert stages[0].lr == 1e-3 and stages[0].trainable_blocks == 0
    assert stages[1].lr == pytest.approx(1e-4) and stages[1].trainable_blocks == 2


def test_plan_without_a_head_stage_trains_everything_at_the_lr():
    assert plan_stages(recipe(epochs=4, lr=3e-3)) == [Stage("train", 4, 3e-3, None)]


def test_plan_with_only_a_head_stage():
    assert plan_stages(recipe(head_epochs=5, epochs=0, lr=2e-3)) == [Stage("head", 5, 2e-3, 0)]


def test_plan_uses_an_explicit_finetune_lr():
    stages = plan_stages(recipe(head_epochs=1, epochs=1, lr=1e-2, finetune_lr=5e-4))
    assert stages[1].lr == 5e-4
    assert plan_stages(recipe(epochs=1, lr=1e-2, finetune_lr=5e-4))[0].lr == 5e-4


def test_plan_refuses_zero_epochs_in_both_stages():
    with pytest.raises(KshotError, match="nothing to train"):
        plan_stages(recipe(head_epochs=0, epochs=0))


# --- what each stage changes --------------------------------------------------------------------


HEAD_INPUTS = {
    "cached features": {},
    "augmentation left to stage 2": {"augment": AugmentConfig(hflip=0.5)},
    "augmented": {"augment": AugmentConfig(hflip=0.5), "augment_head": True},
}


@pytest.mark.parametrize("options", HEAD_INPUTS.values(), ids=HEAD_INPUTS.keys())
def test_head_stage_leaves_the_backbone_bit_for_bit_unchanged(options):
    embedder = tiny_embedder()
    backbone, head = snapshot(embedder.backbone), snapshot(embedder.head)
    config = recipe(loss="softmax", head_epochs=2, epochs=0, **FAST, **options)
    result = train_embedder(embedder, tiny_images(), config)
    assert [s.stage for s in result.history] == ["head", "head"]
    # Parameters and buffers alike: batch-norm running statistics and their counters too.
    assert any("running_mean" in k for k in backbone)
    assert unchanged(backbone, embedder.backbone) == list(backbone)
    assert changed(head, embedder.head) == list(head)
    assert not embedder.training  # handed back in eval mode


def test_head_stage_augments_only_with_augment_head():
    """Without ``augment_head`` stage 1 trains on the unaugmented images' features, exactly as
    with no augmentation at all; with it, on flipped images."""
    images = tiny_images()

    def head_after(**options):
        embedder = tiny_embedder()
        config = recipe(loss="softmax", head_epochs=2, epochs=0, **FAST, **options)
        train_embedder(embedder, images, config)
        return snapshot(embedder.head)

    plain = head_after()
    flip = AugmentConfig(hflip=1.0)
    not_in_head = head_after(augment=flip)
    in_head = head_after(augment=flip, augment_head=True)
    assert all(torch.equal(plain[k], not_in_head[k]) for k in plain)
    assert not all(torch.equal(plain[k], in_head[k]) for k in plain)


def test_training_the_last_block_changes_only_it_and_the_head():
    embedder = tiny_embedder()
    blocks = get_backbone("conv4").blocks(embedder.backbone)
    assert len(blocks) == 4
    before = [snapshot(block) for block in blocks]
    head = snapshot(embedder.head)
    config = recipe(loss="softmax", epochs=2, trainable_blocks=1, **FAST)
    train_embedder(embedder, tiny_images(), config)
    for block, saved in zip(blocks[:3], before[:3], strict=True):
        assert unchanged(saved, block) == list(saved)  # batch-norm statistics included
    moved = changed(before[3], blocks[3])
    assert {"12.weight", "13.weight", "13.running_mean", "13.running_var"} <= set(moved)
    assert changed(head, embedder.head) == list(head)


def test_a_finetune_stage_after_the_head_stage_changes_the_whole_backbone():
    embedder = tiny_embedder()
    backbone = snapshot(embedder.backbone)
    config = recipe(loss="softmax", head_epochs=1, epochs=1, **FAST)
    result = train_embedder(embedder, tiny_images(), config)
    assert [(s.stage, s.epoch) for s in result.history] == [("head", 1), ("finetune", 2)]
    assert result.history[1].lr == pytest.approx(config.lr / 10)
    first_conv = embedder.backbone[0].weight
    assert not torch.equal(backbone["0.weight"], first_conv)


def test_a_head_stage_with_nothing_to_train_is_skipped():
    """No head and a loss without parameters: stage 1 has nothing to train."""
    embedder = tiny_embedder(embedding_dim=None, head_hidden=None)
    config = recipe(loss="triplet", head_epochs=2, epochs=1, **FAST)
    result = train_embedder(embedder, tiny_images(), config)
    assert [(s.stage, s.epoch) for s in result.history] == [("finetune", 1)]


def test_training_needs_two_classes():
    images = tiny_images(classes=1)
    with pytest.raises(KshotError, match="two classes"):
        train_embedder(tiny_embedder(), images, recipe(epochs=1, **FAST))


def test_observer_hears_each_epoch_with_its_stage_and_step_count():
    recorder = Recorder()
    config = recipe(loss="softmax", head_epochs=1, epochs=2, **FAST)
    train_embedder(tiny_embedder(), tiny_images(), config, observer=recorder)
    assert recorder.started == [("head", 1, 3), ("finetune", 2, 3), ("finetune", 3, 3)]


# --- resuming -----------------------------------------------------------------------------------


RESUMABLE = {
    "two stages, stopped at the boundary": (
        recipe(loss="arcface", head_epochs=1, epochs=2, **FAST),
        2,
    ),
    "two stages, stopped within the second": (
        recipe(loss="arcface", head_epochs=1, epochs=2, **FAST),
        3,
    ),
    "augmented head stage, stopped within it": (
        recipe(
            loss="softmax",
            head_epochs=2,
            epochs=1,
            augment=AugmentConfig(hflip=0.5, brightness=0.2, brightness_contrast_p=0.5),
            augment_head=True,
            schedule="plateau",
            **FAST,
        ),
        2,
    ),
    "one stage, cosine schedule": (
        recipe(loss="triplet", epochs=3, schedule="cosine", optimizer="adamw", **FAST),
        2,
    ),
}


@pytest.mark.parametrize("config, stop_in", RESUMABLE.values(), ids=RESUMABLE.keys())
def test_a_resumed_run_ends_exactly_as_an_unbroken_one(config, stop_in):
    """Stopped in the first step of epoch ``stop_in``, resumed from the state saved after the
    epoch before, in a fresh embedder: same weights, same history, same best epoch."""
    images = tiny_images()
    scores = {1: 0.5, 2: 0.8, 3: 0.6}

    unbroken = tiny_embedder()
    unbroken_recorder = Recorder(unbroken)
    validate = scores_by_epoch(unbroken_recorder, scores)
    expected = train_embedder(
        unbroken, images, config, observer=unbroken_recorder, validate=validate
    )

    stopped = Recorder(stop_in=stop_in)
    with pytest.raises(Interrupted):
        train_embedder(
            tiny_embedder(),
            images,
            config,
            observer=stopped,
            validate=scores_by_epoch(stopped, scores),
        )
    assert stopped.state is not None and stopped.state["stage_epoch"] >= 1
    assert len(stopped.state["history"]) == stop_in - 1

    resumed = tiny_embedder()
    resumed_recorder = Recorder(resumed)
    result = train_embedder(
        resumed,
        images,
        config,
        observer=resumed_recorder,
        validate=scores_by_epoch(resumed_recorder, scores),
        resume_from=stopped.state,
    )
    assert [e for _, e, _ in resumed_recorder.started] == list(range(stop_in, 4))
    last = unbroken_recorder.weights[3]
    assert all(torch.equal(resumed_recorder.weights[3][k], v) for k, v in last.items())
    # Both end with the best (second) epoch's weights.
    assert unchanged(snapshot(unbroken), resumed) == list(unbroken.state_dict())
    assert result.best_epoch == expected.best_epoch == 2
    assert result.best_metrics == expected.best_metrics

    def comparable(history):
        return [(s.stage, s.epoch, s.loss, s.lr, s.metrics) for s in history]

    assert comparable(result.history) == comparable(expected.history)


def test_resuming_with_other_settings_names_them():
    images = tiny_images()
    config = recipe(loss="softmax", epochs=2, lr=1e-3, **FAST)
    recorder = Recorder(stop_in=2)
    with pytest.raises(Interrupted):
        train_embedder(tiny_embedder(), images, config, observer=recorder)
    other = recipe(loss="softmax", epochs=2, lr=5e-3, **FAST)
    with pytest.raises(KshotError, match="cannot resume") as caught:
        train_embedder(tiny_embedder(), images, other, resume_from=recorder.state)
    assert "lr" in str(caught.value)
    assert "0.001" in str(caught.value) and "0.005" in str(caught.value)


def test_resuming_on_other_images_is_refused():
    config = recipe(loss="softmax", epochs=2, **FAST)
    recorder = Recorder(stop_in=2)
    with pytest.raises(Interrupted):
        train_embedder(tiny_embedder(), tiny_images(), config, observer=recorder)
    with pytest.raises(KshotError, match="images"):
        train_embedder(
            tiny_embedder(), tiny_images(per_class=5), config, resume_from=recorder.state
        )


def test_resuming_may_change_the_patience():
    images = tiny_images()
    config = recipe(loss="softmax", epochs=2, **FAST)
    recorder = Recorder(stop_in=2)
    with pytest.raises(Interrupted):
        train_embedder(tiny_embedder(), images, config, observer=recorder)
    patient = recipe(loss="softmax", epochs=2, patience=5, **FAST)
    result = train_embedder(tiny_embedder(), images, patient, resume_from=recorder.state)
    assert [s.epoch for s in result.history] == [1, 2]


def test_saved_state_survives_torch_save_and_a_weights_only_load():
    captured = []

    class Keeper(Observer):
        def save_state(self, state):
            buffer = io.BytesIO()
            torch.save(state, buffer)
            buffer.seek(0)
            captured.append((snapshot_state(state), torch.load(buffer, weights_only=True)))

    def snapshot_state(state):
        return {k: v.clone() for k, v in state["model"].items()}, dict(state["config"])

    scores = iter([0.5, 0.7, 0.6])
    config = recipe(loss="arcface", head_epochs=1, epochs=2, schedule="plateau", **FAST)
    train_embedder(
        tiny_embedder(),
        tiny_images(),
        config,
        observer=Keeper(),
        validate=lambda embedder: {"precision_at_1": next(scores)},
    )
    assert len(captured) == 3
    for (model, config_dict), loaded in captured:
        assert loaded["config"] == config_dict == config.to_dict()
        assert set(loaded["model"]) == set(model)
        assert all(torch.equal(loaded["model"][k], model[k]) for k in model)
        assert loaded["loss"]  # arcface's class weights
        assert loaded["best_state"] is not None
    last = captured[-1][1]
    assert last["stage_index"] == 1 and last["stage_epoch"] == 2 and last["stage_finished"]
    assert last["best_epoch"] == 2 and last["best_score"] == 0.7
    assert [h["epoch"] for h in last["history"]] == [1, 2, 3]


# --- the best epoch and early stopping ----------------------------------------------------------


def test_the_embedder_ends_with_the_best_epochs_weights():
    embedder = tiny_embedder()
    recorder = Recorder(embedder)
    scores = iter([0.5, 0.9, 0.7])
    result = train_embedder(
        embedder,
        tiny_images(),
        recipe(loss="softmax", epochs=3, **FAST),
        observer=recorder,
        validate=lambda e: {"precision_at_1": next(scores), "other": 1.0},
    )
    assert result.best_epoch == 2
    assert result.best_metrics == {"precision_at_1": 0.9, "other": 1.0}
    assert [s.metrics["precision_at_1"] for s in result.history] == [0.5, 0.9, 0.7]
    final = embedder.state_dict()
    assert all(torch.equal(final[k], v) for k, v in recorder.weights[2].items())
    assert any(not torch.equal(final[k], v) for k, v in recorder.weights[3].items())


def test_without_validation_the_embedder_keeps_the_last_weights():
    embedder = tiny_embedder()
    recorder = Recorder(embedder)
    result = train_embedder(
        embedder, tiny_images(), recipe(loss="softmax", epochs=2, **FAST), observer=recorder
    )
    assert result.best_epoch is None and result.best_metrics == {}
    final = embedder.state_dict()
    assert all(torch.equal(final[k], v) for k, v in recorder.weights[2].items())


@pytest.mark.parametrize("patience, epochs_run", [(1, 2), (2, 3)])
def test_patience_stops_a_stage_that_stopped_improving(patience, epochs_run):
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2])
    result = train_embedder(
        tiny_embedder(),
        tiny_images(),
        recipe(loss="softmax", epochs=5, patience=patience, **FAST),
        validate=lambda e: {"precision_at_1": next(scores)},
    )
    assert len(result.history) == epochs_run
    assert result.best_epoch == 1


def test_patience_lets_an_improving_run_finish():
    scores = iter([0.1, 0.2, 0.3, 0.4])
    result = train_embedder(
        tiny_embedder(),
        tiny_images(),
        recipe(loss="softmax", epochs=4, patience=1, **FAST),
        validate=lambda e: {"precision_at_1": next(scores)},
    )
    assert len(result.history) == 4 and result.best_epoch == 4


# --- losses and batch options -------------------------------------------------------------------


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_trains_end_to_end(loss):
    result = train_embedder(tiny_embedder(), tiny_images(), recipe(loss=loss, epochs=2, **FAST))
    assert len(result.history) == 2
    assert all(math.isfinite(s.loss) and s.loss >= 0 for s in result.history)


OPTIONS = {
    "class weights": {"class_weights": True},
    "shuffled batches": {"balanced_batches": False},
    "rotation classes": {"rotation_classes": True, "loss": "arcface"},
    "photo-like augmentation": {"augment": AugmentConfig(hflip=0.5, rotation=20, rotation_p=0.5)},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_batch_options_train(options):
    config = recipe(**{"epochs": 2, **FAST, **options})
    result = train_embedder(tiny_embedder(), tiny_images(), config)
    assert len(result.history) == 2
    assert all(math.isfinite(s.loss) for s in result.history)


def test_labels_need_not_be_consecutive_for_the_angular_losses():
    """arcface indexes its class weights by label: labels are recoded to 0..C-1 first."""
    images = tiny_images()
    images = ImageSet(images.pixels, torch.tensor([3, 7, 40, 1000]).repeat_interleave(6))
    result = train_embedder(tiny_embedder(), images, recipe(loss="arcface", epochs=1, **FAST))
    assert math.isfinite(result.history[0].loss)


def test_class_weights_change_the_loss_on_unbalanced_classes():
    images = tiny_images(per_class=12)
    keep = [i for i, label in enumerate(images.labels.tolist()) if label == 0 or i % 12 < 3]
    images = images.subset(keep)  # 12, 3, 3 and 3 images
    losses = []
    for weighted in (False, True):
        config = recipe(loss="softmax", epochs=1, class_weights=weighted, **FAST)
        losses.append(train_embedder(tiny_embedder(), images, config).history[0].loss)
    assert losses[0] != losses[1]


def test_class_weights_are_inverse_frequencies_averaging_one():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    weights = _class_weights(labels)
    assert torch.allclose(weights * torch.tensor([3.0, 1.0, 2.0]), weights[0] * 3)
    assert weights[labels].mean().item() == pytest.approx(1.0)


def test_a_class_absent_from_the_labels_gets_weight_zero():
    weights = _class_weights(torch.tensor([0, 0, 2, 2]))
    assert weights[1] == 0 and weights[0] == weights[2] == pytest.approx(1.0)


# --- what picks the epoch; keeping the pretrained features --------------------------------------


def test_the_held_out_classes_pick_the_epoch_when_there_are_some():
    """Known-class precision@1 peaks at epoch 1, new-class accuracy at epoch 2: epoch 2 is kept,
    and both stay in the history."""
    recorder = Recorder()
    table = {1: (0.9, 0.5), 2: (0.6, 0.7), 3: (0.8, 0.6)}

    def validate(embedder):
        p_at_1, fewshot = table[recorder.epoch]
        return {"precision_at_1": p_at_1, "fewshot_accuracy": fewshot}

    result = train_embedder(
        tiny_embedder(),
        tiny_images(),
        recipe(loss="softmax", epochs=3, **FAST),
        validate=validate,
        observer=recorder,
    )
    assert result.best_epoch == 2 and result.best_metrics["fewshot_accuracy"] == 0.7
    assert [s.metrics["precision_at_1"] for s in result.history] == [0.9, 0.6, 0.8]


def test_the_library_score_picks_the_epoch_before_the_new_classes_alone():
    metrics = {"precision_at_1": 0.9, "fewshot_accuracy": 0.8, "library_accuracy": 0.6}
    assert selection_score(metrics) == 0.6
    assert selection_score({"precision_at_1": 0.9, "fewshot_accuracy": 0.8}) == 0.8
    assert selection_score({"precision_at_1": 0.9}) == 0.9 and selection_score({}) is None


def test_the_distillation_penalty_is_zero_for_an_unchanged_backbone():
    embedder = tiny_embedder()
    loss, _ = LOSSES["softmax"](4, embedder.embedding_dim)
    images = tiny_images()
    inputs = embedder.config.preprocess.normalize(images.pixels)
    anchor = copy.deepcopy(embedder.backbone).eval()
    embedder.eval()  # the anchor is in eval mode; so the compared backbone must be here
    with_anchor = LossModel(embedder, loss, None, anchor, distill=5.0)(inputs, images.labels)
    plain = LossModel(embedder, loss, None)(inputs, images.labels)
    assert with_anchor.item() == pytest.approx(plain.item(), abs=1e-6)


def test_feature_distillation_keeps_the_backbone_nearer_its_original_features():
    images = tiny_images()

    def drift(weight: float) -> float:
        embedder = tiny_embedder()
        config = recipe(loss="softmax", epochs=3, lr=1e-2, feature_distillation=weight, **FAST)
        train_embedder(embedder, images, config)
        before = backbone_features(tiny_embedder(), images.pixels)
        after = backbone_features(embedder, images.pixels)
        return 1 - F.cosine_similarity(before, after, dim=1).mean().item()

    free, held = drift(0.0), drift(10.0)
    assert held < free / 2, (held, free)
