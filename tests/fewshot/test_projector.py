import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from kshot.fewshot.projector import (
    MAX_SPRITE_SIDE,
    MISSING_GREY,
    PADDING_WHITE,
    escape_cell,
    export_projector,
    sprite_layout,
)

NASTY_LABELS = [
    "Mildiou — été トマト 🍅",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "crlf\r\nend",
    "sep\u2028and\x85next\x0bvt",
    "plain",
    " ",
]
NASTY_SOURCES = [
    "/photos/été/トマト 🍅.jpg",
    "/photos/a\tb.jpg",
    "/photos/new\nline.png",
    r"C:\photos\new\thing.jpg",
    "",
    "/x/\x00nul.png",
    "/plain.png",
    "/p.png",
]
ESCAPED_LABELS = [
    "Mildiou — été トマト 🍅",
    r"tab\there",
    r"new\nline",
    r"carriage\rreturn",
    r"crlf\r\nend",
    r"sep\u2028and\x85next\x0bvt",
    "plain",
    '" "',
]
ESCAPED_SOURCES = [
    "/photos/été/トマト 🍅.jpg",
    r"/photos/a\tb.jpg",
    r"/photos/new\nline.png",
    r"C:\photos\new\thing.jpg",  # backslashes stay as they are
    '""',
    r"/x/\x00nul.png",
    "/plain.png",
    "/p.png",
]


def read_config(logdir: Path) -> ProjectorConfig:
    config = ProjectorConfig()
    text_format.Parse((logdir / "projector_config.pbtxt").read_text(encoding="utf-8"), config)
    return config


def colour(i: int) -> tuple[int, int, int]:
    return (20 * i % 256, 255 - 20 * i % 256, 60 + 7 * i % 190)


