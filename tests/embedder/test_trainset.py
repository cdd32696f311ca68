"""The training images (trainset.py): decoding them once, the train/validation/held-out split,
rotation classes, and the augmented, normalised dataset a training stage reads."""

import numpy as np
import pytest
import torch
from torch import nn

from kshot.embedder.augment import AugmentConfig, build_augment
from kshot.embedder.preprocess import PreprocessConfig
from kshot.embedder.trainset import (
    AugmentedImages,
    ImageSet,
    load_image_set,
    split_data,
    with_rotation_classes,
)
from kshot.errors import InputError

GREY = PreprocessConfig(16, 16, (0.5,), (0.5,), channels=1)


def class_labels(counts: list[int]) -> np.ndarray:
    """``counts[c]`` images of class ``c``, the classes shuffled together."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(123).permutation(labels)


COUNTS = [10, 8, 6, 5, 4, 3, 2, 12, 7, 9]


# --- split_data ---------------------------------------------------------------------------------


def test_split_covers_every_image_exactly_once():
    labels = class_labels(COUNTS)
    split = split_data(labels, val_fraction=0.2, holdout_classes=2, seed=0)
    parts = np.concatenate([split.train, split.val, split.holdout])
    assert sorted(parts.tolist()) == list(range(len(labels)))
    for part in (split.train, split.val, split.holdout, split.references):
        assert np.all(np.diff(part) > 0)  # sorted, no repeats


def test_holdout_takes_whole_classes_that_nothing_else_sees():
    labels = class_labels(COUNTS)
    split = split_data(labels, val_fraction=0.3, holdout_classes=3, seed=4)
    held = set(labels[split.holdout].tolist())
    assert len(held) == 3
    for c in held:
        assert set(np.flatnonzero(labels == c).tolist()) <= set(split.holdout.tolist())
    seen = set(labels[split.train].tolist()) | set(labels[split.val].tolist())
    assert seen.isdisjoint(held)
    assert seen | held == set(range(len(COUNTS)))


def test_holdout_larger_than_the_classes_holds_them_all():
    labels = class_labels([3, 3])
    split = split_data(labels, val_fraction=0.5, holdout_classes=5, seed=0)
    assert len(split.holdout) == 6 and len(split.train) == len(split.val) == 0


def test_validation_is_stratified_by_class():
    labels = class_labels(COUNTS)
    split = split_data(labels, val_fraction=0.25, holdout_classes=0, seed=1)
    for c, n in enumerate(COUNTS):
        in_val = int(np.sum(labels[split.val] == c))
        expected = max(1, round(0.25 * n))
        assert in_val == min(expected, n - 2), (c, n)


def test_validation_never_takes_a_class_below_two_training_images():
    labels = class_labels([2, 3, 4, 20])
    split = split_data(labels, val_fraction=0.9, holdout_classes=0, seed=0)
    train_counts = np.bincount(labels[split.train], minlength=4)
    val_counts = np.bincount(labels[split.val], minlength=4)
    assert train_counts.tolist() == [2, 2, 2, 2]
    assert val_counts.tolist() == [0, 1, 2, 18]


def test_no_validation_fraction_keeps_every_image_for_training():
    labels = class_labels(COUNTS)
    split = split_data(labels, val_fraction=0.0, holdout_classes=1, seed=0)
    assert len(split.val) == 0
    assert len(split.train) + len(split.holdout) == len(labels)


@pytest.mark.parametrize("references", [1, 3, 5])
def test_references_are_a_few_training_images_of_each_class(references):
    labels = class_labels(COUNTS)
    split = split_data(labels, 0.2, holdout_classes=2, seed=2, references=references)
    assert set(split.references.tolist()) <= set(split.train.tolist())
    per_class = np.bincount(labels[split.references], minlength=len(COUNTS))
    train_per_class = np.bincount(labels[split.train], minlength=len(COUNTS))
    assert np.array_equal(per_class, np.minimum(train_per_class, references))


def test_split_is_fixed_by_its_seed():
    labels = class_labels(COUNTS)
    first = split_data(labels, 0.3, holdout_classes=2, seed=7)
    again = split_data(labels, 0.3, holdout_classes=2, seed=7)
    for name in ("train", "val", "holdout", "references"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    others = [split_data(labels, 0.3, holdout_classes=2, seed=s) for s in range(8, 12)]
    assert any(not np.array_equal(first.val, other.val) for other in others)
    assert any(not np.array_equal(first.holdout, other.holdout) for other in others)


# --- ImageSet and rotation classes --------------------------------------------------------------


def test_subset_keeps_pixels_and_labels_together():
    pixels = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2).clone()
    images = ImageSet(pixels, torch.tensor([10, 11, 12, 13, 14]))
    part = images.subset(np.array([3, 0]))
    assert len(part) == 2
    assert part.labels.tolist() == [13, 10]
    assert part.pixels[:, 0, 0, 0].tolist() == [3, 0]


def test_rotation_classes_turn_each_image_into_four_classes():
    pixels = torch.zeros((2, 1, 4, 4), dtype=torch.uint8)
    pixels[:, 0, 0, 0] = 255  # a bright top-left corner
    pixels[1, 0, 0, 1] = 100  # the second image is not symmetric about its diagonal
    images = ImageSet(pixels, torch.tensor([0, 2]))
    turned = with_rotation_classes(images)
    assert len(turned) == 8
    assert turned.labels.tolist() == [0, 8, 1, 9, 2, 10, 3, 11]
    for k in range(4):
        for i in range(2):
            assert torch.equal(turned.pixels[2 * k + i], torch.rot90(pixels[i], k, dims=(1, 2)))
    # Quarter turns counter-clockwise: the corner goes to the bottom-left, then bottom-right.
    corners = [tuple(torch.nonzero(turned.pixels[2 * k, 0] == 255)[0].tolist()) for k in range(4)]
    assert corners == [(0, 0), (3, 0), (3, 3), (0, 3)]


# --- AugmentedImages ----------------------------------------------------------------------------


def test_augmented_images_are_normalised_floats_of_the_crop_shape():
    pixels = torch.zeros((3, 1, 16, 16), dtype=torch.uint8)
    pixels[1] = 255
    pixels[2, :, :, :8] = 255
    dataset = AugmentedImages(ImageSet(pixels, torch.tensor([4, 5, 6])), nn.Identity(), GREY)
    assert len(dataset) == 3
    image, label = dataset[1]
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16)
    assert torch.all(image == 1.0)  # (255 - 127.5) / 127.5
    assert int(label) == 5
    assert torch.all(dataset[0][0] == -1.0)
    assert torch.equal(dataset[2][0], GREY.normalize(pixels[2]))


def test_augmented_images_go_through_the_augmentation_first():
    pixels = torch.zeros((1, 1, 16, 16), dtype=torch.uint8)
    pixels[0, :, :, :4] = 255  # a bright left edge
    flip = build_augment(AugmentConfig(hflip=1.0))
    image, _ = AugmentedImages(ImageSet(pixels, torch.tensor([0])), flip, GREY)[0]
    assert torch.all(image[:, :, -4:] == 1.0) and torch.all(image[:, :, :-4] == -1.0)
    assert torch.equal(pixels, torch.zeros_like(pixels).index_fill_(3, torch.arange(4), 255))


# --- load_image_set -----------------------------------------------------------------------------


def test_load_image_set_reports_unreadable_files_and_keeps_the_rest(tmp_path, make_image):
    paths = [
        make_image(tmp_path / "a.png", size=(20, 20), color=10, mode="L"),
        make_image(tmp_path / "b.png", size=(24, 20), color=200, mode="L"),
        tmp_path / "x.png",
        make_image(tmp_path / "c.jpg", size=(30, 30), color=(90, 90, 90), quality=100),
    ]
    paths[2].write_text("not an image")
    images, failed = load_image_set(GREY, paths, [0, 1, 2, 3])
    assert [i for i, _ in failed] == [2]
    assert isinstance(failed[0][1], InputError) and "x.png" in str(failed[0][1])
    assert images.labels.tolist() == [0, 1, 3]
    assert images.pixels.dtype == torch.uint8 and images.pixels.shape == (3, 1, 16, 16)
    assert images.pixels[0].unique().tolist() == [10]
    assert images.pixels[1].unique().tolist() == [200]
    assert abs(int(images.pixels[2].float().mean()) - 90) <= 2


def test_load_image_set_with_nothing_readable_is_empty(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    images, failed = load_image_set(GREY, [bad], [0])
    assert len(images) == 0 and images.pixels.shape == (0, 1, 16, 16)
    assert [i for i, _ in failed] == [0]
