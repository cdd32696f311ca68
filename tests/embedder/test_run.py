"""A training run from a folder (run.py): what it reports; the command-line runs are in
tests/cli/test_training.py."""

import logging

import pytest

from kshot.embedder.run import _epoch_times, _warn_if_new_classes_got_worse, default_holdout_classes
from kshot.embedder.training import EpochStats


@pytest.mark.parametrize(
    ("before", "after", "warned"),
    [
        ({"fewshot_accuracy": 0.8}, {"fewshot_accuracy": 0.6}, True),
        ({"fewshot_accuracy": 0.6}, {"fewshot_accuracy": 0.6}, False),
        ({"fewshot_accuracy": 0.6}, {"fewshot_accuracy": 0.8}, False),
        ({}, {"fewshot_accuracy": 0.1}, False),
        ({"fewshot_accuracy": 0.9}, {"precision_at_1": 0.1}, False),
        ({"library_accuracy": 0.8}, {"library_accuracy": 0.6}, True),
        ({"library_accuracy": 0.34091}, {"library_accuracy": 0.34089}, False),  # both 34.1%
        ({"library_accuracy": 0.8, "fewshot_accuracy": 0.5}, {"library_accuracy": 0.6}, True),
    ],
)
def test_warn_if_new_classes_got_worse(monkeypatch, before, after, warned):
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("kshot")
    logger.addHandler(handler)
    try:
        _warn_if_new_classes_got_worse(before, after, ["ant", "bee"])
    finally:
        logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    if warned:
        (message,) = messages
        assert "training made new classes worse" in message
        assert "2 held-out classes (ant, bee)" in message
        assert "fell from 80.0%" in message and "to 60.0%" in message
    else:
        assert messages == []


def test_epoch_times_are_averaged_per_stage():
    history = [EpochStats("head", 1, 0.5, 2.0, 0.01), EpochStats("head", 2, 0.4, 4.0, 0.01)]
    history.append(EpochStats("finetune", 3, 0.3, 300.0, 3e-4))
    assert _epoch_times(history) == "mean epoch: head 3.0 s, finetune 300.0 s"
    assert _epoch_times([]) == "no epoch trained"


@pytest.mark.parametrize(("classes", "held"), [(4, 0), (9, 0), (10, 2), (24, 4), (38, 5)])
def test_default_holdout_classes(classes, held):
    assert default_holdout_classes(classes) == held


def test_no_backbone_means_the_default_embedder(monkeypatch):
    from kshot.embedder import run
    from kshot.embedder.recipe import TrainConfig

    trained = {True: ("a+b", None), False: ("c+d", None)}  # kshot train's, kshot init's
    monkeypatch.setattr(run, "default_embedder", lambda training=False: trained[training])
    assert TrainConfig().backbone is None
    assert run.resolve_backbone(TrainConfig()).backbone == "a+b"
    assert run.resolve_backbone(TrainConfig(backbone="conv4")).backbone == "conv4"


def test_the_default_embedder_s_fallback_is_said(monkeypatch, caplog):
    from kshot.embedder import run
    from kshot.embedder.recipe import TrainConfig

    monkeypatch.setattr(run, "default_embedder", lambda training: ("a", "b's weights are missing"))
    with caplog.at_level(logging.WARNING, logger="kshot"):
        assert run.resolve_backbone(TrainConfig()).backbone == "a"
    assert "b's weights are missing" in caplog.text
