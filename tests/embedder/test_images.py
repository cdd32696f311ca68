import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kshot.embedder import images
from kshot.embedder.images import ImageTooLarge, decode_image, list_images, read_image
from kshot.errors import InputError

EXIF_ORIENTATION = 0x0112


def pixels(path: Path, channels: int = 3, min_side: int = 10_000) -> np.ndarray:
    return np.asarray(read_image(path, min_side, channels).image).astype(int)


# --- modes ------------------------------------------------------------------------------------


def test_exif_orientation_6_is_rotated_upright(tmp_path):
    # Stored 60x40: top half red, bottom half blue. Orientation 6 means "rotate 90 degrees
    # clockwise to display": upright, it is 40x60 with the red half on the right.
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 60, 20))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)

    loaded = read_image(path, 1000, 3).image
    assert loaded.mode == "RGB"
    assert loaded.size == (40, 60)
    array = np.asarray(loaded).astype(int)
    assert np.abs(array[30, 35] - [255, 0, 0]).max() < 10  # right: red (was the top)
    assert np.abs(array[30, 5] - [0, 0, 255]).max() < 10  # left: blue (was the bottom)


def test_without_exif_orientation_nothing_is_rotated(tmp_path):
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 60, 20))
    path = tmp_path / "plain.jpg"
    stored.save(path, quality=95)
    loaded = read_image(path, 1000, 3).image
    assert loaded.size == (60, 40)
    assert np.abs(np.asarray(loaded).astype(int)[5, 30] - [255, 0, 0]).max() < 10


def test_corrupt_exif_is_an_input_error_or_ignored(tmp_path):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    exif[0x010F] = "Maker"  # Make, ASCII
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (9, 99, 199)).save(buffer, "JPEG", exif=exif)
    data = buffer.getvalue()
    # one flipped byte turns tag 0x010F (Make, ASCII) into 0x0156 (a SHORT tag) holding text
    entry = b"\x01\x0f\x00\x02" if b"MM\x00*" in data else b"\x0f\x01\x02\x00"
    assert data.count(entry) == 1
    flipped = b"\x01\x56\x00\x02" if entry.startswith(b"\x01") else b"\x56\x01\x02\x00"
    path = tmp_path / "corrupt_exif.jpg"
    path.write_bytes(data.replace(entry, flipped))
    assert Image.open(path).getexif()[0x0156] == "Maker"  # PIL itself reads the file
    try:
        loaded = read_image(path, 1000, 3)
    except InputError as error:
        assert str(path) in str(error)
    else:
        assert loaded.image.size in ((50, 40), (40, 50))


def test_grey_image_to_rgb_and_to_grey(make_image, tmp_path):
    path = make_image(tmp_path / "grey.png", color=77, mode="L")
    rgb = read_image(path, 1, 3).image
    assert rgb.mode == "RGB"
    assert (np.asarray(rgb) == 77).all()
    grey = read_image(path, 1, 1).image
    assert grey.mode == "L"
    assert (np.asarray(grey) == 77).all()


def test_palette_image_without_transparency(tmp_path):
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    path = tmp_path / "palette.png"
    image.save(path)
    assert Image.open(path).mode == "P"
    assert (pixels(path) == [10, 200, 30]).all()


