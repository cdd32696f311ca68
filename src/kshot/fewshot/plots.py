"""PNG pictures of a library's embeddings and errors: class scatters (PCA, t-SNE) and confusion.

People read these to see which classes overlap and which get confused, so they must stay legible
for the class counts kshot sees (tens of classes): 20 colours times several marker shapes tell
70 classes apart, legends sit outside the axes in columns of small type, and figures grow with
the number of classes. Every size is fixed in whole pixels before drawing (:func:`scatter_size`,
:func:`confusion_size`) and never trimmed afterwards, so callers and tests know what they get.

matplotlib (through its ``Figure`` class, drawn by Agg; pyplot's global state is never used),
scikit-learn's PCA, t-SNE and ``ConfusionMatrixDisplay`` are imported inside the functions: the
kshot CLI imports this module and must start fast.
"""

from __future__ import annotations

import contextlib
import math
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from kshot.atomic import atomic_path

DPI = 100
METHODS = ("pca", "tsne")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # x tab20's 20 colours: 160 distinct styles
LEGEND_FONT, LEGEND_ROWS = 7, 30  # points; most legend rows per column
TICK_FONT_SMALL, MANY_CLASSES = 6, 25  # above MANY_CLASSES: small ticks, no numbers in cells
MAX_SHOWN_CHARS = 32  # longer labels are cut (with an ellipsis) in legends and ticks
TSNE_INPUT_DIM = 50  # t-SNE runs on at most this many PCA components, as scikit-learn advises


def _shown(label: str) -> str:
    """``label`` as drawn: one line, cut to MAX_SHOWN_CHARS, ``$`` escaped (no mathtext)."""
    text = " ".join(str(label).split())
    if len(text) > MAX_SHOWN_CHARS:
        text = text[: MAX_SHOWN_CHARS - 1] + "…"
    return text.replace("$", r"\$")


def _text_inches(labels: Sequence[str], points: float) -> float:
    """A generous width in inches of the longest of ``labels`` drawn at ``points`` size: 0.6 em
    per character, a full em for East Asian wide ones (matplotlib cannot measure before drawing
    without a renderer, and sizes must be fixed before drawing)."""
    widest = 0.0
    for label in labels:
        text = _shown(label).replace(r"\$", "$")
        widest = max(
            widest, sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.6 for c in text)
        )
    return widest * points / 72


def _pixels(width_inches: float, height_inches: float) -> tuple[int, int]:
    """Inches rounded up to a quarter inch, in pixels at DPI: exact, as quarters are binary."""
    return tuple(int(math.ceil(side * 4) / 4 * DPI) for side in (width_inches, height_inches))


def scatter_size(labels: Sequence[str]) -> tuple[int, int]:
    """``(width, height)`` in pixels of :func:`scatter_png`'s picture for these point labels:
    a 7 x 6 inch plot plus a legend of ``ceil(classes / LEGEND_ROWS)`` columns."""
    classes = sorted(set(labels))
    columns = max(1, math.ceil(len(classes) / LEGEND_ROWS))
    rows = math.ceil(len(classes) / columns)
    column_inches = _text_inches(classes, LEGEND_FONT) + 4.5 * LEGEND_FONT / 72
    height = max(6.0, rows * 1.6 * LEGEND_FONT / 72 + 1.5)
    return _pixels(7.0 + columns * column_inches + 0.5, height)


def confusion_size(labels: Sequence[str]) -> tuple[int, int]:
    """``(width, height)`` in pixels of :func:`confusion_png`'s picture for these classes: about
    0.2 inch a class, room for the longest tick label, and a colour bar."""
    side = max(5.0, 0.2 * len(labels) + 2.0)
    margin = _text_inches(labels, _tick_font(len(labels))) + 1.0
    return _pixels(side + margin + 1.2, side + margin)


def _tick_font(classes: int) -> float:
    return TICK_FONT_SMALL if classes > MANY_CLASSES else 9


@contextlib.contextmanager
def _drawing() -> Iterator[None]:
    """matplotlib's default style (whatever the user's matplotlibrc says: usetex, tight bbox),
    and no warnings about glyphs the fonts lack: such labels draw as boxes, and that is all."""
    import matplotlib

    with matplotlib.rc_context(), warnings.catch_warnings():
        matplotlib.rcdefaults()
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support")
        yield


