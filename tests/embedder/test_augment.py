"""Training-time augmentation (augment.py): the config's checks, options laid over presets, and
the transform built from it, on uint8 ``(C, H, W)`` crops."""

import dataclasses

import pytest
import torch

from kshot.embedder.augment import (
    AUGMENT_PRESETS,
    AugmentConfig,
    augment_batch,
    augment_config,
    build_augment,
)
from kshot.errors import KshotError


def crops(n: int = 1, channels: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)


# --- the config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(AugmentConfig)])
def test_no_setting_may_be_negative(name):
    with pytest.raises(KshotError, match=f"{name} must not be negative"):
        AugmentConfig(**{name: -0.1})


@pytest.mark.parametrize("name", ["hflip", "vflip", "rotation_p", "hsv_p", "brightness_contrast_p"])
def test_probabilities_are_at_most_one(name):
    assert getattr(AugmentConfig(**{name: 1.0}), name) == 1.0
    with pytest.raises(KshotError, match=f"{name} is a probability"):
        AugmentConfig(**{name: 1.5})


def test_magnitudes_are_not_probabilities():
    config = AugmentConfig(rotation=180, saturation=1.5, brightness=2.0)
    assert config.rotation == 180 and config.saturation == 1.5


def test_hue_is_at_most_half_the_colour_wheel():
    assert AugmentConfig(hue=0.5).hue == 0.5
    with pytest.raises(KshotError, match="hue is at most 0.5"):
        AugmentConfig(hue=0.6)


def test_presets_none_photo_and_upright_exist():
    assert {"none", "photo", "upright"} <= set(AUGMENT_PRESETS)
    assert AUGMENT_PRESETS["none"] == AugmentConfig()
    assert not AUGMENT_PRESETS["none"].active
    assert AUGMENT_PRESETS["photo"].active and AUGMENT_PRESETS["upright"].active
    assert AUGMENT_PRESETS["upright"].vflip == 0  # an upright is kept


@pytest.mark.parametrize(
    "config, active",
    [
        (AugmentConfig(hflip=0.1), True),
        (AugmentConfig(vflip=0.1), True),
        (AugmentConfig(rotation=30), False),  # no probability
        (AugmentConfig(rotation_p=1.0), False),  # no angle
        (AugmentConfig(rotation=30, rotation_p=0.5), True),
        (AugmentConfig(hue=0.1, saturation=0.2, value=0.2), False),
        (AugmentConfig(hsv_p=1.0), False),
        (AugmentConfig(value=0.2, hsv_p=0.5), True),
        (AugmentConfig(brightness=0.2, contrast=0.2), False),
        (AugmentConfig(contrast=0.2, brightness_contrast_p=0.5), True),
    ],
)
def test_active_means_some_transform_can_change_an_image(config, active):
    assert config.active is active


def test_options_are_laid_over_the_config():
    config = AUGMENT_PRESETS["upright"].with_options(["hflip=0", "rotation-p=0.25", " rotation=30"])
    assert config.hflip == 0.0 and config.rotation_p == 0.25 and config.rotation == 30.0
    assert config.brightness == AUGMENT_PRESETS["upright"].brightness
    assert AugmentConfig().with_options([]) == AugmentConfig()


def test_an_unknown_option_lists_the_known_ones():
    with pytest.raises(KshotError, match="unknown augmentation option 'spin=3'") as caught:
        AugmentConfig().with_options(["spin=3"])
    for field in dataclasses.fields(AugmentConfig):
        assert field.name in str(caught.value)


def test_an_option_that_is_not_a_number_is_refused():
    with pytest.raises(KshotError, match="not a number"):
        AugmentConfig().with_options(["hflip=often"])
    with pytest.raises(KshotError, match="not a number"):
        AugmentConfig().with_options(["hflip"])


def test_options_are_checked_like_the_config():
    with pytest.raises(KshotError, match="probability"):
        AugmentConfig().with_options(["hflip=2"])


