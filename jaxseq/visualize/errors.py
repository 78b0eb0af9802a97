"""Per-base reconstruction error: a Hilbert map and a bedGraph track.

The input is a float array per record: the error rate at each base (e.g. the fraction of the
windows covering it in which the model got it wrong), NaN where the base was never scored (N, or
outside the evaluated split). Producing it from a trained run is the evaluator's job
(``jaxseq.evaluate.per_base_errors``); this module only draws and writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import Normalize

from jaxseq.visualize import hilbert, images

#: Low error dark, high error bright; no grey in it, so unscored grey bases stand apart.
COLORMAP = "magma"
#: bedGraph values are written (and merged) with this many significant digits.
SIGNIFICANT_DIGITS = 6


def error_runs(error_rate: np.ndarray, significant_digits: int | None = SIGNIFICANT_DIGITS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits a per-base track into runs of equal consecutive values, dropping unscored runs.

    Args:
      error_rate: float array ``(n,)``; NaN marks unscored bases.
      significant_digits: values are rounded to this many significant digits before merging (what
        the bedGraph can show anyway); None merges exactly equal values only.

    Returns:
      ``(starts, ends, values)``: int64, int64, float64 arrays ``(runs,)``; 0-based half-open
      intervals in increasing order, NaN runs left out.
    """
    v = np.asarray(error_rate, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"error_rate must be 1-D, got shape {v.shape}")
    n = v.shape[0]
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    if significant_digits is not None:
        v = _round_significant(v, significant_digits)
    nan = np.isnan(v)
    change = np.empty(n, dtype=bool)
    change[0] = True
    # NaN != NaN, so a stretch of unscored bases would otherwise split at every base.
    change[1:] = (v[1:] != v[:-1]) & ~(nan[1:] & nan[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    values = v[starts]
    keep = ~np.isnan(values)
    return starts[keep].astype(np.int64), ends[keep].astype(np.int64), values[keep]


def _round_significant(v: np.ndarray, digits: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(v)))
    magnitude = np.where(np.isfinite(magnitude), magnitude, 0.0)
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(v * scale) / scale


def write_bedgraph(path: str | Path, record: str, error_rate: np.ndarray, *, append: bool = False,
                   track_name: str | None = None,
                   significant_digits: int | None = SIGNIFICANT_DIGITS) -> int:
    """Writes a per-base track as bedGraph (``record start end value``, 0-based half-open).

    Consecutive bases with equal values become one line; unscored (NaN) bases are left out.

    Args:
      path: output file.
      record: sequence name (column 1); must not contain whitespace.
      error_rate: float array ``(n,)``.
      append: add to an existing file (for the next record) instead of replacing it.
      track_name: if given, a ``track type=bedGraph name="..."`` header line is written first.
      significant_digits: see :func:`error_runs`.

    Returns:
      the number of data lines written.
    """
    if not record or any(c.isspace() for c in record):
        raise ValueError(f"bedGraph record name must be non-empty without whitespace, got {record!r}")
    starts, ends, values = error_runs(error_rate, significant_digits)
    fmt = f"%.{significant_digits}g" if significant_digits is not None else "%.17g"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        if track_name is not None:
            f.write(f'track type=bedGraph name="{track_name}"\n')
        # Write in slices so a genome with millions of runs never builds one giant string.
        for lo in range(0, starts.shape[0], 1 << 16):
            hi = lo + (1 << 16)
            f.writelines(f"{record}\t{s}\t{e}\t{fmt % x}\n"
                         for s, e, x in zip(starts[lo:hi].tolist(), ends[lo:hi].tolist(), values[lo:hi].tolist()))
    return int(starts.shape[0])


def error_colours(values: np.ndarray, vmax: float) -> np.ndarray:
    """Colours for error rates: the colormap over ``[0, vmax]``, neutral grey for NaN.

    Returns:
      uint8 array ``(n, 3)``.
    """
    values = np.asarray(values, dtype=np.float64)
    rgba = colormaps[COLORMAP](Normalize(0.0, vmax, clip=True)(np.nan_to_num(values, nan=0.0)))
    rgb = np.rint(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)
    rgb[np.isnan(values)] = images.NEUTRAL
    return rgb


def render_error_map(error_rate: np.ndarray | Mapping[str, np.ndarray], out: str | Path, *,
                     record: str = "sequence", vmax: float | None = None, label: str = "",
                     max_size: int = images.DEFAULT_MAX_SIZE) -> images.Rendered:
    """Draws per-base error rates on the Hilbert layout of the sequence images.

    Args:
      error_rate: float array ``(n,)`` (NaN = unscored), or a mapping record -> such array for one
        panel per record.
      out: PNG path.
      record: record name when ``error_rate`` is a single array.
      vmax: error rate at the top of the colour scale; default the largest finite value.
      label: what was evaluated (e.g. the run directory), for the title.
      max_size: largest width/height of the figure in pixels.

    Returns:
      a :class:`~jaxseq.visualize.images.Rendered`.
    """
    tracks = dict(error_rate) if isinstance(error_rate, Mapping) else {record: error_rate}
    tracks = {name: np.asarray(v, dtype=np.float64) for name, v in tracks.items()}
    if not tracks or any(v.ndim != 1 or v.shape[0] == 0 for v in tracks.values()):
        raise ValueError("error_rate needs at least one non-empty 1-D track")
    finite = [v[np.isfinite(v)] for v in tracks.values()]
    all_finite = np.concatenate(finite)
    if vmax is None:
        vmax = float(all_finite.max()) if all_finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0

    ncols = images.grid_columns(len(tracks))
    overall = float(all_finite.mean()) if all_finite.size else float("nan")
    title = images.wrap_title([
        f"Per-base reconstruction error{': ' + label if label else ''}",
        f"mean error rate {overall:.4f} over {all_finite.size:,} scored bases; "
        "grey = unscored, white = past the end",
        "Hilbert curve per record, starts top-left, ends top-right"], max_size)
    side = images.fit_panel_side(len(tracks), ncols=ncols, max_size=max_size, title_lines=len(title),
                                 panel_title_lines=3, colorbar=True)
    scales, titles, squares = [], [], []
    for name, values in tracks.items():
        scale = images.choose_scale(hilbert.hilbert_order(values.shape[0]), side)
        per_pixel = images.run_reduce(values, scale.run, "mean")
        squares.append(images.to_display(error_colours(per_pixel, vmax), scale, images.BACKGROUND))
        scored = np.isfinite(values)
        mean = float(values[scored].mean()) if scored.any() else float("nan")
        titles.append([f"{name} ({values.shape[0]:,} bp)",
                       f"mean {mean:.4f}, {100 * scored.mean():.1f}% of bases scored",
                       scale.describe("mean")])
        scales.append(scale)
    fig, panels = images.create_panel_figure([s.side for s in scales], ncols=ncols, title=title,
                                             panel_titles=titles, colorbar=True)
    for panel, square in zip(panels, squares):
        images.show_square(panel, square)
        bar = ColorbarBase(panel.cax, cmap=colormaps[COLORMAP], norm=Normalize(0.0, vmax),
                           orientation="vertical")
        bar.ax.tick_params(labelsize=8)
        bar.set_label("error rate", fontsize=8)
    return images.finish(fig, out, scales, [p.box for p in panels], "mean")


#: More regions than this make panels too small to read: draw fewer (the bedGraph holds any number).
MAX_REGION_PANELS = 48


def region_panels(regions) -> dict[str, tuple[str, int, int]]:
    """Panel labels of regions: ``name (chrom:start-end)`` (1-based inclusive, as genome browsers show them).

    Args:
      regions: ``(chrom, start, end[, name])`` tuples, 0-based half-open (:class:`jaxseq.regions.Region`);
        zero-length ones are left out, repeated ones drawn once.

    Returns:
      label -> ``(chrom, start, end)``, in the regions' order.

    Raises:
      ValueError: more than :data:`MAX_REGION_PANELS` regions to draw.
    """
    panels = {}
    for region in regions:
        chrom, start, end = region[0], int(region[1]), int(region[2])
        if end > start:
            where = f"{chrom}:{start + 1:,}-{end:,}"
            name = region[3] if len(region) > 3 else ""
            panels[f"{name} ({where})" if name else where] = (chrom, start, end)
    if not panels or len(panels) > MAX_REGION_PANELS:
        raise ValueError(f"{len(panels)} non-empty regions to draw; draw 1 to {MAX_REGION_PANELS} regions "
                         "(the bedGraph of all of them: jaxseq.evaluate.per_base_errors with bed=)")
    return panels
