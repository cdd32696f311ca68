"""``kshot train`` from a folder of class folders to a model a library can use."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from kshot.embedder.checkpoint import load_checkpoint
from tests.cli.conftest import make_image
from tests.conftest import pattern


def _train_args(tmp_path, out, data: Path | None = None) -> tuple:
    """``kshot train`` of a conv4 for one epoch on ``data`` (default: the fixture's images)."""
    return (
        "train",
        data or tmp_path / "images",
        "--out",
        out,
        "--backbone",
        "conv4",
        "--head-epochs",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "12",
    )


def test_train_writes_a_model_that_init_and_query_use(kshot, images, tmp_path):
    model = tmp_path / "model.kshot"
    args = (
        "train",
        tmp_path / "images",
        "--out",
        model,
        "--backbone",
        "conv4",
        "--head-epochs",
        "0",
    )
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


@pytest.fixture
def built_loss(monkeypatch) -> dict:
    """Filled with the name and options of the loss training builds."""
    from kshot.embedder import training

    built = {}
    real = training.build_loss

    def spy(name, classes, dim, **overrides):
        built.update(name=name, **overrides)
        return real(name, classes, dim, **overrides)

    monkeypatch.setattr(training, "build_loss", spy)
    return built


def test_the_help_lists_every_loss(kshot):
    from kshot.embedder.losses import LOSSES
    from kshot.embedder.recipe import LOSS_NAMES

    assert list(LOSS_NAMES) == list(LOSSES)
    assert "quadruplet" in kshot("train", "--help").output


def test_margin_and_scale_reach_the_loss(kshot, tmp_path, images, built_loss):
    built = built_loss
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
        "--head-epochs",
        "0",
        code=1,
    ).output
    assert "cannot take ['margin']" in output


# --- a bad data folder -----------------------------------------------------------------------


def test_a_bad_class_folder_is_reported_and_the_rest_trains(kshot, tmp_path, images):
    data = tmp_path / "images"
    (data / "empty").mkdir()
    make_image(data / "single" / "0.png", "blob", 50)
    broken = data / "bars" / "broken.png"
    broken.write_text("not a picture")
    model = tmp_path / "model.kshot"
    result = kshot(
        "train", data, "--out", model, "--backbone", "conv4", "--head-epochs", "0", "--epochs", "1"
    )
    output = result.output
    assert "skipping class 'empty'" in output and "holds no images" in output
    assert "skipping class 'single'" in output and "needs two per class" in output
    assert f"skipping {broken}" in output
    assert "training conv4 on" in output and "of 3 classes" in output
    _, info = load_checkpoint(model)
    assert info["classes"] == ["bars", "blob", "corner"]


