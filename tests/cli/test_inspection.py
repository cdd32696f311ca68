"""``kshot evaluate``, ``projector``, ``plot`` and ``outliers`` end to end."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.cli.conftest import make_image


@pytest.fixture
def model(library):
    return library / "model.kshot"


@pytest.fixture
def data(tmp_path, images):
    return tmp_path / "images"


def test_evaluate_split_writes_json_markdown_and_confusion_png(kshot, data, model, tmp_path):
    out = tmp_path / "report"
    result = kshot("evaluate", data, "--model", model, "--shots", "2", "--out", out)
    report = json.loads((out / "model.json").read_text())
    assert report["queries"] == 6 and report["classes"] == 3
    assert f"{report['accuracy']:.1%}" in result.stdout
    assert (out / "model.md").read_text().startswith("# Evaluation of model")
    with Image.open(out / "model-confusion.png") as png:
        assert png.format == "PNG"


def test_evaluate_against_a_library(kshot, enrolled, data, tmp_path):
    out = tmp_path / "report"
    kshot("evaluate", enrolled, data, "--out", out)
    report = json.loads((out / "lib.json").read_text())
    assert report["queries"] == 12 and report["support_images"] == 9
    # the enrolled images themselves are among the queries: each finds its own class
    assert report["accuracy"] >= 0.75


def test_evaluate_a_library_on_classes_it_lacks_reports_them_as_unknown(
    kshot, enrolled, data, tmp_path
):
    make_image(data / "stripes" / "0.png", "bars", 50)
    make_image(data / "stripes" / "1.png", "bars", 51)
    out = tmp_path / "report"
    kshot("evaluate", enrolled, data, "--out", out)
    report = json.loads((out / "lib.json").read_text())
    assert report["held_out_classes"] == ["stripes"] and report["queries"] == 12
    assert "balanced" in report["open_set"]


def test_evaluate_compares_models(kshot, data, model, tmp_path):
    import shutil

    other = shutil.copy(model, tmp_path / "second.kshot")
    out = tmp_path / "report"
    result = kshot(
        "evaluate", data, "--model", model, "--model", other, "--shots", "2", "--out", out
    )
    rows = json.loads((out / "comparison.json").read_text())
    assert list(rows) == ["model", "second"]
    assert rows["model"]["accuracy"] == rows["second"]["accuracy"]  # the same weights
    assert "| second |" in result.stdout and (out / "comparison.md").exists()
    speed = rows["second"]["speed"]
    assert (
        speed["precision"] == "fp32" and speed["parameters"] == rows["model"]["speed"]["parameters"]
    )
    assert speed["ms_per_image_batch1"] > 0 and speed["ms_per_image_batch32"] > 0
    assert "## Speed and size" in result.stdout


def test_evaluate_episodes_is_seeded(kshot, data, model, tmp_path):
    args = ("evaluate", data, "--model", model, "--ways", "3", "--shots", "1", "--queries", "2")
    kshot(*args, "--episodes", "5", "--seed", "7", "--out", tmp_path / "a")
    kshot(*args, "--episodes", "5", "--seed", "7", "--out", tmp_path / "b")
    a = json.loads((tmp_path / "a" / "model-episodes.json").read_text())
    b = json.loads((tmp_path / "b" / "model-episodes.json").read_text())
    assert a == b and a["prototype"]["episodes"] == 5 and "ci95" in a["knn"]


def test_evaluate_with_held_out_classes_reports_a_threshold(kshot, data, model, tmp_path):
    out = tmp_path / "report"
    kshot(
        "evaluate", data, "--model", model, "--shots", "2", "--unknown-classes", "1", "--out", out
    )
    report = json.loads((out / "model.json").read_text())
    assert len(report["held_out_classes"]) == 1 and report["classes"] == 2
    assert "Balanced threshold" in (out / "model.md").read_text()


def test_evaluate_needs_a_model(kshot, data, tmp_path):
    assert "--model" in kshot("evaluate", data, "--out", tmp_path / "r", code=1).output


def test_projector_export_reads_back(kshot, enrolled, tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_config_pb2

    logdir = tmp_path / "logs"
    kshot("projector", enrolled, "--logdir", logdir)
    (config_path,) = logdir.rglob("projector_config.pbtxt")
    config = text_format.Parse(config_path.read_text(), projector_config_pb2.ProjectorConfig())
    (embedding,) = config.embeddings
    metadata = (config_path.parent / embedding.metadata_path).read_text(encoding="utf-8")
    rows = metadata.splitlines()
    assert len(rows) == 10 and rows[1].split("\t")[0] == "bars"  # header + 9, catalogue order
    assert embedding.sprite.single_image_dim == [48, 48]


def test_plot_writes_pca_and_tsne(kshot, enrolled, tmp_path):
    kshot("plot", enrolled, "--out", tmp_path / "plots")
    for name in ("pca.png", "tsne.png"):
        with Image.open(tmp_path / "plots" / name) as png:
            assert png.format == "PNG"


def test_outliers_finds_a_mislabelled_image(kshot, library, images):
    for name, paths in images.items():
        kshot("enroll", library, "--label", name, *paths)
    wrong = make_image(images["blob"][0].parent / "odd.png", "bars", 99)
    kshot("enroll", library, "--label", "blob", wrong)
    rows = kshot.json("outliers", library, "--neighbours", "3")
    suspects = [r for r in rows if r["kind"] == "disagreement"]
    assert [r["image"] for r in suspects if r["suggested"] == "bars"] == [str(wrong.resolve())]


def test_evaluate_compares_models_of_the_same_file_name(kshot, data, model, tmp_path):
    import shutil

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(model, tmp_path / folder / "model.kshot")
    out = tmp_path / "report"
    first, second = tmp_path / "a" / "model.kshot", tmp_path / "b" / "model.kshot"
    kshot("evaluate", data, "--model", first, "--model", second, "--shots", "2", "--out", out)
    rows = json.loads((out / "comparison.json").read_text())
    assert len(rows) == 2 and all(name.endswith(("a-model", "b-model")) for name in rows)
