"""``kshot train`` from a folder of class folders to a model a library can use."""

from __future__ import annotations

import torch

from kshot.embedder.checkpoint import load_checkpoint


def _train_args(tmp_path, out) -> tuple:
    """``kshot train`` of a conv4 for one epoch on the fixture's images."""
    return (
        "train",
        tmp_path / "images",
        "--out",
        out,
        "--backbone",
        "conv4",
        "--epochs",
        "1",
        "--batch-size",
        "12",
    )


def test_train_writes_a_model_that_init_and_query_use(kshot, images, tmp_path):
    model = tmp_path / "model.kshot"
    args = ("train", tmp_path / "images", "--out", model, "--backbone", "conv4")
    result = kshot(*args, "--epochs", "2", "--batch-size", "12", "--embedding-dim", "16")
    assert "epoch 2/2" in result.output
    embedder, info = load_checkpoint(model)
    assert embedder.embedding_dim == 16 and info["classes"] == ["bars", "blob", "corner"]
    kshot("init", tmp_path / "lib", "--model", model)
    kshot("enroll", tmp_path / "lib", tmp_path / "images")
    (row,) = kshot.json("query", tmp_path / "lib", images["corner"][0], "--method", "knn")
    assert row["label"] == "corner"


def test_train_changes_the_weights_and_is_repeatable_with_a_seed(kshot, tmp_path, images):
    def train(name: str, seed: int):
        out = tmp_path / name
        kshot(*_train_args(tmp_path, out), "--seed", seed)
        return load_checkpoint(out)[0].state_dict()

    a, b, c = train("a", 0), train("b", 0), train("c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_train_refuses_a_folder_without_two_classes(kshot, tmp_path, images):
    output = kshot("train", tmp_path / "images" / "bars", "--out", tmp_path / "m", code=1).output
    assert "at least two sub-folders" in output


def test_the_help_lists_every_loss(kshot):
    from kshot.cli.train_command import LOSS_NAMES
    from kshot.embedder.losses import LOSSES

    assert list(LOSS_NAMES) == list(LOSSES)
    assert "quadruplet" in kshot("train", "--help").output


def test_margin_and_scale_reach_the_loss(kshot, tmp_path, images, monkeypatch):
    from kshot.embedder import training

    built = {}
    real = training.build_loss

    def spy(name, classes, dim, **overrides):
        built.update(name=name, **overrides)
        return real(name, classes, dim, **overrides)

    monkeypatch.setattr(training, "build_loss", spy)
    kshot(
        *_train_args(tmp_path, tmp_path / "m"),
        "--loss",
        "cosface",
        "--margin",
        "0.3",
        "--scale",
        "16",
    )
    assert built == {"name": "cosface", "margin": 0.3, "scale": 16.0}
    output = kshot(
        "train",
        tmp_path / "images",
        "--out",
        tmp_path / "n",
        "--loss",
        "focal",
        "--margin",
        "0.3",
        "--backbone",
        "conv4",
        code=1,
    ).output
    assert "cannot take ['margin']" in output
