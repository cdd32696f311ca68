import numpy as np
import pytest
import torch
from PIL import Image

from kshot.embedder.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    dataset_mean_std,
)
from kshot.errors import InputError


def test_defaults_are_imagenet_rgb():
    config = PreprocessConfig(224, 256)
    assert config.mean == IMAGENET_MEAN and config.std == IMAGENET_STD
    assert config.channels == 3


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (
            dict(input_size=28, resize_size=28, mean=(0.5, 0.5), std=(0.5, 0.5), channels=2),
            "1 or 3",
        ),
        (dict(input_size=28, resize_size=28, mean=(0.5,), std=(0.5,)), "per channel"),
        (
            dict(input_size=28, resize_size=28, mean=(0.5,) * 3, std=(0.5,), channels=3),
            "per channel",
        ),
        (
            dict(input_size=28, resize_size=28, mean=(0.5, 0.5), std=(0.5,), channels=1),
            "per channel",
        ),
        (dict(input_size=224, resize_size=200), "at least input_size"),
    ],
)
def test_invalid_configs_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        PreprocessConfig(**kwargs)


def test_to_dict_from_dict_round_trip():
    config = PreprocessConfig(84, 96, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 3, "bicubic")
    data = config.to_dict()
    assert data["input_size"] == 84 and data["interpolation"] == "bicubic"
    # as JSON would give it back: lists instead of tuples
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    again = PreprocessConfig.from_dict(data)
    assert again == config
    assert isinstance(again.mean, tuple) and isinstance(again.std, tuple)
    assert hash(again) == hash(config)


def test_with_normalization_keeps_geometry():
    config = PreprocessConfig(28, 32, (0.5,), (0.5,), channels=1, interpolation="nearest")
    other = config.with_normalization([0.25], np.array([0.125]))
    assert other.mean == (0.25,) and other.std == (0.125,)
    assert (other.input_size, other.resize_size, other.channels, other.interpolation) == (
        28,
        32,
        1,
        "nearest",
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_transform_shape_dtype_and_normalisation(channels):
    mean = (0.5,) if channels == 1 else (0.2, 0.4, 0.6)
    std = (0.25,) if channels == 1 else (0.1, 0.2, 0.3)
    config = PreprocessConfig(16, 20, mean, std, channels=channels)
    value = 100
    mode = "L" if channels == 1 else "RGB"
    image = Image.new(mode, (50, 30), value if channels == 1 else (value,) * 3)
    tensor = config.prepare(image)
    assert tensor.shape == (channels, 16, 16)
    assert tensor.dtype == torch.float32
    for c in range(channels):
        expected = (value / 255 - mean[c]) / std[c]
        assert torch.allclose(tensor[c], torch.full((16, 16), expected), atol=1e-5)


def test_transform_resizes_shorter_side_then_crops_the_centre():
    # 40x20: left quarter black, rest white. Resize shorter side 20 -> 10 gives 20x10, the centre
    # 10x10 crop keeps columns 5..14 of 20, i.e. only the white part.
    image = Image.new("L", (40, 20), 255)
    image.paste(0, (0, 0, 10, 20))
    config = PreprocessConfig(10, 10, (0.0,), (1.0,), channels=1, interpolation="nearest")
    geometry = config.pixels(image)
    assert geometry.dtype == torch.uint8 and geometry.shape == (1, 10, 10)
    assert (geometry == 255).all()
    full = PreprocessConfig(10, 20, (0.0,), (1.0,), channels=1, interpolation="nearest")
    assert (full.pixels(image) == 255).all()
    wide = PreprocessConfig(20, 20, (0.0,), (1.0,), channels=1, interpolation="nearest")
    cropped = wide.pixels(image)  # 20x20 centre of 40x20: columns 10..29, all white
    assert (cropped == 255).all()


def test_load_reads_a_file(tmp_path, make_image):
    path = make_image(tmp_path / "grey.png", size=(64, 48), color=(60, 60, 60))
    config = PreprocessConfig(28, 32, (0.5,), (0.5,), channels=1)
    tensor = config.load(path)
    assert tensor.shape == (1, 28, 28)
    assert torch.allclose(tensor, torch.full_like(tensor, (60 / 255 - 0.5) / 0.5), atol=1e-5)


def test_load_of_a_bad_file_raises_input_error(tmp_path):
    path = tmp_path / "bad.png"
    path.write_text("nope")
    with pytest.raises(InputError, match="bad.png"):
        PreprocessConfig(28, 32, (0.5,), (0.5,), channels=1).load(path)


def test_dataset_mean_std_of_constant_colours():
    pixels = torch.zeros((2, 3, 16, 16), dtype=torch.uint8)
    pixels[0] = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1)
    pixels[1] = torch.tensor([255, 51, 0], dtype=torch.uint8).view(3, 1, 1)
    mean, std = dataset_mean_std(pixels)
    # channels 0 and 2: half the pixels 0, half 1 -> mean 0.5, std 0.5; channel 1: 0.2 everywhere.
    assert mean == pytest.approx((0.5, 0.2, 0.5), abs=1e-9)
    assert std == pytest.approx((0.5, 0.0, 0.5), abs=1e-5)


def test_dataset_mean_std_grey_over_several_chunks():
    values = torch.tensor([51, 102, 153], dtype=torch.uint8).repeat(200)  # 600 images: 3 chunks
    pixels = values.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    mean, std = dataset_mean_std(pixels)
    assert mean == pytest.approx((0.4,), abs=1e-9)
    assert std == pytest.approx((np.std([0.2, 0.4, 0.6]),), abs=1e-9)


def test_dataset_mean_std_of_no_image():
    with pytest.raises(ValueError, match="no readable image"):
        dataset_mean_std(torch.zeros((0, 3, 16, 16), dtype=torch.uint8))
