import hashlib

import numpy as np
import pytest
import torch

from kshot.embedder.inference import embed_batch, embed_files
from kshot.errors import InputError


@pytest.fixture
def mixed_files(tmp_path, make_image):
    """Seven paths: good PNG/JPEG images with bad files (text, missing, empty) in between."""
    good = [make_image(tmp_path / f"good{i}.png", size=(40, 40), seed=i) for i in range(4)]
    good.append(make_image(tmp_path / "good4.jpg", size=(48, 48), seed=4, quality=95))
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    paths = [good[0], text, good[1], good[2], missing, good[3], empty, good[4]]
    return paths, [0, 2, 3, 5, 7], [1, 4, 6]


def reference_vectors(embedder, paths):
    """Each file embedded on its own, through the config's own loading path."""
    config = embedder.config.preprocess
    batch = torch.stack([config.load(p) for p in paths])
    return embed_batch(embedder, batch)


def test_good_and_bad_files_mixed(conv4_embedder, mixed_files):
    paths, good, bad = mixed_files
    result = embed_files(conv4_embedder, paths, batch_size=3)
    assert result.indices == good
    assert result.vectors.shape == (len(good), 64)
    assert result.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert [i for i, _ in result.errors] == bad
    for i, error in result.errors:
        assert isinstance(error, InputError)
        assert error.source == str(paths[i])
    expected = reference_vectors(conv4_embedder, [paths[i] for i in good])
    assert np.allclose(result.vectors, expected, atol=1e-5)
    assert result.sha256 == [None] * len(good)


def test_distinct_images_give_distinct_vectors(conv4_embedder, mixed_files):
    paths, good, _ = mixed_files
    vectors = embed_files(conv4_embedder, [paths[i] for i in good]).vectors
    similarity = vectors @ vectors.T
    off_diagonal = similarity[~np.eye(len(good), dtype=bool)]
    assert off_diagonal.max() < 0.9999


def test_digest(conv4_embedder, mixed_files):
    paths, good, _ = mixed_files
    result = embed_files(conv4_embedder, paths, digest=True)
    assert result.sha256 == [hashlib.sha256(paths[i].read_bytes()).hexdigest() for i in good]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 32])
def test_on_progress_counts_every_file(conv4_embedder, mixed_files, batch_size):
    paths, _, _ = mixed_files
    counts = []
    embed_files(conv4_embedder, paths, batch_size=batch_size, on_progress=counts.append)
    assert sum(counts) == len(paths)
    assert len(counts) == -(-len(paths) // batch_size)
    assert all(0 < c <= batch_size for c in counts)


def test_small_batches_give_the_same_vectors(conv4_embedder, mixed_files):
    paths, _, _ = mixed_files
    big = embed_files(conv4_embedder, paths, batch_size=64)
    small = embed_files(conv4_embedder, paths, batch_size=2)
    assert small.indices == big.indices
    assert [i for i, _ in small.errors] == [i for i, _ in big.errors]
    assert np.allclose(small.vectors, big.vectors, atol=1e-5)


def test_a_batch_of_only_bad_files(conv4_embedder, mixed_files):
    paths, good, bad = mixed_files
    result = embed_files(conv4_embedder, [paths[i] for i in bad] + [paths[good[0]]], batch_size=3)
    assert result.indices == [3]
    assert [i for i, _ in result.errors] == [0, 1, 2]
    assert result.vectors.shape == (1, 64)


def test_no_files(conv4_embedder):
    result = embed_files(conv4_embedder, [])
    assert result.vectors.shape == (0, 64)
    assert result.indices == [] and result.errors == []


def test_puts_the_embedder_in_eval_mode(conv4_embedder, conv4_factory, mixed_files):
    paths, good, _ = mixed_files
    conv4_embedder.train()
    result = embed_files(conv4_embedder, [paths[good[0]]])
    assert not conv4_embedder.training
    # the same weights, freshly built in eval mode: batch norm on running statistics
    expected = reference_vectors(conv4_factory(0), [paths[good[0]]])
    assert np.allclose(result.vectors, expected, atol=1e-5)


def test_one_worker_process_gives_the_same_result_on_good_files(conv4_embedder, mixed_files):
    paths, good, _ = mixed_files
    good_paths = [paths[i] for i in good]
    inline = embed_files(conv4_embedder, good_paths, batch_size=2, digest=True)
    worker = embed_files(conv4_embedder, good_paths, batch_size=2, workers=1, digest=True)
    assert worker.indices == inline.indices
    assert worker.sha256 == inline.sha256
    assert np.allclose(worker.vectors, inline.vectors, atol=1e-6)


def test_one_worker_process_reports_bad_files(conv4_embedder, mixed_files):
    paths, good, bad = mixed_files
    inline = embed_files(conv4_embedder, paths, batch_size=3)
    worker = embed_files(conv4_embedder, paths, batch_size=3, workers=1)
    assert worker.indices == inline.indices == good
    assert [i for i, _ in worker.errors] == bad
    assert [str(e) for _, e in worker.errors] == [str(e) for _, e in inline.errors]
    assert np.allclose(worker.vectors, inline.vectors, atol=1e-6)
