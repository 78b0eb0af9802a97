"""Window tables: where windows may start in split intervals, in which order they are visited, and reading them.

A *segment* is ``count`` window starts ``first, first + step, ...`` inside one interval of one record;
a table of segments addresses every window by one integer (see :mod:`jaxseq.loader`, which samples and
batches them). N filtering is exact and computed from runs of N found by one chunked scan, so memory stays
flat in genome size. Numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from jaxseq import tokens as tok
from jaxseq.splits import Interval


class LoaderError(ValueError):
    """A loader setting cannot give windows (bad argument, or no window passes the N filter)."""


# Bases per chunk of the N scan: big enough for numpy to run at memory speed, small enough (a few MB of
# temporaries) to keep memory flat for a 1 Gb genome.
SCAN_CHUNK = 1 << 22


# Feistel rounds of the per-epoch tile permutation; 6 rounds mix well enough for a data order.
FEISTEL_ROUNDS = 6


# Distinguishes the tile-order seed stream from the per-batch stream derived from the same seed.
TILE_ORDER_SALT = 0x7E1E


class WindowTable:
    """Segments of window starts ``first + k * step`` (``0 <= k < count``) in record ``record``."""

    def __init__(self, record: np.ndarray, first: np.ndarray, count: np.ndarray, step: int):
        keep = count > 0
        self.record = np.asarray(record, dtype=np.int32)[keep]
        self.first = np.asarray(first, dtype=np.int64)[keep]
        self.count = np.asarray(count, dtype=np.int64)[keep]
        self.step = int(step)
        self.cum = np.cumsum(self.count)
        self.total = int(self.cum[-1]) if self.cum.size else 0

    def lookup(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window ids ``(n,)`` int64 in ``[0, total)`` -> record index int32 ``(n,)``, start int64 ``(n,)``."""
        segment = np.searchsorted(self.cum, g, side="right")
        offset = g - (self.cum[segment] - self.count[segment])
        return self.record[segment], self.first[segment] + offset * self.step