def test_fewer_than_two_usable_classes_is_an_error(kshot, tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        make_image(data / "bars" / f"{i}.png", "bars", i)
    make_image(data / "single" / "0.png", "blob", 0)
    (data / "empty").mkdir()
    (data / "unreadable").mkdir()
    (data / "unreadable" / "a.png").write_text("text")
    (data / "unreadable" / "b.png").write_text("text")
    model = tmp_path / "model.kshot"
    output = kshot(
        "train", data, "--out", model, "--backbone", "conv4", "--head-epochs", "0", code=1
    ).output
    assert "skipping class 'single'" in output
    assert "skipping class 'unreadable': none of its images could be read" in output
    assert "kshot: error:" in output and "at least two sub-folders" in output
    assert "it has 1" in output
    assert not model.exists()


# --- --resume --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "stop_after"),
    [
        (("--epochs", "2", "--val-fraction", "0"), 1),  # no validation: ends with the last weights
        (("--epochs", "2"), 1),  # ends with the best epoch's weights
        (("--head-epochs", "1", "--epochs", "1"), 1),
        (("--epochs", "2"), 2),  # stopped before the model file was written
        (("--epochs", "2", "--lookahead"), 1),  # its slow weights are in the state
        (
            (
                "--epochs",
                "2",
                "--loss",
                "protonet",
                "--ways",
                "3",
                "--shots",
                "1",
                "--queries",
                "1",
            ),
            1,
        ),
    ],
    ids=[
        "mid-stage",
        "mid-stage-validated",
        "between-stages",
        "after-the-last-epoch",
        "lookahead",
        "protonet",
    ],
)
def test_resume_finishes_a_stopped_run_as_if_it_had_not_stopped(
    kshot, tmp_path, images, monkeypatch, options, stop_after
):
    from kshot.cli.training_observer import TrainingConsole
    from kshot.embedder.checkpoint import model_hash
    from kshot.embedder.run import state_path

    args = (
        "train",
        tmp_path / "images",
        "--backbone",
        "conv4",
        "--head-epochs",
        "0",
        "--batch-size",
        "12",
        *options,
    )
    args += ("--embedding-dim", "16")
    whole = tmp_path / "whole.kshot"
    kshot(*args, "--out", whole)
    assert not state_path(whole).exists()

    out = tmp_path / "resumed.kshot"
    real_save_state = TrainingConsole.save_state

    def save_then_stop(self, state):
        real_save_state(self, state)
        if state["history"][-1]["epoch"] == stop_after:
            raise KeyboardInterrupt  # Ctrl-C just after this epoch's state is written

    monkeypatch.setattr(TrainingConsole, "save_state", save_then_stop)
    stopped = kshot(*args, "--out", out, code=130).output  # 128 + SIGINT, as a shell has it
    monkeypatch.undo()
    assert f"epoch {stop_after}/2" in stopped and f"epoch {stop_after + 1}/2" not in stopped
    assert state_path(out).exists() and not out.exists()

    changed = kshot(*args, "--out", out, "--resume", "--lr", "0.05", code=1).output
    assert "cannot resume" in changed and "lr (0.01 then, 0.05 now)" in changed
    assert state_path(out).exists()

    resumed = kshot(*args, "--out", out, "--resume").output
    assert all(f"epoch {e}/2" not in resumed for e in range(1, stop_after + 1))
    assert all(f"epoch {e}/2" in resumed for e in range(stop_after + 1, 3))
    assert f"wrote {out}" in resumed
    assert not state_path(out).exists()
    (a, a_info), (b, b_info) = load_checkpoint(whole), load_checkpoint(out)
    assert model_hash(a) == model_hash(b)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert [h["epoch"] for h in b_info["history"]] == [1, 2]
    assert [h["loss"] for h in b_info["history"]] == [h["loss"] for h in a_info["history"]]
    assert b_info["best_epoch"] == a_info["best_epoch"]
    assert b_info["scores_after"] == a_info["scores_after"]


def test_resume_without_a_state_file_names_it(kshot, tmp_path, images):
    from kshot.embedder.run import state_path

    out = tmp_path / "model.kshot"
    output = kshot(*_train_args(tmp_path, out), "--resume", code=1).output
    assert "nothing to resume" in output and str(state_path(out)) in output
    assert not out.exists()


# --- TensorBoard, validation, held-out classes -----------------------------------------------


def test_logdir_gets_the_scalars_of_every_epoch(kshot, tmp_path, images):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "logs"
    out = tmp_path / "model.kshot"
    kshot(*_train_args(tmp_path, out), "--epochs", "2", "--logdir", logdir)
    assert list(logdir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "lr", "seconds_per_epoch", "val/precision_at_1"} <= tags
    for tag in ("loss/train", "lr", "val/precision_at_1"):
        assert [event.step for event in events.Scalars(tag)] == [1, 2]
    assert all(0 <= event.value <= 1 for event in events.Scalars("val/precision_at_1"))
    assert events.Scalars("lr")[0].value == pytest.approx(3e-4)  # --finetune-lr


def test_val_folder_replaces_the_held_out_images(kshot, tmp_path, images):
    val = tmp_path / "val"
    for name in ("bars", "blob"):
        for i in range(2):
            make_image(val / name / f"{i}.png", name, 100 + i)
    make_image(val / "stripes" / "0.png", "bars", 200)
    out = tmp_path / "model.kshot"
    output = kshot(*_train_args(tmp_path, out), "--val", val).output
    assert "validation: ignoring 'stripes', which is not a training class" in output
    assert "training conv4 on 12 images of 3 classes" in output  # nothing held out of DATA
    assert "validating on 4 held-out images of the training classes" in output
    _, info = load_checkpoint(out)
    assert "precision_at_1" in info["scores_after"]


def _six_classes(root: Path, per_class: int = 4, first: int = 0) -> Path:
    """Six classes of colour block patterns (32 px), a little noise on each image."""
    for c in range(6):
        for i in range(per_class):
            pixels = pattern(c, side=32, noise=8.0, noise_seed=100 * c + first + i)
            path = root / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


def _holdout_args(tmp_path: Path, out: Path) -> tuple:
    return _train_args(tmp_path, out, data=_six_classes(tmp_path / "six"))


