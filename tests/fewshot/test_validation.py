"""``TrainingValidation``: how ``kshot train`` scores its embedder on held-out images of the
training classes and on whole held-out classes, here on tiny synthetic crops and a conv4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kshot.embedder.trainset import ImageSet
from kshot.fewshot.validation import TrainingValidation
from tests.conftest import make_conv4, pattern


def crops(counts: dict[int, int], seed: int = 0) -> ImageSet:
    """``count`` grey 28-pixel crops of class ``code`` for each item: each class a block pattern
    of its own, each crop that pattern with a little noise of its own."""
    pixels, labels = [], []
    for code, count in counts.items():
        for i in range(count):
            image = pattern(
                code, side=28, cell=7, noise=8.0, noise_seed=1000 * seed + 50 * code + i
            )
            pixels.append(torch.from_numpy(image.mean(axis=2).astype(np.uint8))[None])
            labels.append(code)
    return ImageSet(torch.stack(pixels), torch.as_tensor(labels, dtype=torch.int64))


@pytest.fixture(scope="module")
def embedder():
    """An untrained conv4 without a head (its embedding: the backbone's features)."""
    return make_conv4(0, embedding_dim=None)


@pytest.fixture(scope="module")
def known() -> tuple[ImageSet, ImageSet]:
    """``(val, references)`` of three training classes."""
    return crops({0: 3, 1: 3, 2: 3}, seed=1), crops({0: 4, 1: 4, 2: 4}, seed=2)


def in_unit_range(scores: dict) -> bool:
    return all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in scores.values())


def test_known_classes_give_precision_and_accuracy(embedder, known):
    val, references = known
    validation = TrainingValidation(val, references, None)
    assert validation.enabled
    scores = validation(embedder)
    assert set(scores) == {"precision_at_1", "accuracy"}
    assert in_unit_range(scores)
    assert validation.describe() == "9 held-out images of the training classes"


def test_held_out_classes_give_fewshot_accuracy(embedder):
    validation = TrainingValidation(None, None, crops({3: 6, 4: 6, 5: 6}), episodes=4)
    assert validation.enabled
    assert (validation.ways, validation.shots, validation.queries) == (3, 5, 1)
    scores = validation(embedder)
    assert set(scores) == {"fewshot_accuracy"}
    assert in_unit_range(scores)
    assert validation.describe() == (
        "3 held-out classes (3-way 5-shot, 1 queries per class, 4 episodes; "
        "standard error at most 11.8%)"  # 0.5 / sqrt(18 images)
    )


def test_both_kinds_together(embedder, known):
    val, references = known
    validation = TrainingValidation(val, references, crops({7: 4, 9: 4}), episodes=3)
    scores = validation(embedder)
    assert set(scores) == {"precision_at_1", "accuracy", "fewshot_accuracy", "library_accuracy"}
    assert in_unit_range(scores)
    assert validation.describe() == (
        "9 held-out images of the training classes and "
        "2 held-out classes (2-way 3-shot, 1 queries per class, 3 episodes; "
        "standard error at most 17.7%), and 1-shot in a library of all 5 classes"
    )


def test_new_classes_in_the_library_compete_with_the_known_ones():
    """Held-out crops of a known class's pattern under new names: alone they are told apart
    from one another, in the library their queries go to the known classes (about as close)
    as often as not, so the library's score is lower at the same number of shots."""
    embedder = make_conv4(0, embedding_dim=None)
    references = crops({0: 4, 1: 4, 2: 4}, seed=2)
    twins = crops({0: 6, 1: 6, 2: 6}, seed=3)  # the known classes' patterns ...
    twins = ImageSet(twins.pixels, twins.labels + 10)  # ... as new classes 10, 11, 12
    validation = TrainingValidation(None, references, twins, shots=3, episodes=10, library_shots=3)
    scores = validation(embedder)
    assert scores["fewshot_accuracy"] > 0.9
    assert scores["library_accuracy"] < scores["fewshot_accuracy"] - 0.2


