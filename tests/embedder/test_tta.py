import numpy as np
import pytest
import torch
from PIL import Image

from kshot.embedder.inference import embed_batch, embed_files, embed_pixels, load_pixels
from kshot.embedder.preprocess import image_tensor
from kshot.embedder.tta import VIEWS, check_views
from kshot.errors import KshotError


@pytest.fixture
def files(tmp_path, make_image):
    """Four images of different sizes and shapes, and one file that is not an image."""
    paths = [make_image(tmp_path / f"p{i}.png", size=(40 + 8 * i, 40), seed=i) for i in range(3)]
    paths.append(make_image(tmp_path / "wide.jpg", size=(64, 40), quality=95))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    paths.insert(2, bad)
    return paths


def unit_mean(*views: np.ndarray) -> np.ndarray:
    mean = np.mean(views, axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


@pytest.mark.parametrize("views", [("hflip",), ("hflip", "vflip"), ("vflip", "hflip")])
def test_flip_views_average_the_unit_embeddings(conv4_embedder, files, views):
    config = conv4_embedder.config.preprocess
    pixels, kept, _ = load_pixels(config, files)
    dims = {"hflip": -1, "vflip": -2}
    singles = [embed_pixels(conv4_embedder, pixels)]
    singles += [embed_pixels(conv4_embedder, pixels.flip(dims[view])) for view in views]
    expected = unit_mean(*singles)
    result = embed_files(conv4_embedder, files, batch_size=2, tta=views)
    assert result.indices == kept == [0, 1, 3, 4]
    assert [i for i, _ in result.errors] == [2]
    assert np.allclose(result.vectors, expected, atol=1e-6)
    assert not np.allclose(result.vectors, singles[0], atol=1e-3)
    assert np.allclose(embed_pixels(conv4_embedder, pixels, 3, tta=views), expected, atol=1e-6)


def test_full_view_is_the_whole_image_resized(conv4_embedder, files):
    config = conv4_embedder.config.preprocess
    good = [files[i] for i in (0, 1, 3, 4)]
    size = (config.input_size, config.input_size)
    crops = torch.stack([config.load(path) for path in good])
    wholes = torch.stack(
        [
            config.normalize(image_tensor(config.read(path).image.resize(size, config.resampling)))
            for path in good
        ]
    )
    expected = unit_mean(embed_batch(conv4_embedder, crops), embed_batch(conv4_embedder, wholes))
    result = embed_files(conv4_embedder, good, tta=("full",))
    assert np.allclose(result.vectors, expected, atol=1e-6)


def test_a_mirror_symmetric_image_is_its_own_hflip_view(conv4_embedder, tmp_path):
    half = np.random.default_rng(0).integers(0, 256, (28, 14), dtype=np.uint8)
    path = tmp_path / "symmetric.png"
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(path)
    plain = embed_files(conv4_embedder, [path]).vectors
    assert np.allclose(
        embed_files(conv4_embedder, [path], tta=("hflip",)).vectors, plain, atol=1e-6
    )
    assert not np.allclose(embed_files(conv4_embedder, [path], tta=("vflip",)).vectors, plain)


def test_no_views_is_unchanged_bit_for_bit(conv4_embedder, files):
    config = conv4_embedder.config.preprocess
    good = [files[i] for i in (0, 1, 3, 4)]
    reference = embed_batch(conv4_embedder, torch.stack([config.load(path) for path in good]))
    assert np.array_equal(
        embed_files(conv4_embedder, good, batch_size=4, tta=()).vectors, reference
    )
    pixels, _, _ = load_pixels(config, good)
    assert np.array_equal(
        embed_pixels(conv4_embedder, pixels, tta=()), embed_pixels(conv4_embedder, pixels)
    )


def test_unknown_or_repeated_views_are_clear_errors(conv4_embedder, files):
    with pytest.raises(KshotError) as caught:
        embed_files(conv4_embedder, files, tta=("hflip", "rotate90"))
    assert "'rotate90'" in str(caught.value) and all(view in str(caught.value) for view in VIEWS)
    pixels = torch.zeros((1, 1, 28, 28), dtype=torch.uint8)
    with pytest.raises(KshotError, match="'full'"):
        embed_pixels(conv4_embedder, pixels, tta=("full",))
    with pytest.raises(KshotError, match="twice"):
        check_views(["hflip", "hflip"])
    assert check_views(["vflip", "full"]) == ("vflip", "full")