def test_held_out_classes_are_kept_out_and_scored(kshot, tmp_path):
    out = tmp_path / "model.kshot"
    output = kshot(*_holdout_args(tmp_path, out), "--holdout-classes", "2").output
    assert "2 held-out classes (2-way 3-shot, 1 queries per class" in output
    _, info = load_checkpoint(out)
    held, trained = info["holdout_classes"], info["classes"]
    assert len(held) == 2 and len(trained) == 4
    assert not set(held) & set(trained)
    assert set(held) | set(trained) == {f"class{c}" for c in range(6)}
    assert "fewshot_accuracy" in info["scores_before"]
    assert "fewshot_accuracy" in info["scores_after"]
    assert 0 <= info["scores_after"]["fewshot_accuracy"] <= 1


def test_no_held_out_classes_with_holdout_zero(kshot, tmp_path):
    out = tmp_path / "model.kshot"
    output = kshot(*_holdout_args(tmp_path, out), "--holdout-classes", "0").output
    assert "held-out classes" not in output
    _, info = load_checkpoint(out)
    assert info["holdout_classes"] == [] and len(info["classes"]) == 6
    assert "fewshot_accuracy" not in info["scores_after"]


def test_a_warning_when_training_made_new_classes_worse(kshot, tmp_path, monkeypatch):
    from kshot.fewshot.validation import TrainingValidation

    # An untrained score no training can reach, so that the scores after are always lower.
    monkeypatch.setattr(TrainingValidation, "untrained", lambda self, e: {"fewshot_accuracy": 1.01})
    out = tmp_path / "model.kshot"
    output = kshot(*_holdout_args(tmp_path, out), "--holdout-classes", "2").output
    assert "training made new classes worse" in output
    _, info = load_checkpoint(out)
    assert "fell from 101.0%" in output
    assert ", ".join(info["holdout_classes"]) in output
    assert out.exists()  # a warning, not a failure


def test_a_val_folder_leaves_out_the_held_out_classes(kshot, tmp_path):
    out = tmp_path / "model.kshot"
    val = _six_classes(tmp_path / "val", per_class=2, first=50)
    args = (*_holdout_args(tmp_path, out), "--holdout-classes", "2", "--val", val)
    output = kshot(*args).output
    # 2 images of each of the 4 training classes; the 2 held-out classes' 4 are not theirs.
    assert "validating on 8 held-out images of the training classes" in output


# --- augmentation and loss options -----------------------------------------------------------


def test_augment_preset_and_options(kshot, tmp_path, images):
    out = tmp_path / "model.kshot"
    args = (*_train_args(tmp_path, out), "--augment", "photo")
    kshot(*args, "--augment-option", "rotation=90", "--augment-option", "hsv-p=0.25")
    _, info = load_checkpoint(out)
    augment = info["train"]["augment"]
    assert augment["rotation"] == 90.0 and augment["hsv_p"] == 0.25
    assert augment["hflip"] == 0.5  # the preset's, left as it was


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("nope=1", "unknown augmentation option 'nope=1'; known: brightness, "),
        ("rotation=a", "'a' is not a number"),
        ("hflip=2", "augmentation hflip is a probability"),
    ],
)
def test_a_bad_augment_option_is_an_error(kshot, tmp_path, images, option, message):
    out = tmp_path / "model.kshot"
    output = kshot(*_train_args(tmp_path, out), "--augment-option", option, code=1).output
    assert "kshot: error:" in output and message in output
    if option == "nope=1":
        assert "rotation" in output and "hflip" in output
    assert not out.exists()


def test_loss_options_reach_the_loss(kshot, tmp_path, images, built_loss):
    built = built_loss
    out = tmp_path / "model.kshot"
    options = ("--loss-option", "neg_margin=0.8", "--loss-option", "pos-margin=0.1")
    kshot(*_train_args(tmp_path, out), "--loss", "contrastive", *options)
    assert built == {"name": "contrastive", "neg_margin": 0.8, "pos_margin": 0.1}
    assert load_checkpoint(out)[1]["train"]["loss_options"] == {
        "neg_margin": 0.8,
        "pos_margin": 0.1,
    }
    output = kshot(*_train_args(tmp_path, out), "--loss-option", "neg_margin", code=1).output
    assert "write NAME=NUMBER" in output


# --- --help ----------------------------------------------------------------------------------


def test_help_answers_without_importing_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from kshot.cli.app import app\n"
        "for args in (['--help'], ['train', '--help']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert '--holdout-classes' in result.output, result.output\n"
        "imported = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
        "assert not imported, imported[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_default_recipe_is_two_stages_of_protonet(kshot, tmp_path, images):
    """The defaults; the fixture's 3 classes of 3 training images make smaller episodes."""
    out = tmp_path / "model.kshot"
    output = kshot("train", tmp_path / "images", "--out", out, "--backbone", "conv4").output
    assert "epoch 30/33 (head)" in output and "epoch 33/33 (finetune)" in output
    assert "episodes of 3 ways, 1 shots and 2 queries, smaller than the default" in output
    _, info = load_checkpoint(out)
    keys = ("loss", "head_epochs", "epochs", "lr", "finetune_lr", "ways")
    assert {k: info["train"][k] for k in keys} == {
        "loss": "protonet",
        "head_epochs": 30,
        "epochs": 3,
        "lr": 0.01,
        "finetune_lr": 3e-4,
        "ways": None,  # the default: 8, or as many classes as have enough images
    }
    assert info["train"]["shots"] is None and info["train"]["queries"] is None
    assert info["train"]["schedule"] == "cosine"


