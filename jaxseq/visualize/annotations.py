"""Annotation images: per-base feature overlap counts on a Hilbert curve.

One panel per (sequence, feature type). Each type has its own hue; a base's brightness grows with
the number of features of that type covering it (dark grey where there are none, white past the
end of the sequence), and each panel has a colour bar of the counts. Counting uses a difference
array: +1 at each start, -1 just past each end, cumulative sum; so overlaps and nesting are exact
for any number of features, in O(length + features).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import BoundaryNorm, ListedColormap

from jaxseq.visualize import gff3, hilbert, images

#: Hue of each feature type, in order of use (Okabe-Ito and friends: distinct on a dark ground).
TYPE_COLOURS = np.array([
    (86, 180, 233), (230, 159, 0), (0, 158, 115), (240, 228, 66), (204, 121, 167),
    (213, 94, 0), (0, 114, 178), (170, 220, 120), (255, 140, 140), (180, 160, 255),
], dtype=np.float64)
#: Colour of bases covered by no feature of the panel's type.
NONE_COLOUR = (38, 38, 38)
#: Most panels one figure draws; beyond it the user should pick with --seqid / --features.
MAX_PANELS = 24


def overlap_counts(starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """Counts, at every base, the intervals covering it.

    Args:
      starts: integer array ``(m,)`` of 1-based first bases.
      ends: integer array ``(m,)`` of 1-based last bases (inclusive), ``starts <= ends <= length``.
      length: sequence length.

    Returns:
      int32 array ``(length,)``: ``counts[i]`` is the number of intervals with
      ``start <= i + 1 <= end``.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if starts.shape != ends.shape:
        raise ValueError(f"starts {starts.shape} and ends {ends.shape} differ in shape")
    if starts.size and (starts.min() < 1 or ends.max() > length or (starts > ends).any()):
        raise ValueError(f"intervals must satisfy 1 <= start <= end <= {length}")
    diff = np.zeros(length + 1, dtype=np.int32)
    # np.add.at, not diff[idx] += 1: several features can start (or end) at the same base.
    np.add.at(diff, starts - 1, 1)
    np.add.at(diff, ends, -1)
    return np.cumsum(diff[:length], dtype=np.int32)


def feature_overlaps(features: Sequence[gff3.Feature], length: int, circular: bool = False) -> np.ndarray:
    """Per-base count of the given features on one sequence.

    Args:
      features: features of one sequence (1-based inclusive coordinates).
      length: sequence length.
      circular: whether features past ``length`` wrap round to base 1.

    Returns:
      int32 array ``(length,)``.
    """
    starts = np.array([f.start for f in features], dtype=np.int64)
    ends = np.array([f.end for f in features], dtype=np.int64)
    if circular:
        # A feature across the origin (end > length) is two pieces: start..length and 1..end-length.
        wraps = ends > length
        starts = np.concatenate([starts, np.ones(wraps.sum(), dtype=np.int64)])
        ends = np.concatenate([np.minimum(ends, length), np.minimum(ends[wraps] - length, length)])
    return overlap_counts(starts, ends, length)


def count_colours(hue: Sequence[float], max_count: int) -> np.ndarray:
    """Colours for counts ``0..max_count``: dark for none, then brighter with every extra feature.

    Brightness climbs from 45% of the hue (one feature) to the full hue and then towards white, so
    even 1 vs 2 overlapping features differ clearly and a single feature stands out from none.

    Returns:
      uint8 array ``(max_count + 1, 3)``.
    """
    hue = np.asarray(hue, dtype=np.float64)
    colours = [np.array(NONE_COLOUR, dtype=np.float64)]
    for k in range(1, max_count + 1):
        level = 1.0 if max_count == 1 else (k - 1) / (max_count - 1)  # 0..1
        if level <= 0.5:
            colour = hue * (0.45 + 1.1 * level)
        else:
            colour = hue + (255.0 - hue) * (level - 0.5) * 1.2
        colours.append(colour)
    return np.clip(np.rint(np.array(colours)), 0, 255).astype(np.uint8)


