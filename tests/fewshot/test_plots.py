import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from kshot.fewshot import plots
from kshot.fewshot.plots import (
    confusion_png,
    confusion_size,
    embedding_plots,
    project,
    scatter_png,
    scatter_size,
)

NASTY = ["Mildiou — été トマト 🍅", "$x^2$ price $5", "_starts_with_underscore", "مرحبا नमस्ते"]
CLASSES_70 = NASTY + [f"class {i:02d}" for i in range(66)]


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # the whole file decodes
        return image.size


def two_clusters(per_class: int = 10, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    centre = np.zeros(dim, dtype=np.float32)
    centre[0] = 5.0
    vectors = np.concatenate(
        [
            centre + rng.normal(0, 0.3, (per_class, dim)),
            -centre + rng.normal(0, 0.3, (per_class, dim)),
        ]
    ).astype(np.float32)
    return vectors, ["left"] * per_class + ["right"] * per_class


def test_importing_plots_does_not_import_matplotlib_or_sklearn():
    code = (
        "import sys, kshot.fewshot.plots; "
        "print([m for m in ('matplotlib', 'sklearn') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_scatter_of_70_unicode_classes_is_a_png_of_the_promised_size(tmp_path):
    labels = [CLASSES_70[i % 70] for i in range(210)]
    points = np.random.default_rng(1).normal(size=(210, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # missing glyphs must not even warn
        path = scatter_png(points, labels, tmp_path / "sub" / "s.png", "70 classes — $ tomato 🍅")
    assert path == tmp_path / "sub" / "s.png"
    assert png_size(path) == scatter_size(labels)
    few = scatter_size(["a", "b", "c"])
    assert scatter_size(labels)[0] > few[0]  # the legend's columns widen the picture
    assert few == plots._pixels(few[0] / plots.DPI, few[1] / plots.DPI)  # whole quarter inches


def test_70_classes_get_70_distinct_styles_and_every_legend_entry():
    labels = CLASSES_70
    figure = plots._scatter_figure(np.zeros((70, 2)), labels, "t")
    legend = figure.legends[0]
    texts = [text.get_text() for text in legend.get_texts()]
    # All 70, "_..." included (matplotlib drops such labels when it collects them itself),
    # and "$" escaped so no label is parsed as mathtext.
    assert texts == [plots._shown(label) for label in sorted(labels)]
    assert "_starts_with_underscore" in texts and r"\$x^2\$ price \$5" in texts
    styles = {(tuple(h.get_color()), h.get_marker()) for h in legend.legend_handles}
    assert len(styles) == 70


def test_long_labels_are_cut_in_the_legend():
    shown = plots._shown("x" * 100)
    assert len(shown) == plots.MAX_SHOWN_CHARS and shown.endswith("…")
    assert plots._shown("two\nlines\there") == "two lines here"


def test_scatter_refuses_mismatched_points(tmp_path):
    with pytest.raises(ValueError):
        scatter_png(np.zeros((3, 3)), ["a"] * 3, tmp_path / "x.png", "t")
    with pytest.raises(ValueError):
        scatter_png(np.zeros((3, 2)), ["a"] * 2, tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projection_is_deterministic_and_keeps_clusters_apart(method):
    vectors, labels = two_clusters()
    first = project(vectors, method, seed=3)
    assert first.shape == (20, 2) and first.dtype == np.float64
    assert np.array_equal(first, project(vectors, method, seed=3))
    left, right = first[:10], first[10:]
    within = max(np.ptp(left, axis=0).max(), np.ptp(right, axis=0).max())
    between = np.linalg.norm(left.mean(axis=0) - right.mean(axis=0))
    assert between > within  # row order kept: each half of the rows is one cluster


def test_pca_separates_along_its_first_axis():
    vectors, _ = two_clusters()
    points = project(vectors, "pca")
    assert np.all(np.sign(points[:10, 0]) == -np.sign(points[10:, 0]))
    assert np.abs(points[:, 0]).min() > np.abs(points[:, 1]).max()


def test_projection_of_one_dimensional_vectors_pads_with_zeros():
    points = project(np.array([[1.0], [2.0], [4.0]], dtype=np.float32), "pca")
    assert points.shape == (3, 2) and np.all(points[:, 1] == 0) and np.ptp(points[:, 0]) > 0


def test_projection_refusals():
    with pytest.raises(ValueError, match="at least 3"):
        project(np.zeros((2, 4), np.float32), "pca")
    with pytest.raises(ValueError, match="unknown projection"):
        project(np.zeros((5, 4), np.float32), "umap")


def test_tsne_works_with_three_points():
    points = project(np.eye(3, 5, dtype=np.float32), "tsne")
    assert points.shape == (3, 2) and np.isfinite(points).all()


def test_embedding_plots_writes_both_pictures(tmp_path):
    vectors, labels = two_clusters(per_class=6)
    labels[0] = NASTY[0]
    written = embedding_plots(vectors, labels, tmp_path / "plots", seed=1)
    assert written == {
        "pca": str(tmp_path / "plots/pca.png"),
        "tsne": str(tmp_path / "plots/tsne.png"),
    }
    json.dumps(written)
    for path in written.values():
        assert png_size(path) == scatter_size(labels)


def test_embedding_plots_refuses_fewer_than_three(tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        embedding_plots(np.eye(2, 4, dtype=np.float32), ["a", "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_confusion_of_70_classes(tmp_path):
    matrix = np.random.default_rng(0).integers(0, 9, (70, 70))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = confusion_png(matrix, CLASSES_70, tmp_path / "c.png")
    assert png_size(path) == confusion_size(CLASSES_70)
    small = confusion_size(["a", "b", "c"])
    assert confusion_size(CLASSES_70)[0] > small[0] and confusion_size(CLASSES_70)[1] > small[1]
    display = plots._confusion_display(matrix, CLASSES_70)
    assert display.text_ is None  # no numbers in 4900 cells
    ticks = display.ax_.get_xticklabels()
    assert [t.get_text() for t in ticks] == [plots._shown(label) for label in CLASSES_70]
    assert ticks[0].get_rotation() == 90 and ticks[0].get_fontsize() == plots.TICK_FONT_SMALL


def test_small_confusion_shows_the_counts(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    path = confusion_png(matrix, ["a", "b", NASTY[0]], tmp_path / "c.png")
    assert png_size(path) == confusion_size(["a", "b", NASTY[0]])
    display = plots._confusion_display(matrix, ["a", "b", NASTY[0]])
    cells = [[int(text.get_text()) for text in row] for row in display.text_]
    assert cells == matrix.tolist()


def test_confusion_refuses_mismatched_labels(tmp_path):
    with pytest.raises(ValueError):
        confusion_png(np.zeros((3, 3), int), ["a", "b"], tmp_path / "c.png")
    with pytest.raises(ValueError):
        confusion_png(np.zeros((2, 3), int), ["a", "b"], tmp_path / "c.png")