@pytest.mark.parametrize(
    ("counts", "shots", "expected"),
    [
        ({0: 4, 1: 9}, 5, (3, 1)),  # the smallest class keeps one image to query
        ({0: 4, 1: 9}, 2, (2, 2)),
        ({0: 9, 1: 9}, 5, (5, 4)),
        ({0: 2, 1: 2, 2: 5}, 5, (1, 1)),
    ],
)
def test_shots_are_clipped_to_the_smallest_class_less_one(counts, shots, expected):
    validation = TrainingValidation(None, None, crops(counts), shots=shots)
    assert validation.holdout is not None
    assert (validation.shots, validation.queries) == expected
    assert validation.ways == len(counts)


@pytest.mark.parametrize(
    "holdout",
    [
        None,
        crops({0: 1}).subset([]),  # no images
        crops({4: 8}),  # one class: no episode
        crops({0: 1, 1: 1, 2: 1}),  # one image a class: nothing left to query
        crops({0: 6, 1: 1}),  # the smallest class decides
    ],
    ids=["none", "empty", "one-class", "one-image-each", "one-class-too-small"],
)
def test_held_out_classes_that_cannot_make_an_episode_are_ignored(embedder, holdout):
    validation = TrainingValidation(None, None, holdout)
    assert validation.holdout is None
    assert not validation.enabled
    assert validation.describe() == "nothing held out"
    assert validation(embedder) == {} and validation.untrained(embedder) == {}


def test_known_classes_need_references_and_images(embedder, known):
    val, references = known
    assert TrainingValidation(val, None, None).val is None
    assert TrainingValidation(val.subset([]), references, None).val is None
    assert TrainingValidation(None, references, None).val is None
    assert not TrainingValidation(val, None, crops({0: 5})).enabled


def test_scores_are_repeatable(embedder, known):
    val, references = known
    holdout = crops({5: 5, 6: 5, 8: 5})

    def scores(seed: int) -> dict:
        return TrainingValidation(val, references, holdout, episodes=5, seed=seed)(embedder)

    first = scores(0)
    assert scores(0) == first
    validation = TrainingValidation(val, references, holdout, episodes=5)
    assert validation(embedder) == validation(embedder) == first
    assert validation.untrained(embedder) == validation.untrained(embedder)


def test_untrained_scores_the_backbone_features_without_the_head(embedder, known):
    val, references = known
    holdout = crops({5: 5, 6: 5, 8: 5})
    validation = TrainingValidation(val, references, holdout, episodes=5)
    # The same seed builds the same backbone, then a head of one output on it.
    headed = make_conv4(0, embedding_dim=1)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            headed.backbone.state_dict().values(),
            embedder.backbone.state_dict().values(),
            strict=True,
        )
    )
    own = validation(embedder)  # no head: the embedding is the normalised features
    assert validation.untrained(embedder) == pytest.approx(own)
    assert validation.untrained(headed) == pytest.approx(own)
    assert own["precision_at_1"] == 1.0  # these patterns are easy for the features
    # A head that sends every image to the same point tells nothing apart; untrained ignores it.
    with torch.no_grad():
        headed.head.weight.zero_()
        headed.head.bias.fill_(1.0)
    assert validation.untrained(headed) == pytest.approx(own)
    collapsed = validation(headed)
    assert collapsed["precision_at_1"] < own["precision_at_1"]
    assert collapsed != pytest.approx(own)


def test_backbone_features_are_reused_until_the_backbone_changes(known, monkeypatch):
    """Stage 1 trains a head on a frozen backbone: validation then runs only the head, and
    scores as a fresh pass would."""
    from kshot.fewshot import validation as module

    model = make_conv4(0, embedding_dim=8)
    val, references = known
    holdout = crops({3: 6, 4: 6})
    validation = TrainingValidation(val, references, holdout, episodes=2)
    passes = []
    real = module.backbone_features
    monkeypatch.setattr(
        module, "backbone_features", lambda e, pixels: passes.append(1) or real(e, pixels)
    )
    validation(model)
    assert len(passes) == 3  # val, references, held-out classes
    with torch.no_grad():
        model.head.weight.mul_(-1)  # the head trains: the features are kept
    kept = validation(model)
    assert len(passes) == 3
    assert kept == TrainingValidation(val, references, holdout, episodes=2)(model)
    with torch.no_grad():
        next(model.backbone.parameters()).add_(0.01)  # the backbone trains: computed again
    validation(model)
    assert len(passes) == 3 + 3 + 3
