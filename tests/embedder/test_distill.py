"""Distillation: the loss, a student that embeds as its teacher, and preprocessing of its own."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.embedder.distill import (
    DistillConfig,
    DistillImages,
    DistillLoss,
    build_student,
    distill,
    distillation_loss,
)
from kshot.embedder.distill_holdout import (
    DistillHoldout,
    folder_labels,
    holdout_split,
    plan_holdout,
)
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.preprocess import PreprocessConfig
from kshot.errors import KshotError
from tests.embedder.test_training import tiny_embedder, tiny_images


def test_the_loss_is_zero_for_the_teachers_own_embeddings_and_grows_with_the_gap():
    teacher = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    other = F.normalize(teacher + 0.5 * torch.randn(6, 4), dim=1)
    for config in (DistillConfig(), DistillConfig(loss="mse", relational=0.0)):
        assert distillation_loss(teacher, teacher, config).item() == pytest.approx(0, abs=1e-6)
        assert distillation_loss(other, teacher, config).item() > 0.01
    cosine = (1 - F.cosine_similarity(other, teacher)).mean()
    relations = F.mse_loss(other @ other.t(), teacher @ teacher.t())
    both = distillation_loss(other, teacher, DistillConfig(relational=2.0))
    assert both.item() == pytest.approx((cosine + 2 * relations).item(), rel=1e-5)


def test_a_bad_setting_is_refused():
    with pytest.raises(KshotError, match="unknown distillation loss 'l1'"):
        DistillConfig(loss="l1")
    with pytest.raises(KshotError, match="at least 0"):
        DistillConfig(relational=-1)
    with pytest.raises(KshotError, match=r"held-out share must be in \[0, 1\), not 1.0"):
        DistillConfig(holdout=1.0)


def test_the_held_out_images_are_a_seeded_share_apart_from_the_training_ones():
    train, held = holdout_split(100, 0.2, seed=3)
    assert len(held) == 20 and len(train) == 80
    assert sorted(set(train.tolist()) | set(held.tolist())) == list(range(100))
    assert torch.equal(holdout_split(100, 0.2, seed=3)[1], held)
    assert not torch.equal(holdout_split(100, 0.2, seed=4)[1], held)


def test_too_few_to_hold_out_leaves_the_training_images_to_pick():
    train, held = holdout_split(40, 0.1, seed=0)  # 4 < MIN_HOLDOUT
    assert torch.equal(train, torch.arange(40)) and torch.equal(held, torch.arange(40))
    assert torch.equal(holdout_split(40, 0.0, seed=0)[1], torch.arange(40))
    plan = plan_holdout(torch.zeros(40, 1, 16, 16, dtype=torch.uint8), None, 0.1, 0, 0)
    assert plan.held_out == 0 and plan.validation is None
    assert plan.describe() == "nothing held out (too few images)"


def test_images_in_class_folders_are_labelled_by_them(tmp_path):
    files = [tmp_path / "rust" / "a.png", tmp_path / "rust" / "b.png", tmp_path / "scab" / "c.png"]
    assert folder_labels(tmp_path, files).tolist() == ["rust", "rust", "scab"]
    assert folder_labels(tmp_path, [*files, tmp_path / "loose.png"]) is None  # not all in one


def test_with_classes_whole_classes_are_held_out_and_scored():
    labels = np.repeat([f"class {c}" for c in range(10)], 4)
    pixels = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8)
    plan = plan_holdout(pixels, labels, 0.1, 2, 0)
    assert len(plan.classes) == 2 and set(labels[plan.held.numpy()]) == set(plan.classes)
    assert not set(labels[plan.train.numpy()]) & set(plan.classes)
    assert len(plan.train) + len(plan.held) == 40 and plan.held_out == 8
    assert plan.validation is not None and plan.validation.ways == 2
    assert plan.describe().startswith("8 images held out: 2 held-out classes")
    assert plan_holdout(pixels, labels, 0.1, 0, 0).validation is None  # 0: a share of images


@pytest.mark.parametrize(
    ("count", "labelled", "message"),
    [
        (1, True, "hold out at least 2"),
        (9, True, "leave at least 2 to train on"),
        (2, False, "needs the images in class sub-folders"),
    ],
)
def test_held_out_classes_that_cannot_be_are_a_clear_error(count, labelled, message):
    labels = np.repeat([f"class {c}" for c in range(10)], 4) if labelled else None
    pixels = torch.zeros(40, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(KshotError, match=message):
        plan_holdout(pixels, labels, 0.1, count, 0)


def colour_student(size: int = 32):
    """A conv4 on 3-channel ``size``-pixel crops with a head onto the tiny teacher's 8."""
    preprocess = PreprocessConfig(size, size, (0.5,) * 3, (0.5,) * 3, channels=3)
    torch.manual_seed(1)
    return build_embedder(EmbedderConfig("conv4", preprocess, embedding_dim=8), pretrained=False)