def _save(figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as a PNG of exactly its pixel size (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return path


def _scatter_figure(points: np.ndarray, labels: Sequence[str], title: str):
    """The scatter of ``points (n, 2)`` by class, as a matplotlib ``Figure`` (not saved)."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    points = np.asarray(points, dtype=np.float64)
    labels = [str(label) for label in labels]
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise ValueError(f"need points (n, 2) and n labels, got {points.shape}, {len(labels)}")
    classes = sorted(set(labels))
    width, height = scatter_size(labels)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["tab20"].colors
    codes = {label: i for i, label in enumerate(classes)}
    index = np.array([codes[label] for label in labels], dtype=np.int64)
    size = float(np.clip(20000 / max(len(points), 1), 8, 40))  # points squared
    handles = []
    for i in range(len(classes)):
        style = {"color": colours[i % 20], "marker": MARKERS[(i // 20) % len(MARKERS)]}
        mine = points[index == i]
        axes.scatter(mine[:, 0], mine[:, 1], s=size, linewidths=0, alpha=0.8, **style)
        handles.append(Line2D([], [], linestyle="", markersize=5, **style))
    axes.set_title(" ".join(title.split()).replace("$", r"\$"))
    columns = max(1, math.ceil(len(classes) / LEGEND_ROWS))
    # Labels given explicitly: matplotlib would drop those starting with "_" if it collected them.
    figure.legend(
        handles,
        [_shown(c) for c in classes],
        loc="outside right upper",
        ncols=columns,
        fontsize=LEGEND_FONT,
        frameon=False,
        handletextpad=0.3,
        columnspacing=1.0,
    )
    return figure


def scatter_png(points: np.ndarray, labels: Sequence[str], path: Path, title: str) -> Path:
    """Write a scatter of ``points (n, 2)`` coloured by ``labels`` (n) to the PNG ``path``.

    Class ``i`` (in sorted order) gets tab20 colour ``i % 20`` and marker ``MARKERS[i // 20]``;
    the legend is outside the axes on the right. Size: :func:`scatter_size`. Returns ``path``.
    """
    with _drawing():
        return _save(_scatter_figure(points, labels, title), path)


def project(vectors: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """``vectors (n, d)`` to ``(n, 2)`` float64 by ``method``: "pca" or "tsne"; n >= 3.

    t-SNE (scikit-learn): init="pca", ``random_state=seed``, perplexity ``clip((n - 1) / 3, 1,
    30)`` so that it stays below n, on at most TSNE_INPUT_DIM PCA components. Same input and seed,
    same output.
    """
    from sklearn.decomposition import PCA

    vectors = np.asarray(vectors, dtype=np.float32)
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(METHODS)}")
    if vectors.ndim != 2 or len(vectors) < 3:
        raise ValueError(
            f"a 2-d picture of embeddings needs at least 3 of them, got {len(vectors)}"
        )
    n, dim = vectors.shape
    if method == "pca" or dim > TSNE_INPUT_DIM:
        components = min(2 if method == "pca" else TSNE_INPUT_DIM, n, dim)
        vectors = PCA(n_components=components, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(np.clip((n - 1) / 3, 1.0, 30.0))
        tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
        vectors = tsne.fit_transform(vectors)
    out = np.zeros((n, 2), dtype=np.float64)
    out[:, : vectors.shape[1]] = vectors[:, :2]  # fewer than 2 dimensions: the rest stays 0
    return out


def embedding_plots(
    vectors: np.ndarray, labels: Sequence[str], out_dir: Path, seed: int = 0
) -> dict[str, str]:
    """Write ``out_dir/pca.png`` and ``out_dir/tsne.png``: ``vectors (n, d)`` projected to 2-d
    (:func:`project`) and drawn by class (:func:`scatter_png`). n >= 3, else ValueError.

    Returns ``{"pca": path, "tsne": path}`` (strings).
    """
    out_dir = Path(out_dir)
    written = {}
    for method, name in (("pca", "PCA"), ("tsne", "t-SNE")):
        points = project(vectors, method, seed)
        title = f"{name} of {len(points)} embeddings, {len(set(labels))} classes"
        written[method] = str(scatter_png(points, labels, out_dir / f"{method}.png", title))
    return written


def confusion_png(matrix: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    """Write the confusion ``matrix (c, c)`` (rows: true class, columns: predicted; counts) of
    the classes ``labels`` (c) to the PNG ``path``, via scikit-learn's ConfusionMatrixDisplay.

    Counts are written in the cells up to MANY_CLASSES classes; beyond, the colours alone tell
    and tick labels get small. Size: :func:`confusion_size`. Returns ``path``.
    """
    with _drawing():
        return _save(_confusion_display(matrix, labels).figure_, path)


def _confusion_display(matrix: np.ndarray, labels: Sequence[str]):
    """scikit-learn's ``ConfusionMatrixDisplay`` of ``matrix (c, c)``, drawn on a new Figure."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = np.asarray(matrix)
    labels = [str(label) for label in labels]
    if matrix.ndim != 2 or matrix.shape != (len(labels), len(labels)) or not labels:
        raise ValueError(f"need a (c, c) matrix and c labels, got {matrix.shape}, {len(labels)}")
    width, height = confusion_size(labels)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    display = ConfusionMatrixDisplay(matrix, display_labels=[_shown(s) for s in labels])
    display.plot(
        ax=axes,
        include_values=len(labels) <= MANY_CLASSES,
        xticks_rotation="vertical",
        cmap="Blues",
        text_kw={"fontsize": 10 if len(labels) <= 10 else 7},
    )
    axes.tick_params(labelsize=_tick_font(len(labels)))
    return display
