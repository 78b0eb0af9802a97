"""k-mer frequencies: counting on token arrays and the observed-vs-expected plot.

A k-mer ``w = w_0 .. w_{k-1}`` has index ``sum_j w_j * 4**(k-1-j)`` (first base most significant,
so indices sort like the words). Counting is vectorised per chunk of the genome, with ``k - 1``
bases of overlap between chunks so no window is lost or counted twice; memory is
``O(chunk + 4**k)`` however long the genome. Windows containing N (any token >= 4) are skipped.

Two expectations are compared with the observed counts:

* uniform: every k-mer equally likely, ``E[w] = total / 4**k``;
* Markov (maximal order, from the (k-1)-mer counts):
  ``E[w] = count(w[:-1]) * count(w[1:]) / count(w[1:-1])``; for ``k = 2`` the middle word is empty
  and its count is the number of counted bases. It is undefined for ``k = 1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from jaxseq import tokens as tok
from jaxseq.visualize import images

#: Largest k accepted: 4**12 counters (128 MB of int64) is already more than a plot can show.
MAX_K = 12
DEFAULT_CHUNK = 1 << 22


def parse_k(text: str) -> list[int]:
    """Parses a k specification: a single ``"3"`` or an inclusive range ``"1..8"``.

    Returns:
      the list of k values, increasing.

    Raises:
      ValueError: for malformed text or k outside ``1..MAX_K``.
    """
    text = text.strip()
    try:
        if ".." in text:
            low_text, high_text = text.split("..", 1)
            low, high = int(low_text), int(high_text)
        else:
            low = high = int(text)
    except ValueError:
        raise ValueError(f"k must be an integer like 3 or a range like 1..8, got {text!r}") from None
    if not 1 <= low <= high <= MAX_K:
        raise ValueError(f"k must satisfy 1 <= k <= {MAX_K} (and low <= high), got {text!r}")
    return list(range(low, high + 1))


def kmer_words(k: int) -> list[str]:
    """The 4**k words in index order (``kmer_words(2)[6] == "CG"``)."""
    if k == 0:
        return [""]
    idx = np.arange(4**k)
    digits = (idx[:, None] >> (2 * np.arange(k - 1, -1, -1))) & 3
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)[digits]
    return [row.tobytes().decode() for row in letters]


def kmer_indices(tokens: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of every length-k window, and whether it is N-free.

    Args:
      tokens: integer array ``(n,)`` of tokens.
      k: word length, ``1 <= k <= MAX_K``.

    Returns:
      ``(index, valid)``: uint32 and bool arrays ``(max(n - k + 1, 0),)``; ``index`` is only
      meaningful where ``valid``.
    """
    tokens = np.asarray(tokens)
    m = tokens.shape[0] - k + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=bool)
    index = np.zeros(m, dtype=np.uint32)
    valid = np.ones(m, dtype=bool)
    for j in range(k):
        window = tokens[j: j + m]
        index <<= 2
        # & 3 keeps N (4) and MASK (5) from spilling into the next digit; valid masks them anyway.
        index |= (window & 3).astype(np.uint32)
        valid &= window < tok.NUM_BASES
    return index, valid