def test_a_residual_head_keeps_the_feature_size(kshot, tmp_path, images):
    out = tmp_path / "model.kshot"
    args = (*_train_args(tmp_path, out), "--residual-head")
    output = kshot(*args, "--embedding-dim", "16", code=1).output
    assert "residual head keeps the backbone's 64 features" in output and not out.exists()
    kshot(*args, "--embedding-dim", "64")
    embedder, _ = load_checkpoint(out)
    assert embedder.config.residual and embedder.embedding_dim == 64


def test_dataset_normalization_is_measured_on_the_training_images(kshot, tmp_path, images):
    from kshot.embedder.backbones import get_backbone
    from kshot.embedder.preprocess import dataset_mean_std
    from kshot.embedder.training_folder import read_training_folder

    out = tmp_path / "model.kshot"
    kshot(*_train_args(tmp_path, out), "--normalization", "dataset")
    embedder, _ = load_checkpoint(out)
    _, decoded = read_training_folder(
        tmp_path / "images", get_backbone("conv4").default_preprocess()
    )
    mean, std = dataset_mean_std(decoded.pixels)
    assert embedder.config.preprocess.mean == mean and embedder.config.preprocess.std == std
    assert mean != get_backbone("conv4").default_preprocess().mean


# --- one source of defaults; what the run reports ----------------------------------------------


def test_every_option_defaults_to_the_train_config(kshot, tmp_path, images, monkeypatch):
    from kshot.embedder import run
    from kshot.embedder.recipe import TrainConfig

    given = {}

    def spy(data, out, config, **kwargs):
        given["config"] = config

    monkeypatch.setattr(run, "train_from_folder", spy)
    args = ("train", tmp_path / "images", "--out", tmp_path / "m")
    kshot(*args)
    assert given["config"] == TrainConfig()
    kshot(*args, "--loss", "protonet", "--ways", "3")
    assert given["config"] == TrainConfig(loss="protonet", ways=3)


def test_each_config_field_is_an_option():
    import dataclasses

    import typer.main

    from kshot.cli.app import app
    from kshot.embedder.recipe import TrainConfig

    command = typer.main.get_command(app).commands["train"]
    options = {param.name for param in command.params}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - options == {"loss_options"}  # --margin, --scale, --loss-option
    assert "augment_option" in options  # over --augment, the preset


@pytest.mark.parametrize("weight", ["1.5", "-1", "most"])
def test_an_interpolation_weight_outside_zero_to_one_is_an_error(kshot, tmp_path, images, weight):
    out = tmp_path / "model.kshot"
    output = kshot(*_train_args(tmp_path, out), "--interpolate", weight, code=1).output
    assert "kshot: error: --interpolate takes a weight in [0, 1]" in output
    assert "training conv4" not in output and not out.exists()


def test_interpolate_auto_is_chosen_on_the_held_out_classes(kshot, tmp_path):
    out = tmp_path / "model.kshot"
    args = (*_holdout_args(tmp_path, out), "--holdout-classes", "2", "--interpolate", "auto")
    output = kshot(*args).output
    assert "backbone interpolated toward its pretrained weights at alpha" in output
    _, info = load_checkpoint(out)
    interpolation = info["interpolation"]
    assert interpolation["chosen"] and interpolation["alpha"] in (0, 0.25, 0.5, 0.75, 1)
    assert set(interpolation["tried"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert info["scores_after"] == interpolation["metrics"]


def test_the_mean_epoch_time_is_given_per_stage(kshot, tmp_path, images):
    out = tmp_path / "model.kshot"
    args = (*_train_args(tmp_path, out), "--head-epochs", "2", "--embedding-dim", "8")
    output = kshot(*args).output
    assert re.search(r"mean epoch: head \d+\.\d s, finetune \d+\.\d s", output), output


def test_rotation_classes_are_counted(kshot, tmp_path, images):
    out = tmp_path / "model.kshot"
    output = kshot(*_train_args(tmp_path, out), "--rotation-classes").output
    assert "of 3 classes, 12 with their rotations" in output