def train_table(tokens, names, spans, window_len: int, step: int, max_n: int) -> WindowTable:
    """Valid starts (N count <= max_n) on each interval's grid ``start + k * step``."""
    records, firsts, counts = [], [], []
    by_record: dict[int, list[tuple[int, int]]] = {}
    for record, start, end in spans:
        if end - start >= window_len:
            by_record.setdefault(record, []).append((start, end))
    for record in sorted(by_record):
        seq = tokens[names[record]]
        record_spans = by_record[record]
        if max_n < window_len:
            # One scan over the record's covered stretch; per-interval runs are cut from it below.
            run_starts, run_ends = scan_n_runs(
                seq, min(s for s, _ in record_spans), max(e for _, e in record_spans)
            )
        else:
            run_starts = run_ends = np.zeros(0, dtype=np.int64)
        for start, end in record_spans:
            lo_run = np.searchsorted(run_ends, start, side="right")
            hi_run = np.searchsorted(run_starts, end, side="left")
            rs = np.clip(run_starts[lo_run:hi_run], start, end)
            re = np.clip(run_ends[lo_run:hi_run], start, end)
            lo, hi = valid_start_ranges(start, end, window_len, rs, re, max_n)
            # First grid point at or after lo, and how many grid points fall in [lo, hi).
            first = start + -(-(lo - start) // step) * step
            count = np.where(first < hi, (hi - 1 - first) // step + 1, 0)
            records.append(np.full(lo.size, record, dtype=np.int32))
            firsts.append(first)
            counts.append(count)
    if not records:
        return WindowTable(np.zeros(0), np.zeros(0), np.zeros(0), step)
    return WindowTable(np.concatenate(records), np.concatenate(firsts), np.concatenate(counts), step)


def eval_table(tokens, names, intervals, window_len: int, stride: int | None) -> WindowTable:
    step = window_len if stride is None else positive_int("stride", stride)
    spans = resolve_intervals(tokens, intervals)
    records = np.array([r for r, _, _ in spans], dtype=np.int32)
    starts = np.array([s for _, s, _ in spans], dtype=np.int64)
    ends = np.array([e for _, _, e in spans], dtype=np.int64)
    counts = np.where(ends - starts >= window_len, (ends - starts - window_len) // step + 1, 0)
    return WindowTable(records, starts, counts, step)


def valid_start_ranges(
    start: int, end: int, window_len: int, run_starts: np.ndarray, run_ends: np.ndarray, max_n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Starts ``s`` in ``[start, end - L]`` whose window ``[s, s + L)`` holds at most ``max_n`` N.

    The N count ``f(s)`` is piecewise linear in ``s`` with slope in {-1, 0, +1}; the slope only changes
    where ``s`` or ``s + L`` crosses a run boundary. Between those breakpoints ``f`` is monotone, so the
    valid starts of each piece are a prefix, a suffix, all or none of it: exact in O(runs log runs).

    Args:
      start, end: the interval ``[start, end)``.
      window_len: ``L``.
      run_starts, run_ends: int64 ``(R,)``, sorted disjoint runs of N clipped to the interval.
      max_n: largest allowed N count per window.

    Returns:
      ``(lo, hi)`` int64 ``(K,)``: the valid starts are the union of ``[lo[k], hi[k])``, sorted, disjoint.
    """
    stop = end - window_len + 1  # one past the last start
    if stop <= start:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if run_starts.size == 0 or max_n >= window_len:
        return np.array([start], dtype=np.int64), np.array([stop], dtype=np.int64)
    prefix = np.concatenate([[0], np.cumsum(run_ends - run_starts)])

    def n_before(x):  # number of N positions < x
        k = np.searchsorted(run_starts, x, side="left")
        last = np.maximum(k - 1, 0)
        return np.where(k > 0, prefix[last] + np.minimum(x, run_ends[last]) - run_starts[last], 0)

    breaks = np.concatenate(
        [[start, stop], run_starts, run_ends, run_starts - window_len, run_ends - window_len]
    )
    breaks = np.unique(np.clip(breaks, start, stop))
    p, q = breaks[:-1], breaks[1:]
    f0 = n_before(p + window_len) - n_before(p)
    slope = (n_before(p + window_len + 1) - n_before(p + window_len)) - (n_before(p + 1) - n_before(p))
    lo = np.where(slope < 0, p + np.maximum(f0 - max_n, 0), p)
    hi = np.where(slope > 0, np.minimum(q, p + (max_n - f0) + 1), q)
    keep = (lo < hi) & ((f0 <= max_n) | (slope < 0))
    lo, hi = lo[keep], hi[keep]
    if lo.size == 0:
        return lo, hi
    # Merge touching pieces so the table stays small.
    opens = np.concatenate([[True], lo[1:] != hi[:-1]])
    closes = np.concatenate([opens[1:], [True]])
    return lo[opens], hi[closes]


def scan_n_runs(seq: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of N (token >= 4) in ``seq[start:end]``, read in chunks.

    Returns:
      ``(run_starts, run_ends)`` int64 ``(R,)``, absolute, half-open, sorted and disjoint.
    """
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    inside = False
    for c0 in range(start, end, SCAN_CHUNK):
        c1 = min(c0 + SCAN_CHUNK, end)
        chunk = np.asarray(seq[c0:c1])
        # max() is a cheap SIMD reduction; most chunks of a real genome have no N and skip the rest.
        if chunk.max() < tok.N:
            if inside:
                ends.append(np.array([c0], dtype=np.int64))
                inside = False
            continue
        is_n = (chunk >= tok.N).view(np.int8)
        edges = np.diff(is_n, prepend=np.int8(inside))
        starts.append(np.flatnonzero(edges == 1).astype(np.int64) + c0)
        ends.append(np.flatnonzero(edges == -1).astype(np.int64) + c0)
        inside = bool(is_n[-1])
    if inside:
        ends.append(np.array([end], dtype=np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(starts) if starts else empty), (np.concatenate(ends) if ends else empty)


def gather(views: list, record: np.ndarray, starts: np.ndarray, window_len: int, dtype=np.uint8) -> np.ndarray:
    """Copies windows ``(n, L)`` from per-record sliding-window views, one fancy index per record."""
    if record.size and (record == record[0]).all():
        # Fancy indexing the strided view copies L contiguous bytes per row and never densifies the
        # view (np.take would, materialising L copies of the record).
        return np.ascontiguousarray(views[record[0]][starts], dtype=dtype)
    out = np.empty((record.size, window_len), dtype=dtype)
    order = np.argsort(record, kind="stable")
    sorted_records = record[order]
    bounds = np.flatnonzero(np.diff(sorted_records)) + 1
    for rows in np.split(order, bounds):
        if rows.size:
            out[rows] = views[record[rows[0]]][starts[rows]]
    return out


def augment_inplace(windows: np.ndarray, reverse: np.ndarray, complement: np.ndarray) -> None:
    """Reverses and/or complements rows of a uint8 ``(B, L)`` batch in place (per-row bool flags ``(B,)``)."""
    if reverse.any():
        windows[reverse] = windows[reverse, ::-1]
    if complement.any():
        # For bases b < 4 the complement 3 - b equals b ^ 3; N and MASK (>= 4) must stay themselves.
        flip = (windows < tok.N).view(np.uint8)
        flip *= (complement.astype(np.uint8) * np.uint8(3))[:, None]
        windows ^= flip


def tile_ids(positions: np.ndarray, total: int, seed: int) -> np.ndarray:
    """Global tile positions ``(n,)`` int64 -> tile ids: epoch ``pos // total`` visits a permutation."""
    epochs = positions // total
    offsets = positions % total
    ids = np.empty_like(positions)
    for epoch in np.unique(epochs).tolist():
        rows = epochs == epoch
        keys = np.random.SeedSequence([seed, TILE_ORDER_SALT, epoch]).generate_state(FEISTEL_ROUNDS, np.uint64)
        ids[rows] = permute(offsets[rows], total, keys)
    return ids


def permute(x: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """A keyed bijection of ``[0, n)`` (Feistel network + cycle walking) applied to int64 ``x``.

    Stateless, so a shuffled epoch over millions of tiles needs no stored permutation (flat memory) and
    batch ``i`` of an epoch is computed directly from ``i`` (exact resume).
    """
    bits = max(2, int(n - 1).bit_length())
    bits += bits & 1
    half = bits // 2
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)

    def rounds(v: np.ndarray) -> np.ndarray:
        left, right = v >> shift, v & mask
        for key in keys:
            left, right = right, left ^ (mix64(right ^ key) & mask)
        return (left << shift) | right

    y = rounds(x.astype(np.uint64))
    # The domain is < 4n, so a cycle re-enters [0, n) after a few steps on average.
    outside = y >= np.uint64(n)
    while outside.any():
        y[outside] = rounds(y[outside])
        outside = y >= np.uint64(n)
    return y.astype(np.int64)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 wrap-around arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def eval_iterator(table, views, mask_views, window_len, batch_size, rows) -> Iterator[dict[str, np.ndarray]]:
    lo, hi = rows
    local = np.arange(lo, hi, dtype=np.int64)
    for batch in range(-(-table.total // batch_size)):
        ids = batch * batch_size + local
        real = ids < table.total
        record = np.full(local.size, -1, dtype=np.int32)
        starts = np.full(local.size, -1, dtype=np.int64)
        windows = np.full((local.size, window_len), tok.N, dtype=np.uint8)
        out = {"weights": real.astype(np.float32)}
        if real.any():
            record[real], starts[real] = table.lookup(ids[real])
            windows[real] = gather(views, record[real], starts[real], window_len)
        out.update(tokens=windows.view(np.int8), record=record, start=starts)
        if mask_views is not None:
            soft = np.zeros((local.size, window_len), dtype=bool)
            if real.any():
                soft[real] = gather(mask_views, record[real], starts[real], window_len, dtype=bool)
            out["soft_mask"] = soft
        yield out


def resolve_intervals(tokens: Mapping[str, np.ndarray], intervals: Sequence[Interval]) -> list[tuple[int, int, int]]:
    """Intervals -> ``(record index, start, end)`` after checking them against the records."""
    index = {name: i for i, name in enumerate(tokens)}
    spans = []
    for interval in intervals:
        record, start, end = interval
        if record not in index:
            known = list(index)
            raise LoaderError(f"interval {tuple(interval)} names unknown record {record!r}; known: {known[:10]}")
        length = len(tokens[record])
        if not 0 <= start <= end <= length:
            raise LoaderError(f"interval {tuple(interval)} is outside record {record!r} of length {length}")
        spans.append((index[record], int(start), int(end)))
    return spans


def record_views(arrays: Mapping[str, np.ndarray], names: list[str], window_len: int) -> list:
    """Per record, a zero-copy ``(length - L + 1, L)`` view (None if the record is shorter than L)."""
    views = []
    for name in names:
        array = np.asarray(arrays[name])
        views.append(sliding_window_view(array, window_len) if array.shape[0] >= window_len else None)
    return views


def max_n_count(max_n_fraction: float, window_len: int) -> int:
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from rejecting a window with exactly 29 N.
    return int(math.floor(max_n_fraction * window_len + 1e-9))


def no_window_message(tokens, names, spans, window_len: int, max_n_fraction: float) -> str:
    long_enough = [(r, s, e) for r, s, e in spans if e - s >= window_len]
    if not long_enough:
        longest = max((e - s for _, s, e in spans), default=0)
        return (
            f"no window: none of the {len(spans)} interval(s) is at least window_len={window_len} bases long "
            f"(longest {longest}); lower window_len"
        )
    bases = sum(e - s for _, s, e in long_enough)
    return (
        f"no window of window_len={window_len} with N fraction <= max_n_fraction={max_n_fraction} in "
        f"{len(long_enough)} interval(s) of {bases} bases; raise max_n_fraction or lower window_len"
    )


def fingerprint(tokens: Mapping[str, np.ndarray], intervals: Sequence[Interval]) -> str:
    """Short hash of record names/lengths and intervals: a resumed loader must see the same data."""
    payload = json.dumps(
        [[[name, int(len(array))] for name, array in tokens.items()], [[r, int(s), int(e)] for r, s, e in intervals]]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def jsonable(value):
    # A state that went through JSON has lists for tuples; compare in that form.
    return json.loads(json.dumps(value))


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise LoaderError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
