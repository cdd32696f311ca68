"""Which embedder a command builds (cli/embedders.py): a timm backbone by name, end to end, and
its refusals, which leave nothing behind; the precision it embeds in."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

VIT = "timm:test_vit.r160_in1k"


@pytest.fixture
def vit_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit.r160_in1k").state_dict(), path)
    return path


@pytest.fixture
def offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


def test_timm_backbone_with_a_weights_file_builds_a_library(kshot, tmp_path, images, vit_weights):
    library = tmp_path / "lib"
    kshot("init", library, "--backbone", VIT, "--weights", vit_weights)
    assert json.loads((library / "manifest.json").read_text())["embedding_dim"] == 64
    for name, paths in images.items():
        kshot("enroll", library, "--label", name, *paths[:3])
    answers = kshot.json("query", library, images["bars"][3])
    assert answers[0]["image"].endswith("3.png") and len(answers[0]["top_k"]) == 3


@pytest.mark.parametrize(
    "backbone, expected",
    [
        ("timm:convnext_smal.fb_in22k", "timm:convnext_small.fb_in22k"),
        ("timm:gemma4_vit_167m_enc", "not one pooled vector"),
        (VIT, "model.safetensors"),
    ],
    ids=["unknown-name", "no-pooled-features", "no-weights-offline"],
)
def test_refused_timm_backbone_writes_nothing(kshot, tmp_path, offline, backbone, expected):
    library = tmp_path / "lib"
    output = kshot("init", library, "--backbone", backbone, code=1).output
    assert expected in output and output.count("\n") == 1
    assert not library.exists()


def test_wrong_weights_file_writes_nothing(kshot, tmp_path, vit_weights):
    torch.manual_seed(0)
    wrong = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet.r160_in1k").state_dict(), wrong)
    library = tmp_path / "lib"
    output = kshot("init", library, "--backbone", VIT, "--weights", wrong, code=1).output
    assert str(wrong) in output and "another architecture" in output
    assert not library.exists()


@pytest.fixture
def bf16_cpu(monkeypatch):
    from kshot.embedder import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: {"amx_bf16"})


def _manifest(library):
    return json.loads((library / "manifest.json").read_text())


def _count(kshot, library) -> int:
    return sum(row["images"] for row in kshot.json("classes", library))


def test_library_built_in_bf16_records_it_and_checks_before_mixing(
    kshot, tmp_path, images, bf16_cpu
):
    library = tmp_path / "lib"
    torch.manual_seed(0)
    result = kshot("init", library, "--backbone", "conv4", "--no-pretrained", "--precision", "bf16")
    assert "bf16" in result.output and _manifest(library)["precision"] == "bf16"
    kshot("enroll", library, "--label", "bars", *images["bars"][:3])
    mixed = kshot("enroll", library, "--label", "blob", *images["blob"][:3], "--precision", "fp32")
    assert "mean cosine" in mixed.output and "mix with this bf16 library" in mixed.output
    assert _count(kshot, library) == 6 and _manifest(library)["precision"] == "bf16"


def test_mixing_refused_below_the_threshold_adds_nothing(
    kshot, library, images, bf16_cpu, monkeypatch
):
    from kshot.embedder import precision

    kshot("enroll", library, "--label", "bars", *images["bars"][:3])
    monkeypatch.setattr(precision, "MIN_MIXING_COSINE", 1.01)
    output = kshot(
        "enroll", library, "--label", "blob", *images["blob"][:3], "--precision", "bf16", code=1
    ).output
    assert "not be comparable" in output and "--precision fp32" in output
    assert _count(kshot, library) == 3
    query = kshot("query", library, images["bars"][3], "--precision", "bf16", code=1).output
    assert "not be comparable" in query


def test_bf16_on_a_cpu_without_it_writes_nothing(kshot, tmp_path, monkeypatch):
    from kshot.embedder import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: set())
    library = tmp_path / "lib"
    args = ("init", library, "--backbone", "conv4", "--no-pretrained", "--precision", "bf16")
    assert "no native bfloat16" in kshot(*args, code=1).output
    assert not library.exists()


def test_embed_in_bf16_stays_close_to_fp32(kshot, tmp_path, images, bf16_cpu):
    import numpy as np

    model = tmp_path / "lib" / "model.kshot"
    torch.manual_seed(0)
    kshot("init", tmp_path / "lib", "--backbone", "conv4", "--no-pretrained")
    vectors = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        kshot(
            "embed", tmp_path / "images", "--out", out, "--model", model, "--precision", precision
        )
        vectors[precision] = np.load(out / "embeddings.npy")
    cosines = np.sum(vectors["fp32"] * vectors["bf16"], axis=1)
    assert cosines.mean() >= 0.999 and not np.array_equal(vectors["fp32"], vectors["bf16"])


def test_training_in_bf16_on_a_cpu_without_it_is_refused(kshot, tmp_path, images, monkeypatch):
    from kshot.embedder import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: set())
    out = tmp_path / "m.kshot"
    args = (
        "train",
        tmp_path / "images",
        "--out",
        out,
        "--backbone",
        "conv4",
        "--precision",
        "bf16",
    )
    assert "no native bfloat16" in kshot(*args, "--device", "cpu", code=1).output
    assert not out.exists()
