"""bf16 embedding (precision.py): the CPU check, how close bf16 stays to fp32, ``auto``'s cached
measurement, and the check before a library mixes precisions."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from kshot.embedder import precision
from kshot.embedder.inference import embed_batch, embed_files
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.errors import KshotError

CPU = torch.device("cpu")


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: set())


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: {"avx512_bf16"})


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KSHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "precision.json"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert precision.cpu_bf16_flags(cpuinfo) == {"avx512_bf16"}
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2\n")
    assert precision.cpu_bf16_flags(cpuinfo) == set()
    assert precision.cpu_bf16_flags(tmp_path / "absent") == set()


def test_bf16_on_a_cpu_without_it_is_a_clear_error(no_bf16_cpu):
    with pytest.raises(KshotError, match="no native bfloat16") as caught:
        precision.check_precision("bf16", CPU)
    assert "avx512_bf16" in str(caught.value) and "--precision fp32" in str(caught.value)
    precision.check_precision("fp32", CPU)


def test_unknown_precision_is_refused():
    with pytest.raises(KshotError, match="unknown precision"):
        precision.check_precision("fp16x", CPU)


@pytest.mark.parametrize("backbone", ["conv4", "timm:test_vit.r160_in1k", "mobilenet_v2"])
def test_bf16_embeddings_of_a_random_model_stay_close_to_fp32(backbone):
    """Autocast on the CPU runs wherever torch does (emulated without native bf16), so this
    holds on any machine; the vectors stay float32 unit vectors."""
    torch.manual_seed(0)
    embedder = build_embedder(EmbedderConfig.for_backbone(backbone), pretrained=False)
    embedder = embedder.for_inference(CPU)
    config = embedder.config.preprocess
    side = min(config.input_size, 160)
    images = torch.randn(4, config.channels, side, side)
    fp32 = embed_batch(embedder, images)
    embedder.precision = "bf16"
    bf16 = embed_batch(embedder, images)
    assert bf16.dtype == np.float32
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1, atol=1e-5)
    mean, lowest = precision.mean_cosine(fp32, bf16)
    assert mean >= 0.999 and lowest >= 0.995
    assert not np.array_equal(fp32, bf16)  # bf16 did run


def test_auto_measures_once_then_reads_the_cache(conv4_embedder, bf16_cpu, cache, monkeypatch):
    calls = []

    def measured(embedder, images, repeats=2):
        calls.append(images.shape)
        return {"fp32_s": 3.0, "bf16_s": 1.0, "cosine": 0.9999, "lowest_cosine": 0.9998}

    monkeypatch.setattr(precision, "measure", measured)
    assert precision.resolve("auto", conv4_embedder, CPU) == "bf16"
    assert precision.resolve("auto", conv4_embedder, CPU) == "bf16"
    assert calls == [(4, 1, 28, 28)]
    stored = json.loads(cache.read_text())
    assert [key.split("|")[:3] for key in stored] == [["conv4", "28", "cpu"]]


@pytest.mark.parametrize(
    "found, expected",
    [
        ({"fp32_s": 1.1, "bf16_s": 1.0, "cosine": 0.9999}, "fp32"),  # too small a gain
        ({"fp32_s": 3.0, "bf16_s": 1.0, "cosine": 0.99}, "fp32"),  # embeddings drift
        ({"fp32_s": 3.0, "bf16_s": 1.0, "cosine": 0.9995}, "bf16"),
    ],
)
def test_auto_takes_bf16_only_when_faster_and_alike(
    conv4_embedder, bf16_cpu, cache, monkeypatch, found, expected
):
    monkeypatch.setattr(precision, "measure", lambda *args, **kwargs: found)
    assert precision.choose_auto(conv4_embedder, CPU) == expected


def test_auto_is_fp32_without_measuring_on_a_cpu_without_bf16(
    conv4_embedder, no_bf16_cpu, cache, monkeypatch
):
    monkeypatch.setattr(precision, "measure", lambda *args: pytest.fail("measured"))
    assert precision.resolve("auto", conv4_embedder, CPU) == "fp32"
    assert not cache.exists()


def test_real_measurement_reports_times_and_cosine(conv4_embedder):
    found = precision.measure(conv4_embedder, torch.randn(2, 1, 28, 28), repeats=1)
    assert found["fp32_s"] > 0 and found["bf16_s"] > 0
    assert 0.999 <= found["cosine"] <= 1.0001 and conv4_embedder.precision == "fp32"


def test_mixing_check_reports_the_cosine_of_these_photos(conv4_embedder, image_folder):
    photos = sorted(image_folder.glob("*.png"))
    said = precision.check_mixing(conv4_embedder, photos, "fp32", "bf16")
    assert re.search(r"mean cosine (0\.99|1\.00)\d* \(lowest", said)
    assert f"{len(photos)} of these photos" in said and "mix with this fp32 library" in said
    assert conv4_embedder.precision == "fp32"  # left as it was


def test_mixing_check_refuses_below_the_threshold(conv4_embedder, image_folder, monkeypatch):
    monkeypatch.setattr(precision, "MIN_MIXING_COSINE", 1.01)
    with pytest.raises(KshotError, match="not be comparable") as caught:
        precision.check_mixing(conv4_embedder, sorted(image_folder.glob("*.png")), "fp32", "bf16")
    assert "--precision fp32" in str(caught.value)


def test_embed_files_in_bf16_matches_fp32_closely(conv4_embedder, image_folder):
    photos = sorted(image_folder.glob("*.png"))
    fp32 = embed_files(conv4_embedder, photos).vectors
    conv4_embedder.precision = "bf16"
    bf16 = embed_files(conv4_embedder, photos).vectors
    assert precision.mean_cosine(fp32, bf16)[0] >= 0.999
