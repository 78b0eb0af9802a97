"""Sequence images: one pixel per base on a Hilbert curve, coloured by base.

Colours: A green, C blue, G amber, T red (the usual nucleotide colours, chosen to stay distinct
when darkened); soft-masked (lowercase) bases in a darker shade of the same colour; N (and any
other non-base token) neutral grey; the unused tail of the square white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Patch

from jaxseq import tokens as tok
from jaxseq.visualize import hilbert, images

#: RGB of A, C, G, T.
BASE_COLOURS = np.array([(44, 160, 44), (31, 119, 180), (255, 191, 0), (214, 39, 40)], dtype=np.uint8)
#: Soft-masked bases are drawn at this fraction of their base colour's brightness.
SOFT_MASK_SHADE = 0.5

#: Pixel classes: 0..3 bases, 4 N, 5..8 soft-masked bases, 9 the unused tail.
N_CLASS = 4
MASKED_OFFSET = 5
BACKGROUND_CLASS = 9
NUM_CLASSES = 10
PALETTE = np.concatenate([
    BASE_COLOURS,
    np.array([images.NEUTRAL], dtype=np.uint8),
    np.round(BASE_COLOURS * SOFT_MASK_SHADE).astype(np.uint8),
    np.array([images.BACKGROUND], dtype=np.uint8),
])


def sequence_classes(tokens: np.ndarray, soft_mask: np.ndarray | None = None) -> np.ndarray:
    """Maps tokens (and the soft-mask track) to pixel classes.

    Args:
      tokens: integer array ``(n,)`` of tokens (0..3 bases, anything else shown as N).
      soft_mask: bool/uint8 array ``(n,)``, nonzero where the base was lowercase; None for none.

    Returns:
      uint8 array ``(n,)`` of classes in ``0..8`` (see ``PALETTE``).
    """
    tokens = np.asarray(tokens)
    classes = np.where(tokens < tok.NUM_BASES, tokens, N_CLASS).astype(np.uint8)
    if soft_mask is not None:
        soft_mask = np.asarray(soft_mask)
        if soft_mask.shape != tokens.shape:
            raise ValueError(f"soft_mask shape {soft_mask.shape} differs from tokens {tokens.shape}")
        # A soft-masked N stays neutral: the darker shade only means something for a known base.
        masked = (soft_mask != 0) & (classes < N_CLASS)
        classes[masked] += MASKED_OFFSET
    return classes


def compose_sequence_image(tokens: np.ndarray, soft_mask: np.ndarray | None = None,
                           order: int | None = None) -> np.ndarray:
    """Builds the full-resolution picture: one pixel per base.

    Args:
      tokens: integer array ``(n,)``.
      soft_mask: optional bool array ``(n,)``.
      order: Hilbert order; default the smallest that fits ``n``.

    Returns:
      uint8 RGB array ``(2**p, 2**p, 3)``; base ``i`` is at ``[y, x]`` with ``(x, y) = d2xy(i, p)``.
    """
    classes = compose_sequence_classes(tokens, soft_mask, order)
    return PALETTE[classes]


def compose_sequence_classes(tokens: np.ndarray, soft_mask: np.ndarray | None = None,
                             order: int | None = None) -> np.ndarray:
    """Like :func:`compose_sequence_image` but returns the uint8 class square (palette indices)."""
    classes = sequence_classes(tokens, soft_mask)
    if order is None:
        order = hilbert.hilbert_order(classes.shape[0])
    return hilbert.to_square(classes, order, BACKGROUND_CLASS)


def display_sequence_image(tokens: np.ndarray, soft_mask: np.ndarray | None,
                           scale: images.Scale) -> np.ndarray:
    """Builds the on-screen square for a scale: zoomed, or mean colour of runs of ``4**j`` bases.

    Returns:
      uint8 RGB array ``(scale.side, scale.side, 3)``.
    """
    classes = sequence_classes(tokens, soft_mask)
    if scale.run == 1:
        return images.to_display(PALETTE[classes], scale, images.BACKGROUND)
    counts = images.run_class_counts(classes, NUM_CLASSES, scale.run)
    # The last run may be partial: its missing bases are the (background) tail of the square.
    counts[-1, BACKGROUND_CLASS] += scale.run * counts.shape[0] - classes.shape[0]
    colours = np.rint(counts @ PALETTE.astype(np.float64) / scale.run).astype(np.uint8)
    return images.to_display(colours, scale, images.BACKGROUND)


def legend_handles() -> list[Patch]:
    """Legend entries in column-major order for a 5-column, 2-row legend (bases over masked)."""
    def patch(cls, label):
        return Patch(facecolor=PALETTE[cls] / 255, edgecolor="0.4", linewidth=0.5, label=label)

    handles = []
    for b, letter in enumerate("ACGT"):
        handles += [patch(b, letter), patch(b + MASKED_OFFSET, letter.lower())]
    handles += [patch(N_CLASS, "N"), patch(BACKGROUND_CLASS, "unused")]
    return handles


def render_sequence(tokens: np.ndarray, out: str | Path, *, soft_mask: np.ndarray | None = None,
                    record: str = "sequence", max_size: int = images.DEFAULT_MAX_SIZE,
                    raw_out: str | Path | None = None) -> images.Rendered:
    """Draws a sequence on a Hilbert curve with a title and legend, and saves it as PNG.

    Args:
      tokens: integer array ``(n,)`` of tokens, ``n >= 1``.
      out: PNG path of the framed figure (title, legend, scale).
      soft_mask: optional bool array ``(n,)``; soft-masked bases are drawn darker.
      record: record name for the title.
      max_size: largest width/height of the figure in pixels; the scale is the largest exact one
        that fits (integer zoom, or mean colour of ``4**j`` consecutive bases).
      raw_out: optional PNG path for the full-resolution image, exactly one pixel per base.

    Returns:
      an :class:`~jaxseq.visualize.images.Rendered` describing the figure.
    """
    tokens = np.asarray(tokens)
    n = tokens.shape[0]
    if n == 0:
        raise ValueError(f"record {record!r} is empty: nothing to draw")
    order = hilbert.hilbert_order(n)
    if raw_out is not None:
        images.save_indexed_png(compose_sequence_classes(tokens, soft_mask, order), PALETTE, raw_out)

    is_base = tokens < tok.NUM_BASES
    n_bases = int(is_base.sum())
    gc = np.isin(tokens, (tok.C, tok.G)).sum() / max(n_bases, 1)
    masked = 0.0 if soft_mask is None else (np.asarray(soft_mask) != 0).sum() / n
    # The scale is only known once the title's height is; it goes in last, in a slot of a similar length.
    scale_slot = "1 px = 1,024 bases (32\u00d732 block, mean colour)"
    lines = [
        f"{record} \u2014 {n:,} bp",
        f"Hilbert curve order {order} ({1 << order}\u00d7{1 << order}), {scale_slot}",
        f"GC {100 * gc:.1f}%  \u00b7  soft-masked {100 * masked:.1f}%  \u00b7  N {100 * (n - n_bases) / n:.2f}%"
        "  \u00b7  starts top-left, ends top-right",
    ]
    legend_height = 60
    side = images.fit_panel_side(1, ncols=1, max_size=max_size, title_lines=len(images.wrap_title(lines, max_size)),
                                 legend_height=legend_height)
    scale = images.choose_scale(order, side)
    lines[1] = lines[1].replace(scale_slot, scale.describe("mean colour"))
    title = images.wrap_title(lines, max_size)
    square = display_sequence_image(tokens, soft_mask, scale)

    fig, panels = images.create_panel_figure([scale.side], ncols=1, title=title,
                                             legend_height=legend_height)
    images.show_square(panels[0], square)
    left, top, s = panels[0].box
    height = fig.bbox.height
    fig.legend(handles=legend_handles(), loc="upper center", ncol=5, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, (height - top - s - 6) / height), handlelength=1.4,
               columnspacing=1.2, title="lowercase = soft-masked (darker)", title_fontsize=8.5)
    return images.finish(fig, out, [scale], [p.box for p in panels], "mean colour")