def count_kmers(sequences: np.ndarray | Iterable[np.ndarray], k: int,
                chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Counts the N-free k-mers of one or several sequences (windows never span two sequences).

    Args:
      sequences: a token array ``(n,)`` or an iterable of them.
      k: word length, ``1 <= k <= MAX_K``.
      chunk_size: windows started per chunk; bounds memory at ``O(chunk_size + 4**k)``.

    Returns:
      int64 array ``(4**k,)`` of counts, indexed as in :func:`kmer_words`.
    """
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    if isinstance(sequences, np.ndarray):
        sequences = [sequences]
    counts = np.zeros(4**k, dtype=np.int64)
    for seq in sequences:
        n = seq.shape[0]
        for start in range(0, max(n - k + 1, 0), chunk_size):
            # k - 1 extra bases so the last windows started in this chunk are complete.
            index, valid = kmer_indices(np.asarray(seq[start: start + chunk_size + k - 1]), k)
            counts += np.bincount(index[valid], minlength=4**k)
    return counts


def uniform_expected(counts: np.ndarray) -> np.ndarray:
    """Expected counts if all ``4**k`` words were equally likely: float64 ``(4**k,)``."""
    return np.full(counts.shape, counts.sum() / counts.size, dtype=np.float64)


def markov_expected(counts: np.ndarray, counts_km1: np.ndarray, counts_km2: np.ndarray | None) -> np.ndarray:
    """Expected k-mer counts from the (k-1)-mer counts (maximal-order Markov model).

    Args:
      counts: observed k-mer counts ``(4**k,)``, ``k >= 2`` (only its size is used).
      counts_km1: (k-1)-mer counts ``(4**(k-1),)``.
      counts_km2: (k-2)-mer counts ``(4**(k-2),)``; None for ``k = 2`` (the empty middle word,
        whose count is the total of ``counts_km1``).

    Returns:
      float64 ``(4**k,)``: ``count(w[:-1]) * count(w[1:]) / count(w[1:-1])``, 0 where the middle
      word never occurs.
    """
    size = counts.shape[0]
    k = int(round(np.log(size) / np.log(4)))
    if k < 2:
        raise ValueError("the Markov expectation needs k >= 2")
    idx = np.arange(size)
    prefix = counts_km1[idx >> 2].astype(np.float64)
    suffix = counts_km1[idx & (4 ** (k - 1) - 1)].astype(np.float64)
    if k == 2:
        middle = np.full(size, float(counts_km1.sum()))
    else:
        middle = counts_km2[(idx >> 2) & (4 ** (k - 2) - 1)].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(middle > 0, prefix * suffix / np.where(middle > 0, middle, 1.0), 0.0)


def log_ratio(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``log2((observed + 0.5) / (expected + 0.5))``: the pseudo-count keeps zeros finite and
    stops rare words with tiny expectations from dominating the extremes."""
    return np.log2((observed + 0.5) / (expected + 0.5))


def render_kmers(sequences: Mapping[str, np.ndarray], out: str | Path, ks: Sequence[int], *,
                 label: str = "", n_labels: int = 5, max_size: int = images.DEFAULT_MAX_SIZE,
                 chunk_size: int = DEFAULT_CHUNK) -> images.Rendered:
    """Plots observed k-mer counts against both expectations, one panel per k.

    Each dot is a k-mer: x = log2(observed / uniform expectation), y = log2(observed / Markov
    expectation from (k-1)-mers). The ``n_labels`` most over- and under-represented words (by y;
    by x for k = 1, where y is undefined) are labelled.

    Args:
      sequences: record name -> token array; all records are counted together.
      out: PNG path.
      ks: the k values (each ``1..MAX_K``).
      label: what was counted, for the title (e.g. the FASTA name).
      n_labels: words labelled at each end.
      max_size: largest width/height of the figure in pixels.
      chunk_size: see :func:`count_kmers`.

    Returns:
      a :class:`~jaxseq.visualize.images.Rendered` (no panels: ``scales`` and ``boxes`` empty).
    """
    ks = sorted(set(ks))
    needed = sorted(set(ks) | {k - 1 for k in ks if k >= 2} | {k - 2 for k in ks if k >= 3})
    counts = {k: count_kmers(sequences.values(), k, chunk_size) for k in needed if k >= 1}

    ncols = min(3, len(ks))
    nrows = -(-len(ks) // ncols)
    width_in, height_in = 4.6 * ncols, 3.9 * nrows + 0.7
    dpi = min(images.DPI, max_size / max(width_in, height_in))
    fig = Figure(figsize=(width_in, height_in), dpi=dpi, facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    total_bases = sum(int(s.shape[0]) for s in sequences.values())
    what = f"{label} ({len(sequences)} record{'s' if len(sequences) != 1 else ''}, {total_bases:,} bp)"
    suptitle = images.wrap_title([
        f"k-mer frequencies of {what}; windows with N skipped",
        "x: observed / uniform expectation  \u00b7  y: observed / expectation from (k\u22121)-mer counts (Markov)",
        f"red: {n_labels} most over-, blue: {n_labels} most under-represented words (by y)",
    ], int(width_in * images.DPI), keep_first=False)
    fig.suptitle("\n".join(suptitle), fontsize=9.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(ks):]:
        ax.set_visible(False)
    labels = []
    for ax, k in zip(axes.flat, ks):
        observed = counts[k]
        words = kmer_words(k)
        x = log_ratio(observed, uniform_expected(observed))
        ax.set_title(f"k = {k}: {observed.size:,} words, {int(observed.sum()):,} counted", fontsize=10)
        ax.tick_params(labelsize=8)
        if k == 1:
            # Nothing to condition on: a bar per base against the uniform expectation says it all.
            colours = np.where(x >= 0, "#d62728", "#1f77b4")
            ax.bar(words, x, color=colours)
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set_ylabel("log2 observed / uniform", fontsize=9)
            ax.set_xlabel("base (Markov expectation undefined for k = 1)", fontsize=9)
            continue
        y = log_ratio(observed, markov_expected(observed, counts[k - 1], counts.get(k - 2)))
        size = max(3.0, 40.0 / np.sqrt(observed.size))
        ax.scatter(x, y, s=size, c="0.45", alpha=0.6 if observed.size > 256 else 0.9, linewidths=0)
        ax.axhline(0, color="0.7", lw=0.8, zorder=0)
        ax.axvline(0, color="0.7", lw=0.8, zorder=0)
        order = np.argsort(y, kind="stable")
        n = min(n_labels, observed.size // 2)
        top, bottom = order[::-1][:n], order[:n]
        ax.scatter(x[top], y[top], s=size * 3 + 6, c="#d62728", linewidths=0, zorder=3)
        ax.scatter(x[bottom], y[bottom], s=size * 3 + 6, c="#1f77b4", linewidths=0, zorder=3)
        labels += _label_points(ax, x, y, top, words, "#b01c1c", above=True)
        labels += _label_points(ax, x, y, bottom, words, "#155a8a", above=False)
        ax.set_xlabel("log2 observed / uniform", fontsize=9)
        ax.set_ylabel("log2 observed / Markov", fontsize=9)
        ax.margins(0.15, 0.3)
    _declutter(fig, labels)
    return images.finish(fig, out)


def _label_points(ax, x, y, chosen, words, colour, above: bool) -> list:
    """Labels chosen points (a thin leader line links a label pushed away from its point)."""
    texts = []
    for i in sorted(chosen, key=lambda i: x[i]):
        texts.append((ax.annotate(
            words[i], (x[i], y[i]), xytext=(4, 5 if above else -5), textcoords="offset points",
            fontsize=7.5, color=colour, ha="left", va="bottom" if above else "top", family="monospace",
            arrowprops=dict(arrowstyle="-", lw=0.4, color=colour, shrinkA=0, shrinkB=2)), above))
        # Labels move after layout (see _declutter); they must not resize the axes.
        texts[-1][0].set_in_layout(False)
    return texts


def _declutter(fig, labels, step: float = 7.0, tries: int = 12) -> None:
    """Moves labels away from their point (up for over-, down for under-represented words) until
    they stop overlapping the labels already placed: extreme words often sit close together."""
    fig.canvas.draw()  # settles the layout so text extents are final
    renderer = fig.canvas.get_renderer()

    def extent(text):
        # Text's own box: Annotation.get_window_extent would include the leader line.
        return Text.get_window_extent(text, renderer)

    placed = []
    for text, above in labels:
        for _ in range(tries):
            box = extent(text)
            if not any(box.overlaps(other) for other in placed):
                break
            dx, dy = text.xyann
            text.xyann = (dx, dy + (step if above else -step))
        placed.append(extent(text))
    # Labels stacked beyond the axes would run into the panel title: make room by widening ylim
    # (labels are offset in points from their data point, so they come down with it).
    for ax in {text.axes for text, _ in labels}:
        boxes = [extent(text) for text, _ in labels if text.axes is ax]
        low, high = ax.get_ylim()
        per_pixel = (high - low) / ax.bbox.height
        over = max(b.y1 for b in boxes) - ax.bbox.y1 + 4
        under = ax.bbox.y0 - min(b.y0 for b in boxes) + 4
        # Each pixel of overflow needs a bit more than a pixel of range, since the axes compress.
        ax.set_ylim(low - max(under, 0) * per_pixel * 1.3, high + max(over, 0) * per_pixel * 1.3)
