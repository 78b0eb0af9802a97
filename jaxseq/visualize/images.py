"""Figures and PNG files shared by every picture: scale choice, exact-pixel layout, saving.

Every image here is a Hilbert square whose pixels must map 1:1 to screen pixels, or the scale stated
in the title would be a lie. So panels are placed at integer pixel positions in a figure of integer
pixel size and drawn with ``imshow(interpolation="nearest")`` at exactly their own size; when a square
is too large it is shrunk by aggregating runs of ``4**j`` consecutive values (an aligned
``2**j x 2**j`` block of the curve, see :mod:`jaxseq.visualize.hilbert`), never by resampling.

Matplotlib is used through ``Figure`` + ``FigureCanvasAgg`` (the Agg backend, explicitly) and never
through ``pyplot``, so importing this module does not change the backend of the user's session.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.font_manager import FontProperties
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import IdentityTransform
from PIL import Image

from jaxseq.visualize import hilbert

DPI = 100
#: Default largest side of a saved figure, in pixels.
DEFAULT_MAX_SIZE = 1200
#: Colour of the unused tail of a Hilbert square (past the end of the sequence).
BACKGROUND = (255, 255, 255)
#: Colour of unscored / unknown positions in continuous maps.
NEUTRAL = (158, 158, 158)

_MARGIN = 20
_GAP = 24
_TITLE_LINE = 22
_PANEL_TITLE_LINE = 15
_COLORBAR_WIDTH = 78  # gap + bar + tick labels
#: Narrowest figure with a legend (the 5-column base legend needs about this much).
MIN_LEGEND_WIDTH = 360
_TITLE_FONT = 12
_SUBTITLE_FONT = 9.5
_PANEL_FONT = 8.5


@dataclasses.dataclass(frozen=True)
class Scale:
    """How a Hilbert square of a given order is shown on screen.

    Attributes:
      order: order ``p`` of the full-resolution square (one pixel per base).
      run_order: ``j``: one display pixel aggregates ``4**j`` consecutive bases (a ``2**j`` block).
      zoom: each display pixel is drawn as a ``zoom x zoom`` block of screen pixels.
    """

    order: int
    run_order: int = 0
    zoom: int = 1

    @property
    def run(self) -> int:
        """Number of consecutive bases in one display pixel."""
        return 4**self.run_order

    @property
    def display_order(self) -> int:
        """Order of the Hilbert square actually drawn."""
        return self.order - self.run_order

    @property
    def side(self) -> int:
        """Side of the drawn square in screen pixels."""
        return (1 << self.display_order) * self.zoom

    def describe(self, reducer: str = "mean colour") -> str:
        """Human-readable scale, e.g. ``"1 px = 16 bases (4x4 block, mean colour)"``."""
        if self.run_order == 0 and self.zoom == 1:
            return "1 px = 1 base"
        if self.run_order == 0:
            return f"1 base = {self.zoom}\u00d7{self.zoom} px"
        block = 1 << self.run_order
        return f"1 px = {self.run:,} bases ({block}\u00d7{block} block, {reducer})"


def choose_scale(order: int, max_side: int) -> Scale:
    """Picks the largest exact scale whose square fits ``max_side`` screen pixels.

    Args:
      order: Hilbert order of the full-resolution square.
      max_side: available screen pixels for the square's side, ``>= 1``.

    Returns:
      the :class:`Scale`: integer zoom when the square is small, else the least aggregation.
    """
    max_side = max(1, int(max_side))
    side = 1 << order
    if side <= max_side:
        return Scale(order, 0, max_side // side)
    run_order = 0
    while (side >> run_order) > max_side:
        run_order += 1
    return Scale(order, run_order, 1)


def run_class_counts(classes: np.ndarray, n_classes: int, run: int) -> np.ndarray:
    """Counts class labels in consecutive runs.

    Args:
      classes: integer array ``(n,)`` of labels in ``[0, n_classes)``.
      n_classes: number of labels.
      run: run length (``4**j``).

    Returns:
      int64 array ``(ceil(n / run), n_classes)``; the last run may be partial.
    """
    n = classes.shape[0]
    n_runs = -(-n // run)
    run_id = np.arange(n, dtype=np.int64) // run
    counts = np.bincount(run_id * n_classes + classes.astype(np.int64), minlength=n_runs * n_classes)
    return counts.reshape(n_runs, n_classes)


def run_reduce(values: np.ndarray, run: int, how: str) -> np.ndarray:
    """Aggregates a float track over consecutive runs, ignoring NaN.

    Args:
      values: float array ``(n,)``; NaN marks missing values.
      run: run length (``4**j``).
      how: ``"max"`` or ``"mean"``.

    Returns:
      float64 array ``(ceil(n / run),)``; NaN where a run has no finite value.
    """
    values = np.asarray(values, dtype=np.float64)
    if run == 1:
        return values.copy()
    n = values.shape[0]
    n_runs = -(-n // run)
    padded = np.full(n_runs * run, np.nan)
    padded[:n] = values
    blocks = padded.reshape(n_runs, run)
    finite = np.isfinite(blocks)
    any_finite = finite.any(axis=1)
    if how == "max":
        out = np.where(finite, blocks, -np.inf).max(axis=1)
    elif how == "mean":
        count = finite.sum(axis=1)
        out = np.where(finite, blocks, 0.0).sum(axis=1) / np.maximum(count, 1)
    else:
        raise ValueError(f"unknown reduction {how!r} (expected 'max' or 'mean')")
    return np.where(any_finite, out, np.nan)


def to_display(per_pixel: np.ndarray, scale: Scale, fill) -> np.ndarray:
    """Lays aggregated values on the display square and zooms them.

    Args:
      per_pixel: array ``(m, ...)``, one entry per display pixel along the curve (``m <= 4**q``
        with ``q = scale.display_order``).
      scale: the :class:`Scale`.
      fill: value of the unused tail.

    Returns:
      array ``(scale.side, scale.side, ...)``.
    """
    square = hilbert.to_square(per_pixel, scale.display_order, fill)
    if scale.zoom > 1:
        square = square.repeat(scale.zoom, axis=0).repeat(scale.zoom, axis=1)
    return square


@dataclasses.dataclass
class Rendered:
    """What a render call wrote.

    Attributes:
      path: the PNG written.
      size: ``(width, height)`` in pixels.
      scales: one :class:`Scale` per panel.
      boxes: ``(left, top, side)`` of each panel's image in the PNG.
      reducer: how one display pixel summarises several bases (for :meth:`Scale.describe`).
    """

    path: Path
    size: tuple[int, int]
    scales: list
    boxes: list
    reducer: str = "mean colour"


@dataclasses.dataclass
class Panel:
    """One square of a figure, with its axes placed at exact pixels.

    Attributes:
      ax: image axes, exactly ``side x side`` screen pixels.
      cax: colour-bar axes or None.
      box: ``(left, top, side)`` of the image in pixels from the figure's top-left corner.
    """

    ax: object
    cax: object
    box: tuple[int, int, int]


def fit_panel_side(n_panels: int, *, ncols: int, max_size: int, title_lines: int,
                   panel_title_lines: int = 0, colorbar: bool = False, legend_height: int = 0) -> int:
    """Returns the largest square side (pixels) so a panel grid fits ``max_size`` both ways."""
    nrows = -(-n_panels // ncols)
    fixed_w = 2 * _MARGIN + ncols * (_COLORBAR_WIDTH if colorbar else 0) + (ncols - 1) * _GAP
    fixed_h = (_title_height(title_lines) + nrows * _panel_title_height(panel_title_lines)
               + (nrows - 1) * _GAP + legend_height + _MARGIN)
    return max(16, min((max_size - fixed_w) // ncols, (max_size - fixed_h) // nrows))


def _title_height(lines: int) -> int:
    return _TITLE_LINE * lines + 14


def _panel_title_height(lines: int) -> int:
    return _PANEL_TITLE_LINE * lines + 8 if lines else 0


def text_width(text: str, fontsize: float, bold: bool = False) -> int:
    """Width in pixels of a line of text as Agg will draw it (to size figures before drawing)."""
    prop = FontProperties(size=fontsize, weight="bold" if bold else "normal")
    width, _, _ = RendererAgg(1, 1, DPI).get_text_width_height_descent(text, prop, ismath=False)
    return int(math.ceil(width))


def wrap_title(lines: Sequence[str], max_size: int, keep_first: bool = True) -> list[str]:
    """Wraps subtitle lines at ``"; "``, ``", "`` or ``" \u00b7 "`` so they fit ``max_size`` pixels.

    Call before :func:`fit_panel_side` so the space reserved for the title is right.

    Args:
      lines: title lines.
      max_size: figure width in pixels (at ``DPI``).
      keep_first: leave the first line (the bold title) as it is.
    """
    limit = max_size - 2 * _MARGIN
    out = list(lines[:1]) if keep_first else []
    for line in (lines[1:] if keep_first else lines):
        pending = line
        while text_width(pending, _SUBTITLE_FONT) > limit:
            # Break at the last separator that leaves a fitting head; give up if there is none.
            # "; " and ", " keep their punctuation on the head line, a " \u00b7 " bullet is dropped.
            cuts = [(i + len(sep.rstrip()) if sep.strip() in ";," else i, i + len(sep))
                    for sep in ("; ", ", ", " \u00b7 ") for i in _find_all(pending, sep)]
            cuts = [c for c in cuts if text_width(pending[:c[0]].rstrip(), _SUBTITLE_FONT) <= limit]
            if not cuts:
                break
            head_end, rest_start = max(cuts)
            out.append(pending[:head_end].rstrip())
            pending = pending[rest_start:].lstrip()
        out.append(pending)
    return out


def _find_all(text: str, sep: str) -> list[int]:
    found, start = [], 0
    while (i := text.find(sep, start)) >= 0:
        found.append(i)
        start = i + 1
    return found


def create_panel_figure(sides: Sequence[int], *, ncols: int, title: Sequence[str],
                        panel_titles: Sequence[Sequence[str]] | None = None, colorbar: bool = False,
                        legend_height: int = 0) -> tuple[Figure, list[Panel]]:
    """Builds a figure with a grid of square image panels at exact pixel positions.

    Args:
      sides: side in pixels of each panel's image (panels may differ).
      ncols: number of grid columns.
      title: lines of the figure title; the first is drawn larger and bold.
      panel_titles: lines written above each panel (the first bold), or None.
      colorbar: reserve a colour bar to the right of each panel.
      legend_height: pixels reserved at the bottom for a figure legend.

    Returns:
      ``(figure, panels)``. The figure has an Agg canvas attached.
    """
    n = len(sides)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    cb = _COLORBAR_WIDTH if colorbar else 0
    n_title_lines = max((len(t) for t in panel_titles), default=0) if panel_titles else 0
    # Cells are as wide as the widest image + colour bar or the widest panel title, whichever wins.
    cell_text = max((text_width(line, _PANEL_FONT, bold=(k == 0))
                     for lines in (panel_titles or ()) for k, line in enumerate(lines)), default=0)
    cell = max(sides)
    cell_w = max(cell + cb, cell_text)
    grid_w = ncols * cell_w + (ncols - 1) * _GAP
    title_w = max([text_width(title[0], _TITLE_FONT, bold=True)] +
                  [text_width(line, _SUBTITLE_FONT) for line in title[1:]]) if title else 0
    width = max(grid_w + 2 * _MARGIN, title_w + 2 * _MARGIN, MIN_LEGEND_WIDTH if legend_height else 0)
    left0 = (width - grid_w) // 2
    top0 = _title_height(len(title))
    pth = _panel_title_height(n_title_lines)
    height = top0 + nrows * (pth + cell) + (nrows - 1) * _GAP + legend_height + _MARGIN
    # Agg truncates the canvas size (int(inches * dpi)), and e.g. 489 / 100 * 100 < 489: a hair
    # extra keeps the canvas at exactly width x height, and axes positions (fractions of the
    # intended size) land a hair right of their pixel edge, never left of it.
    fig = Figure(figsize=((width + 1e-6) / DPI, (height + 1e-6) / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    panels = []
    for i, side in enumerate(sides):
        row, col = divmod(i, ncols)
        left = left0 + col * (cell_w + _GAP)
        top = top0 + row * (pth + cell + _GAP) + pth
        ax = fig.add_axes([left / width, (height - top - side) / height, side / width, side / height])
        ax.set_axis_off()
        # A 1-pixel frame just outside the image shows where the square (and its unused tail) ends:
        # a filled rectangle one pixel larger all round, drawn beneath the image (a stroked outline
        # would be snapped onto the image's edge pixels).
        fig.patches.append(Rectangle((left - 1, height - top - side - 1), side + 2, side + 2,
                                     transform=IdentityTransform(), facecolor="0.55", edgecolor="none",
                                     linewidth=0, antialiased=False, zorder=-1))
        cax = None
        if colorbar:
            cax = fig.add_axes([(left + side + 10) / width, (height - top - side) / height,
                                14 / width, side / height])
        panel = Panel(ax, cax, (left, top, side))
        panels.append(panel)
        if panel_titles:
            for k, line in enumerate(reversed(panel_titles[i])):
                fig.text(left / width, (height - top + 4 + _PANEL_TITLE_LINE * k) / height, line,
                         ha="left", va="bottom", fontsize=_PANEL_FONT,
                         fontweight="bold" if k == len(panel_titles[i]) - 1 else "normal")
    if title:
        y = height - 10
        fig.text(0.5, y / height, title[0], ha="center", va="top", fontsize=_TITLE_FONT,
                 fontweight="bold")
        for k, line in enumerate(title[1:], start=1):
            fig.text(0.5, (y - 4 - _TITLE_LINE * k) / height, line, ha="center", va="top",
                     fontsize=_SUBTITLE_FONT, color="0.2")
    return fig, panels


def show_square(panel: Panel, square: np.ndarray, **imshow_kwargs):
    """Draws a display square 1:1 in its panel (nearest neighbour, no resampling)."""
    side = panel.box[2]
    if square.shape[0] != side or square.shape[1] != side:
        raise ValueError(f"square {square.shape[:2]} does not match panel side {side}")
    return panel.ax.imshow(square, interpolation="nearest", resample=False, origin="upper",
                           aspect="equal", **imshow_kwargs)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Saves a figure as PNG at its own pixel size (no tight bbox: it would move the pixels).

    Returns:
      the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi, facecolor=fig.get_facecolor())
    _shrink_png(path)
    return path


def finish(fig: Figure, out: str | Path, scales: Sequence[Scale] = (), boxes: Sequence = (),
           reducer: str = "mean colour") -> Rendered:
    """Saves a figure (see :func:`save_figure`) and describes what was written."""
    path = save_figure(fig, out)
    with Image.open(path) as im:
        size = im.size
    return Rendered(path, size, list(scales), list(boxes), reducer)


def _shrink_png(path: Path) -> None:
    """Re-encodes a PNG losslessly, as a palette image when it has at most 256 colours."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    unique, index = np.unique(codes.reshape(-1), return_inverse=True)
    if unique.size <= 256:
        palette = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1)
        save_indexed_png(index.reshape(codes.shape).astype(np.uint8), palette.astype(np.uint8), path)
    else:
        Image.fromarray(rgb).save(path, optimize=True)


def save_indexed_png(classes: np.ndarray, palette: np.ndarray, path: str | Path) -> Path:
    """Writes a label image as a palette PNG: exact colours, one pixel per label, small file.

    Args:
      classes: uint8 array ``(h, w)`` of labels.
      palette: uint8 array ``(n_labels, 3)`` of RGB colours, ``n_labels <= 256``.
      path: output file.

    Returns:
      the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = np.ascontiguousarray(classes, dtype=np.uint8)
    im = Image.frombytes("P", (classes.shape[1], classes.shape[0]), classes.tobytes())
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette
    im.putpalette(flat.reshape(-1).tolist())
    # optimize=True halves the speed for a few per cent of size: only worth it on small images.
    im.save(path, optimize=classes.size <= 4_000_000)
    return path


def grid_columns(n_panels: int) -> int:
    """Number of grid columns for ``n_panels`` panels: one row up to 3, then at most 3 wide."""
    if n_panels <= 3:
        return max(1, n_panels)
    return 2 if n_panels == 4 else 3