def tile_centre(sprite: Image.Image, index: int, tile: int) -> tuple[int, ...]:
    columns = sprite.width // tile
    row, column = divmod(index, columns)
    return sprite.getpixel((column * tile + tile // 2, row * tile + tile // 2))


def export(tmp_path, n=8, dim=5, thumbnails=None, **kwargs):
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    labels = NASTY_LABELS[:n] if n <= len(NASTY_LABELS) else [f"l{i}" for i in range(n)]
    sources = NASTY_SOURCES[:n] if n <= len(NASTY_SOURCES) else [f"/s{i}" for i in range(n)]
    if thumbnails is None:
        thumbnails = [Image.new("RGB", (30, 30), colour(i)) for i in range(n)]
    logdir = export_projector(vectors, labels, sources, thumbnails, tmp_path / "tb", **kwargs)
    return logdir, vectors


def test_importing_projector_does_not_import_tensorboard():
    code = "import sys, kshot.fewshot.projector; print('tensorboard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_points_at_the_vectors_in_row_order(tmp_path):
    logdir, vectors = export(tmp_path)
    assert logdir == tmp_path / "tb" and (logdir / "projector_config.pbtxt").is_file()
    config = read_config(logdir)
    assert len(config.embeddings) == 1
    embedding = config.embeddings[0]
    assert list(embedding.tensor_shape) == [8, 5]
    lines = (logdir / embedding.tensor_path).read_text(encoding="ascii").split("\n")
    assert lines[-1] == "" and len(lines) == 9
    read = np.array([[float(v) for v in line.split("\t")] for line in lines[:-1]], np.float32)
    assert np.array_equal(read, vectors)  # every row, in order, bit for bit


def test_metadata_rows_stay_one_per_vector_whatever_the_text(tmp_path):
    logdir, _ = export(tmp_path)
    path = logdir / read_config(logdir).embeddings[0].metadata_path
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert len(lines) == 9 and len(text.splitlines()) == 9  # any line-splitting rule agrees
    assert lines[0] == "label\tsource"
    rows = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in rows] == ESCAPED_LABELS
    assert [row[1] for row in rows] == ESCAPED_SOURCES
    # The projector's reader skips blank lines; none of ours is blank.
    assert all(line.strip() for line in lines)


def test_escape_cell():
    assert escape_cell("a\tb\nc\rd") == r"a\tb\nc\rd"
    assert escape_cell("é トマト 🍅 \u200d") == "é トマト 🍅 \u200d"  # Unicode stays
    assert escape_cell("\u2029\x1e") == r"\u2029\x1e"
    assert escape_cell("") == '""' and escape_cell("\ufeff") == '"\ufeff"'


def test_sprite_holds_each_thumbnail_at_its_index(tmp_path):
    thumbnails = [Image.new("RGB", (30, 30), colour(i)) for i in range(8)]
    thumbnails[5] = None
    logdir, _ = export(tmp_path, thumbnails=thumbnails, thumbnail_size=20)
    sprite_info = read_config(logdir).embeddings[0].sprite
    assert list(sprite_info.single_image_dim) == [20, 20]
    with Image.open(logdir / sprite_info.image_path) as sprite:
        assert sprite.format == "PNG"
        sprite = sprite.convert("RGB")
    assert sprite.size == (3 * 20, 3 * 20)  # 8 images: 3 columns, 3 rows, row-major
    for i in range(8):
        expected = MISSING_GREY if i == 5 else colour(i)
        assert tile_centre(sprite, i, 20) == expected
        x, y = (i % 3) * 20, (i // 3) * 20
        assert sprite.getpixel((x, y)) == expected  # the whole tile: thumbnails are square


def test_thumbnails_of_any_shape_and_mode_fit_their_tile(tmp_path):
    wide = Image.new("RGB", (100, 20), (200, 10, 10))
    grey = Image.new("L", (7, 7), 50)  # smaller than a tile: enlarged
    clear = Image.new("RGBA", (16, 16), (0, 0, 255, 0))  # fully transparent
    logdir, _ = export(tmp_path, n=3, thumbnails=[wide, grey, clear], thumbnail_size=40)
    with Image.open(logdir / "sprite.png") as sprite:
        sprite = sprite.convert("RGB")
    assert sprite.size == (80, 80)
    assert tile_centre(sprite, 0, 40) == (200, 10, 10)
    assert sprite.getpixel((0, 0)) == PADDING_WHITE  # above the letterboxed wide image
    assert sprite.getpixel((40, 0)) == sprite.getpixel((79, 39)) == (50, 50, 50)
    assert tile_centre(sprite, 2, 40) == PADDING_WHITE


def test_many_images_shrink_tiles_to_keep_the_sprite_within_8192(tmp_path):
    n = 5000
    thumbnails = [None] * n
    thumbnails[0] = Image.new("RGB", (8, 8), (255, 0, 0))
    thumbnails[n - 1] = Image.new("RGB", (8, 8), (0, 0, 255))
    logdir, vectors = export(tmp_path, n=n, dim=2, thumbnails=thumbnails, thumbnail_size=128)
    info = read_config(logdir).embeddings[0]
    tile = info.sprite.single_image_dim[0]
    assert list(info.sprite.single_image_dim) == [tile, tile] and tile == 8192 // 71
    with Image.open(logdir / info.sprite.image_path) as sprite:
        assert max(sprite.size) <= MAX_SPRITE_SIDE
        assert (sprite.width // tile) * (sprite.height // tile) >= n
        sprite = sprite.convert("RGB")
    assert tile_centre(sprite, 0, tile) == (255, 0, 0)
    assert tile_centre(sprite, n - 1, tile) == (0, 0, 255)
    assert tile_centre(sprite, 1234, tile) == MISSING_GREY
    assert list(info.tensor_shape) == [n, 2]


def test_sprite_layout():
    assert sprite_layout(1, 48) == (1, 1, 48)
    assert sprite_layout(5, 48) == (3, 2, 48)
    assert sprite_layout(170 * 170, 48) == (170, 170, 48)  # 8160 pixels: fits
    assert sprite_layout(171 * 171, 48) == (171, 171, 47)
    with pytest.raises(ValueError):
        sprite_layout(8193 * 8193, 48)
    with pytest.raises(ValueError):
        sprite_layout(0, 48)


def test_exporting_again_replaces_rather_than_appends(tmp_path):
    export(tmp_path, n=8)
    logdir, vectors = export(tmp_path, n=3)
    config = read_config(logdir)
    assert len(config.embeddings) == 1 and list(config.embeddings[0].tensor_shape) == [3, 5]
    assert len((logdir / "metadata.tsv").read_text(encoding="utf-8").split("\n")) == 5


def test_mismatched_inputs_are_refused(tmp_path):
    vectors = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="one of each"):
        export_projector(vectors, ["a"] * 3, ["s"] * 2, [None] * 3, tmp_path / "tb")
    with pytest.raises(ValueError):
        export_projector(np.zeros((0, 4)), [], [], [], tmp_path / "tb")
    assert not (tmp_path / "tb" / "projector_config.pbtxt").exists()


class _NoRuns:
    """The one data-provider call the projector plugin makes: a logdir with no event files."""

    def list_runs(self, ctx, experiment_id):
        return []


def test_tensorboard_projector_plugin_serves_the_export(tmp_path):
    werkzeug_test = pytest.importorskip("werkzeug.test")
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin

    logdir, vectors = export(tmp_path)
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=_NoRuns())
    apps = ProjectorPlugin(context).get_plugin_apps()
    name = read_config(logdir).embeddings[0].tensor_name

    def get(route, **query):
        response = werkzeug_test.Client(apps[route]).get("/", query_string=query)
        assert response.status_code == 200, response.data
        return response.data

    assert get("/runs") == b'["."]'
    tensor = np.frombuffer(get("/tensor", run=".", name=name), dtype=np.float32)
    assert np.array_equal(tensor.reshape(vectors.shape), vectors)
    metadata = get("/metadata", run=".", name=name).decode("utf-8")
    assert len(metadata.split("\n")) == 10 and metadata.split("\n")[1].startswith("Mildiou")
    assert get("/sprite_image", run=".", name=name).startswith(b"\x89PNG")