def test_augment_config_takes_a_preset_and_options():
    config = augment_config("photo", ["vflip=0"])
    assert config == dataclasses.replace(AUGMENT_PRESETS["photo"], vflip=0.0)
    assert augment_config("none") == AugmentConfig()
    with pytest.raises(KshotError, match="unknown augmentation preset 'wild'.*photo"):
        augment_config("wild")


# --- the transform ------------------------------------------------------------------------------


def test_a_certain_horizontal_flip_mirrors_the_image():
    augment = build_augment(AugmentConfig(hflip=1.0))
    for image in crops(3):
        assert torch.equal(augment(image), torch.flip(image, dims=[-1]))


def test_a_certain_vertical_flip_turns_the_image_upside_down():
    augment = build_augment(AugmentConfig(vflip=1.0))
    image = crops()[0]
    assert torch.equal(augment(image), torch.flip(image, dims=[-2]))


def test_with_every_probability_zero_images_pass_unchanged():
    config = AugmentConfig(rotation=90, hue=0.2, saturation=0.5, value=0.5, brightness=0.5)
    config = dataclasses.replace(config, contrast=0.5)
    assert not config.active
    augment = build_augment(config)
    torch.manual_seed(0)
    for image in crops(5):
        assert torch.equal(augment(image), image)


@pytest.mark.parametrize("preset, channels", [("photo", 3), ("upright", 1), ("upright", 3)])
def test_presets_give_uint8_images_of_the_same_shape_and_change_some(preset, channels):
    augment = build_augment(AUGMENT_PRESETS[preset])
    torch.manual_seed(0)
    images = crops(8, channels=channels, side=24)
    outputs = [augment(image) for image in images]
    for image, out in zip(images, outputs, strict=True):
        assert out.dtype == torch.uint8 and out.shape == image.shape
    assert sum(not torch.equal(i, o) for i, o in zip(images, outputs, strict=True)) >= 4


def test_augment_batch_draws_for_each_image():
    images = crops(1, side=8).expand(64, 3, 8, 8).clone()  # the same image 64 times
    torch.manual_seed(0)
    out = augment_batch(build_augment(AugmentConfig(hflip=0.5)), images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    flipped = torch.flip(images[0], dims=[-1])
    kinds = [torch.equal(o, images[0]) for o in out]
    assert all(k or torch.equal(o, flipped) for k, o in zip(kinds, out, strict=True))
    assert 10 < sum(kinds) < 54  # both outcomes, about half each


def test_augmentation_follows_the_torch_seed():
    augment = build_augment(AUGMENT_PRESETS["photo"])
    images = crops(6)
    torch.manual_seed(5)
    first = augment_batch(augment, images)
    torch.manual_seed(5)
    assert torch.equal(augment_batch(augment, images), first)


def test_shift_and_zoom_keep_the_size_and_a_shift_repeats_the_edges():
    image = torch.full((1, 16, 16), 255, dtype=torch.uint8)
    image[:, 6:10, 6:10] = 0  # a dark stroke on white, 6 pixels from every edge
    torch.manual_seed(0)
    shift = build_augment(AugmentConfig(shift=0.25, crop_p=1.0), side=16)  # up to 4 pixels
    shifted = [shift(image) for _ in range(20)]
    edges = [torch.cat([out[:, 0], out[:, -1], out[:, :, 0], out[:, :, -1]]) for out in shifted]
    assert all(bool((edge == 255).all()) for edge in edges)  # no black fill came in
    assert sum(not torch.equal(out, image) for out in shifted) >= 15
    both = build_augment(AugmentConfig(shift=0.25, zoom=0.3, crop_p=1.0), side=16)
    outputs = [both(image) for _ in range(20)]
    assert all(out.shape == image.shape and out.dtype == torch.uint8 for out in outputs)
    with pytest.raises(ValueError, match="side"):
        build_augment(AugmentConfig(shift=0.1, crop_p=1.0))
    with pytest.raises(KshotError, match="shift"):
        AugmentConfig(shift=0.5)
