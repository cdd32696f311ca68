"""``--backbone a+b`` through the command line: init, enroll, query, embed and train."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kshot.embedder.checkpoint import load_checkpoint
from kshot.embedder.mobilenet_v2_weights import packaged_file


def test_init_enroll_query_on_an_ensemble(kshot, images, tmp_path):
    torch.manual_seed(0)
    library = tmp_path / "lib"
    output = kshot("init", library, "--backbone", "conv4+conv4", "--no-pretrained").output
    assert "128-d embeddings" in output
    embedder, info = load_checkpoint(library / "model.kshot")
    assert embedder.config.backbone == "conv4+conv4"
    assert info["source"] == "conv4+conv4, random weights, no head"
    manifest = json.loads((library / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 128
    for name, paths in images.items():
        kshot("enroll", library, "--label", name, *paths[:3])
    rows = kshot.json("query", library, *(paths[3] for paths in images.values()))
    assert [row["label"] for row in rows] == list(images)

    out = tmp_path / "vectors"
    kshot("embed", tmp_path / "images", "--out", out, "--model", library / "model.kshot")
    vectors = np.load(out / "embeddings.npy")
    assert vectors.shape == (12, 128)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_ensemble_errors_are_clear(kshot, tmp_path):
    output = kshot("init", tmp_path / "a", "--backbone", "conv4+vgg99", code=1).output
    assert "unknown backbone 'vgg99'" in output and "efficientnet_lite0" in output
    output = kshot("embed", tmp_path, "--out", tmp_path / "o", "--backbone", "conv4+conv4", code=1)
    assert "no pretrained weights" in output.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "o").exists()


def test_train_an_ensemble(kshot, images, tmp_path):
    model = tmp_path / "model.kshot"
    common = ("train", tmp_path / "images", "--out", model, "--backbone", "conv4+conv4")
    refused = kshot(*common, "--normalization", "imagenet", code=1).output
    assert "ensemble" in refused and "--normalization" in refused
    assert not model.exists()
    recipe = ("--head-epochs", "0", "--epochs", "1", "--batch-size", "12")
    kshot(*common, *recipe, "--trainable-blocks", "1")
    embedder, info = load_checkpoint(model)
    assert embedder.config.backbone == "conv4+conv4" and embedder.embedding_dim == 128
    assert info["starting_weights"] == "random weights"


@pytest.mark.skipif(packaged_file() is None, reason="no offline MobileNetV2 weights installed")
def test_embed_with_the_pretrained_lite0_mobilenet_ensemble(kshot, images, tmp_path):
    out = tmp_path / "vectors"
    few = [images["bars"][0], images["blob"][0]]
    kshot("embed", *few, "--out", out, "--backbone", "efficientnet_lite0+mobilenet_v2")
    vectors = np.load(out / "embeddings.npy")
    assert vectors.shape == (2, 2560) and np.isfinite(vectors).all()
    # each member's half is a unit vector scaled by 1/sqrt(2)
    halves = np.linalg.norm(vectors.reshape(2, 2, 1280), axis=2)
    assert np.allclose(halves, 2**-0.5, atol=1e-5)