def display_counts(counts: np.ndarray, scale: images.Scale, colours: np.ndarray) -> np.ndarray:
    """Builds the on-screen RGB square of a count track (max over runs of ``4**j`` bases).

    Returns:
      uint8 RGB array ``(scale.side, scale.side, 3)``.
    """
    n = counts.shape[0]
    if scale.run > 1:
        n_runs = -(-n // scale.run)
        padded = np.zeros(n_runs * scale.run, dtype=counts.dtype)
        padded[:n] = counts
        # Max, not mean: a short feature or a single overlap must stay visible when shrunk.
        counts = padded.reshape(n_runs, scale.run).max(axis=1)
    return images.to_display(colours[counts], scale, images.BACKGROUND)


def _columns(n_types: int, n_seqids: int) -> int:
    if n_seqids == 1:
        return images.grid_columns(n_types)
    # One row block per sequence: pick a width that divides the number of types.
    return next((c for c in (3, 2) if n_types % c == 0), min(3, n_types)) if n_types > 3 else n_types


def _choose_panels(annotations: gff3.Annotations, types: Sequence[str] | None,
                   seqid: str | None) -> tuple[list[str], list[str]]:
    """The sequences and feature types to draw, checked (unknown names, nothing to draw, too many panels)."""
    path = annotations.path
    if seqid is not None:
        annotations.check_seqid(seqid)
        seqids = [seqid]
    else:
        seqids = annotations.seqids
    if types:
        annotations.check_types(types)
        types = list(dict.fromkeys(types))
    else:
        types = [t for t in annotations.types if t not in gff3.WHOLE_SEQUENCE_TYPES] or annotations.types
    if not seqids or not types:
        raise gff3.GFF3Error(f"{path}: no features to draw")
    n_panels = len(seqids) * len(types)
    if n_panels > MAX_PANELS:
        raise gff3.GFF3Error(f"{path}: {len(seqids)} sequences x {len(types)} types = {n_panels} panels "
                             f"(max {MAX_PANELS}); choose with --seqid and/or --features")
    return seqids, types


def render_annotations(annotations: gff3.Annotations, out: str | Path, *,
                       types: Sequence[str] | None = None, seqid: str | None = None,
                       max_size: int = images.DEFAULT_MAX_SIZE) -> images.Rendered:
    """Draws feature overlap counts of a GFF3 file, one panel per sequence and feature type.

    Args:
      annotations: parsed GFF3.
      out: PNG path.
      types: feature types to draw; default every type except whole-sequence ones (``region``...).
      seqid: draw only this sequence; default all.
      max_size: largest width/height of the figure in pixels.

    Returns:
      a :class:`~jaxseq.visualize.images.Rendered`.

    Raises:
      GFF3Error: unknown seqid or type, nothing to draw, or too many panels.
    """
    seqids, types = _choose_panels(annotations, types, seqid)
    lengths = annotations.lengths
    circular = annotations.circular
    ncols = _columns(len(types), len(seqids))
    single = len(seqids) == 1

    def describe(name):
        return f"{name} ({lengths[name]:,} bp{', circular' if name in circular else ''})"

    n_panels = len(seqids) * len(types)
    title = [annotations.path.name]
    if single:
        title.append(f"{describe(seqids[0])}, Hilbert order {hilbert.hilbert_order(lengths[seqids[0]])}")
    title.append("brightness = number of overlapping features of the panel's type; "
                 "curve starts top-left, ends top-right")
    title = images.wrap_title(title, max_size)
    side = images.fit_panel_side(n_panels, ncols=ncols, max_size=max_size, title_lines=len(title),
                                 panel_title_lines=3, colorbar=True)
    panels_data, titles = [], []
    for name in seqids:
        length = lengths[name]
        scale = images.choose_scale(hilbert.hilbert_order(length), side)
        for t_index, ftype in enumerate(types):
            features = annotations.select(name, ftype)
            counts = feature_overlaps(features, length, name in circular)
            panels_data.append((name, length, scale, ftype, t_index, len(features), counts))
            n_features = len(features)
            lines = [f"{ftype}: {n_features:,} feature{'s' if n_features != 1 else ''}",
                     f"{100 * np.count_nonzero(counts) / length:.1f}% covered, "
                     f"max overlap {int(counts.max(initial=0))}",
                     scale.describe("max")]
            if not single:
                lines[0] = f"{describe(name)} \u00b7 {lines[0]}"
            titles.append(lines)
    fig, panels = images.create_panel_figure([d[2].side for d in panels_data], ncols=ncols, title=title,
                                             panel_titles=titles, colorbar=True)
    for panel, (name, length, scale, ftype, t_index, n_features, counts) in zip(panels, panels_data):
        max_count = max(1, int(counts.max(initial=0)))
        colours = count_colours(TYPE_COLOURS[t_index % len(TYPE_COLOURS)], max_count)
        images.show_square(panel, display_counts(counts, scale, colours))
        cmap = ListedColormap(colours / 255.0)
        norm = BoundaryNorm(np.arange(-0.5, max_count + 1), cmap.N)
        bar = ColorbarBase(panel.cax, cmap=cmap, norm=norm, orientation="vertical")
        step = max(1, int(np.ceil((max_count + 1) / 12)))
        bar.set_ticks(np.arange(0, max_count + 1, step))
        bar.ax.tick_params(labelsize=8)
        bar.set_label("overlapping features", fontsize=8)
    return images.finish(fig, out, [d[2] for d in panels_data], [p.box for p in panels], "max")