def test_distillation_lowers_the_students_loss_with_inputs_of_its_own():
    """The teacher reads 16-pixel grey crops, the student 32-pixel colour ones of the same
    images: each gets its own, or the networks would not even run."""
    teacher, images = tiny_embedder(), tiny_images()
    student = colour_student()
    grey = images.pixels
    colour = F.interpolate(grey.float(), size=32).round().to(torch.uint8).repeat(1, 3, 1, 1)
    pair = DistillImages(grey, colour, paths=[])
    result = distill(teacher, student, pair, DistillConfig(epochs=6, batch_size=8, lr=3e-3))
    assert len(result.history) == 6
    assert result.loss_after < 0.7 * result.loss_before, result


def test_a_student_of_another_size_learns_through_the_loss_s_projection():
    """conv4's 64 features against a teacher of 8: the student keeps its own size (the
    projection is the loss's), and distillation still lowers the loss."""
    teacher, images = tiny_embedder(), tiny_images()  # 8 dimensions
    student = build_embedder(
        EmbedderConfig("conv4", PreprocessConfig(16, 16, (0.5,), (0.5,), channels=1)),
        pretrained=False,
    )
    pair = DistillImages(images.pixels, images.pixels, paths=[])
    result = distill(teacher, student, pair, DistillConfig(epochs=6, batch_size=8, lr=3e-3))
    assert student.embedding_dim == 64
    assert result.loss_after < result.loss_before, result


def test_the_projection_starts_at_the_ridge_regression():
    """Where the teacher's embeddings are a linear map of the student's, the projection starts
    near that map: the first term is near zero before any step."""
    generator = torch.Generator().manual_seed(0)
    student = F.normalize(torch.randn(400, 4, generator=generator), dim=1)
    teacher = F.normalize(student @ torch.randn(4, 6, generator=generator), dim=1)
    config = DistillConfig(relational=0.0)
    loss = DistillLoss(config, (student, teacher))
    assert loss.projection.weight.shape == (6, 4)
    assert loss(student, teacher).item() < 0.01
    assert DistillLoss(config, (student, student)).projection is None  # same size: none


def test_the_student_has_no_head_and_its_own_input_size():
    student = build_student("conv4", image_size=32, pretrained=False)
    assert student.config.embedding_dim is None
    assert student.embedding_dim == 256  # conv4 flattens 64 channels x 2 x 2 at 32 pixels
    assert student.config.preprocess.input_size == 32


def test_the_held_out_images_are_never_trained_on():
    """The held-out images are made blank (one grey level): no image the student trains on
    may be blank, and the loss reported is the loss on them."""
    teacher, images = tiny_embedder(), tiny_images(per_class=10)  # 40: 10 held out
    config = DistillConfig(epochs=3, batch_size=8, lr=3e-3, holdout=0.25)
    _, held = holdout_split(len(images.pixels), 0.25, config.seed)
    pixels = images.pixels.clone()
    pixels[held] = 200
    student = colour_student(16)
    colour = pixels.repeat(1, 3, 1, 1)
    trained_on_blank = []

    def check(module, inputs):
        if module.training:
            spread = inputs[0].flatten(1).std(dim=1)
            trained_on_blank.append(bool((spread == 0).any()))

    student.register_forward_pre_hook(check)
    result = distill(teacher, student, DistillImages(pixels, colour, paths=[]), config)
    assert result.held_out == len(held) == round(0.25 * len(pixels))
    assert trained_on_blank and not any(trained_on_blank)
    assert result.loss_after == result.history[-1]["eval_loss"]


def test_the_student_keeps_its_last_weights_and_reports_each_epochs_scores():
    """The held-out classes score 0.5 at the start, then 0.4, 0.7, 0.6: each epoch's score is
    reported and the student ends with epoch 3's weights, whatever the scores say."""
    teacher, images = tiny_embedder(), tiny_images(per_class=10)
    scores = iter([0.5, 0.4, 0.7, 0.6])
    weights = {}

    def validation(student):
        return {"library_accuracy": next(scores)}

    plan = DistillHoldout(torch.arange(30), torch.arange(30, 40), validation, ["a", "b"])
    student = colour_student(16)
    config = DistillConfig(epochs=3, batch_size=8, lr=3e-3)
    pair = DistillImages(images.pixels, images.pixels.repeat(1, 3, 1, 1), paths=[])

    def remember(stats):
        weights[stats["epoch"]] = {k: v.clone() for k, v in student.state_dict().items()}

    result = distill(teacher, student, pair, config, on_epoch=remember, plan=plan)
    assert [stats["scores"]["library_accuracy"] for stats in result.history] == [0.4, 0.7, 0.6]
    assert result.scores_before == {"library_accuracy": 0.5}
    assert result.scores_after == {"library_accuracy": 0.6} and result.held_classes == ["a", "b"]
    assert result.loss_after == result.history[-1]["eval_loss"] and result.held_out == 10
    kept = student.state_dict()
    assert all(torch.equal(kept[k], weights[3][k]) for k in kept)
    assert not all(torch.equal(kept[k], weights[2][k]) for k in kept)