def test_palette_image_with_transparency_goes_on_white(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    image.paste(1, (0, 0, 4, 8))  # left half: opaque green; right half: index 0, transparent
    path = tmp_path / "palette_t.png"
    image.save(path, transparency=0)
    reopened = Image.open(path)
    assert reopened.mode == "P" and "transparency" in reopened.info
    array = pixels(path)
    assert (array[:, :4] == [10, 200, 30]).all()
    assert (array[:, 4:] == 255).all()  # transparent black became white, not black


def test_rgba_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = [200, 0, 0, 255]  # opaque red
    rgba[:, 3:] = [0, 0, 0, 0]  # fully transparent black
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    array = pixels(path)
    assert (array[:, :3] == [200, 0, 0]).all()
    assert (array[:, 3:] == 255).all()


def test_rgba_half_transparent_is_blended_with_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[...] = [0, 0, 0, 128]
    path = tmp_path / "half.png"
    Image.fromarray(rgba, "RGBA").save(path)
    array = pixels(path)
    assert np.abs(array - 127).max() <= 1


def test_la_image(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[:2] = [50, 255]  # opaque dark grey
    la[2:] = [50, 0]  # transparent
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    grey = pixels(path, channels=1)
    assert (grey[:2] == 50).all()
    assert (grey[2:] == 255).all()


def test_16_bit_grey_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[65535, 32768], [0, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    grey = read_image(path, 1, 1).image
    assert grey.mode == "L"
    array = np.asarray(grey).astype(int)
    assert array[0, 0] == 255
    assert array[1, 1] == 255
    assert array[1, 0] == 0
    assert 127 <= array[0, 1] <= 128  # half scale, not clipped to 255
    rgb = pixels(path, channels=3)
    assert 127 <= rgb[0, 1, 0] <= 128 and rgb[0, 1, 0] == rgb[0, 1, 2]


def test_dark_16_bit_grey_png_uses_the_16_bit_scale(tmp_path):
    # 255/65535 of full scale is nearly black, whatever the other pixels hold.
    path = tmp_path / "dark16.png"
    Image.fromarray(np.array([[255, 10]], np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    assert np.asarray(read_image(path, 1, 1).image).max() <= 1


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    loaded = read_image(path, 1000, 3).image
    assert loaded.mode == "RGB"
    assert np.abs(np.asarray(loaded).astype(int)[8, 8] - [255, 0, 0]).max() < 10


def test_one_channel_output_from_rgb(tmp_path, make_image):
    path = make_image(tmp_path / "red.png", color=(255, 0, 0))
    grey = read_image(path, 1, 1).image
    assert grey.mode == "L"
    expected = round(255 * 299 / 1000)  # ITU-R 601-2 luma of pure red
    assert np.abs(np.asarray(grey).astype(int) - expected).max() <= 1


def test_bilevel_and_float_modes(tmp_path):
    bilevel = Image.new("1", (8, 8), 1)
    bilevel.paste(0, (0, 0, 4, 8))
    path = tmp_path / "bilevel.png"
    bilevel.save(path)
    array = pixels(path, channels=1)
    assert (array[:, :4] == 0).all() and (array[:, 4:] == 255).all()

    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    path = tmp_path / "float.tiff"
    floats.save(path)
    array = pixels(path, channels=1)
    assert array[0, 0] == 0 and array[0, 2] == 255 and 126 <= array[0, 1] <= 128


# --- errors -----------------------------------------------------------------------------------


def assert_input_error(path: Path, *words: str, min_side: int = 64) -> InputError:
    with pytest.raises(InputError) as caught:
        read_image(path, min_side, 3)
    error = caught.value
    assert str(path) in str(error)
    assert error.source == str(path)
    for word in words:
        assert word in error.reason
    return error


def test_missing_file(tmp_path):
    assert_input_error(tmp_path / "nope.jpg", "does not exist")


def test_directory(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    assert_input_error(tmp_path / "folder.jpg", "directory")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert_input_error(path, "empty")


def test_text_file_with_image_suffix(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 20)
    assert_input_error(path, "not an image")


def test_truncated_jpeg(tmp_path):
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 300, 3), np.uint8)).save(
        whole, quality=90
    )
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    read_image(whole, 64, 3)  # the whole file is fine
    assert_input_error(truncated, "cannot decode")


def test_decompression_bomb_over_our_limit(tmp_path, monkeypatch, make_image):
    path = make_image(tmp_path / "big.png", size=(100, 100), color=(1, 2, 3))
    read_image(path, 64, 3)
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100 - 1)
    assert_input_error(path, "decompression bomb", "100x100")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [13_000, 20_000])  # over our limit; over PIL's own error limit
def test_crafted_png_claiming_a_huge_size(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    assert_input_error(path, "decompression bomb")


# --- JPEG draft and digest ----------------------------------------------------------------------


def test_jpeg_is_decoded_at_reduced_size(tmp_path, make_image):
    path = make_image(tmp_path / "large.jpg", size=(2000, 1500), color=(10, 200, 30))
    small = read_image(path, 256, 3).image
    width, height = small.size
    assert width < 2000 and height < 1500
    assert width >= 256 and height >= 256
    assert width * 1500 == height * 2000  # aspect kept
    full = read_image(path, 2000, 3).image
    assert full.size == (2000, 1500)


def test_png_is_not_reduced(tmp_path, make_image):
    path = make_image(tmp_path / "large.png", size=(1200, 900), color=(10, 200, 30))
    assert read_image(path, 256, 3).image.size == (1200, 900)


def test_digest_is_sha256_of_file_bytes(image_folder):
    path = image_folder / "noise.jpeg"
    loaded = read_image(path, 64, 3, digest=True)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_image(path, 64, 3).sha256 is None
    other = read_image(image_folder / "red.png", 64, 3, digest=True)
    assert other.sha256 != loaded.sha256


# --- list_images --------------------------------------------------------------------------------


def test_list_images_picks_image_suffixes_sorted(image_folder):
    found = list_images(image_folder)
    assert [p.name for p in found] == sorted(["green.JPG", "grey.png", "noise.jpeg", "red.png"])
    assert all(p.parent == image_folder for p in found)


def test_list_images_every_suffix_any_case(tmp_path):
    names = ["a.BMP", "b.gif", "c.Tif", "d.TIFF", "e.webp", "f.PnG", "g.jpeg", "h.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    for name in ["i.txt", "j.jpg.bak", "k", "l.heic"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "m.png").mkdir()  # a directory with an image suffix is not an image
    assert [p.name for p in list_images(tmp_path)] == sorted(names)


# --- files that cannot be read, folders given for images, class folders -------------------------


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (PermissionError(13, "Permission denied"), ("cannot be read", "permission denied")),
        (OSError(5, "Input/output error"), ("cannot be read", "input/output error")),
    ],
)
def test_a_file_that_cannot_be_read_is_one_input_error(tmp_path, monkeypatch, error, words):
    path = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(path)
    real = Path.read_bytes

    def read_bytes(self):
        if self == path:
            raise error
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert_input_error(path, *words)


def test_images_in_expands_folders_and_keeps_files_as_given(tmp_path, image_folder):
    found, errors = images.images_in([str(image_folder), "./missing.png"])
    assert found[:-1] == [str(p) for p in list_images(image_folder)]
    assert found[-1] == "./missing.png"  # kept: reading it says it does not exist
    assert errors == []
    (tmp_path / "empty").mkdir()
    _, errors = images.images_in([str(tmp_path / "empty")])
    assert [e.source for e in errors] == [str(tmp_path / "empty")]
    assert "no image files" in errors[0].reason


def test_class_tree_one_and_two_levels(tmp_path):
    def png(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)

    png(tmp_path / "Apple" / "a.png")
    png(tmp_path / "Apple" / "notes" / "x.png")  # a folder beside a class's images
    png(tmp_path / "Tomato" / "Late blight" / "b.png")
    png(tmp_path / "Tomato" / "healthy" / "c.png")
    png(tmp_path / "Tomato" / "healthy" / "deeper" / "d.png")  # a third level
    (tmp_path / "Empty").mkdir()
    classes, errors = images.class_tree(tmp_path)
    assert [(c.name, [p.name for p in c.images]) for c in classes] == [
        ("Apple", ["a.png"]),
        ("Empty", []),
        ("Tomato/Late blight", ["b.png"]),
        ("Tomato/healthy", ["c.png"]),
    ]
    reasons = {Path(e.source).name: e.reason for e in errors}
    assert reasons.keys() == {"notes", "deeper"}
    assert "among the images of class 'Apple'" in reasons["notes"]
    assert "third folder level" in reasons["deeper"]


def test_file_sha256(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 1000)
    assert images.file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert images.file_sha256(tmp_path / "absent") is None


def test_decode_image_reads_bytes_in_memory_with_its_own_pixel_limit(make_image, tmp_path):
    data = make_image(tmp_path / "photo.png", size=(40, 30), color=(10, 20, 30)).read_bytes()
    loaded = decode_image(data, "upload 1", 16, 3, digest=True)
    assert loaded.image.size == (40, 30) and loaded.image.mode == "RGB"
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageTooLarge, match=r"upload 1: .*40x30 pixels is over the limit of 1,000"):
        decode_image(data, "upload 1", 16, 3, max_pixels=1000)
    with pytest.raises(InputError, match="upload 2: not an image"):
        decode_image(b"plain text", "upload 2", 16, 3)
