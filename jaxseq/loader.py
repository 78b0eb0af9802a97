"""Windows of tokens from split intervals: sampling, N filtering, augmentation, batching, prefetch.

Numpy only (never imports jax), so it runs in a plain host thread next to the train step.

Every window is described by an arithmetic progression table: a *segment* is ``count`` window starts
``first, first + step, ...`` inside one interval of one record. The table is tiny (about one segment per
interval plus a few per run of N), so a window is addressed by one integer ``g`` in ``[0, total)``:

* random training windows draw ``g`` uniformly: this is sampling an interval with probability
  proportional to its number of valid starts, then a uniform start within it;
* strided training visits ``g`` through a seeded permutation per epoch;
* evaluation visits ``g = 0, 1, 2, ...`` in order.

N filtering is exact: the starts whose window holds more than ``max_n_fraction`` N form a union of
ranges that is computed from the runs of N (found by one chunked scan at construction). Drawing
uniformly from the remaining starts has the distribution of rejection sampling (redraw a fresh uniform
start until it passes) without its loop, so no position is favoured for sitting next to an N run, and a
split without any valid window is an error at construction instead of an endless loop. Memory stays flat
in genome size: no per-base array is ever built, only chunk-sized temporaries during the scan.

Each batch is a pure function of ``(seed, config, batch_index)``, so the prefetch thread's timing can never
change what training sees, and :meth:`TrainLoader.state_dict` is just the number of batches consumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from jaxseq import tokens as tok
from jaxseq.splits import Interval

#: Augmentation name -> (reverse, complement).
AUGMENTATIONS: dict[str, tuple[bool, bool]] = {
    "identity": (False, False),
    "reverse": (True, False),
    "complement": (False, True),
    "reverse_complement": (True, True),
}

# Bases per chunk of the N scan: big enough for numpy to run at memory speed, small enough (a few MB of
# temporaries) to keep memory flat for a 1 Gb genome.
_SCAN_CHUNK = 1 << 22
# Feistel rounds of the per-epoch tile permutation; 6 rounds mix well enough for a data order.
_FEISTEL_ROUNDS = 6
# Distinguishes the tile-order seed stream from the per-batch stream derived from the same seed.
_TILE_ORDER_SALT = 0x7E1E


class LoaderError(ValueError):
    """A loader setting cannot give windows (bad argument, or no window passes the N filter)."""


class TrainLoader:
    """Infinite iterator of training batches, prefetched by a background daemon thread.

    Batches are ``{"tokens": int8 (B/P, L), "weights": float32 (B/P,)}`` (``P = process_count``; weights are
    all ones). Batch ``i`` depends only on ``(seed, config, i)``: resuming from :meth:`state_dict` gives
    exactly the batches an uninterrupted run would, and the global batch (all processes' rows stacked in
    process order) does not depend on ``process_count``.

    Example::

        with TrainLoader(genome.as_mapping(), splits["train"], window_len=64, batch_size=1024, seed=0) as loader:
            batch = next(loader)
    """

    def __init__(
        self,
        tokens: Mapping[str, np.ndarray],
        intervals: Sequence[Interval],
        *,
        window_len: int,
        batch_size: int,
        seed: int,
        augment: Sequence[str] = ("identity", "reverse_complement"),
        max_n_fraction: float = 0.0,
        stride: int | None = None,
        prefetch: int = 2,
        process_index: int = 0,
        process_count: int = 1,
    ):
        """Builds the window table (one chunked N scan over the intervals); starts no thread yet.

        Args:
          tokens: record name -> uint8 tokens ``(length,)`` in ``0..4`` (e.g. memmaps from ``Genome.as_mapping``).
          intervals: the train split's intervals; windows lie wholly inside one interval.
          window_len: window length ``L`` in bases.
          batch_size: global batch size ``B`` (all processes together); must be divisible by ``process_count``.
          seed: non-negative integer; the whole batch sequence is a function of it and the config.
          augment: non-empty subset of ``AUGMENTATIONS``; each window gets one of them, uniformly.
          max_n_fraction: windows with a larger fraction of N are never drawn; 0.0 means no N at all.
          stride: ``None`` draws uniform random starts; an int tiles each interval at ``start + k * stride``
            and visits all tiles once per epoch in a seeded shuffled order.
          prefetch: batches the background thread keeps ready; 0 generates in the caller's thread.
          process_index: this process's index ``p``; it yields rows ``[p*B/P, (p+1)*B/P)`` of each batch.
          process_count: number of processes ``P``.

        Raises:
          LoaderError: bad arguments, an interval outside its record, or no window in any interval that
            satisfies ``max_n_fraction`` (including an all-N genome).
        """
        self._window_len = _positive_int("window_len", window_len)
        self._batch_size = _positive_int("batch_size", batch_size)
        self._rows = _process_rows(self._batch_size, process_index, process_count)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise LoaderError(f"seed must be a non-negative integer, got {seed!r}")
        self._seed = int(seed)
        self._augment = _check_augment(augment)
        if not 0.0 <= float(max_n_fraction) <= 1.0:
            raise LoaderError(f"max_n_fraction must be in [0, 1], got {max_n_fraction}")
        self._max_n_fraction = float(max_n_fraction)
        self._stride = None if stride is None else _positive_int("stride", stride)
        self._prefetch = int(prefetch)
        if self._prefetch < 0:
            raise LoaderError(f"prefetch must be >= 0, got {prefetch}")

        names = list(tokens)
        spans = _resolve_intervals(tokens, intervals)
        max_n = _max_n_count(self._max_n_fraction, self._window_len)
        table = _train_table(tokens, names, spans, self._window_len, self._stride or 1, max_n)
        if table.total == 0:
            raise LoaderError(_no_window_message(tokens, names, spans, self._window_len, self._max_n_fraction))
        self._source = _BatchSource(
            _record_views(tokens, names, self._window_len),
            table,
            window_len=self._window_len,
            batch_size=self._batch_size,
            rows=self._rows,
            seed=self._seed,
            augment=self._augment,
            strided=self._stride is not None,
        )
        self._config = {
            "seed": self._seed,
            "window_len": self._window_len,
            "batch_size": self._batch_size,
            "augment": list(self._augment),
            "max_n_fraction": self._max_n_fraction,
            "stride": self._stride,
            "data": _fingerprint(tokens, intervals),
        }
        self._index = 0
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._queue: queue.Queue | None = None
        self._closed = False

    @property
    def num_windows(self) -> int:
        """Distinct windows available: valid starts (random mode) or valid tiles (one epoch, strided mode)."""
        return self._source.table.total

    @property
    def batch_index(self) -> int:
        """Index of the next batch :meth:`__next__` returns (= batches consumed)."""
        return self._index

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """Returns the next batch.

        Returns:
          ``{"tokens": int8 (B/P, L), "weights": float32 (B/P,)}``.
        """
        if self._closed:
            raise RuntimeError("TrainLoader is closed")
        if self._prefetch == 0:
            batch = self._source.make(self._index)
        else:
            if self._thread is None:
                self._start_thread()
            while True:
                try:
                    index, batch = self._queue.get(timeout=1.0)
                    break
                except queue.Empty:
                    if not self._thread.is_alive():
                        raise RuntimeError("TrainLoader prefetch thread stopped unexpectedly") from None
            if index is None:  # the producer failed: surface its exception here
                self._stop_thread()
                raise batch
            # Batches are produced in order from self._index, so this only fails on a logic error.
            assert index == self._index, (index, self._index)
        self._index += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Returns the resumable state: batches consumed (not prefetched) plus the config it applies to.

        Returns:
          JSON-serialisable dict ``{"batch_index": int, "seed", "window_len", "batch_size", "augment",
          "max_n_fraction", "stride", "data"}`` (``data`` fingerprints records and intervals).
        """
        return {"batch_index": self._index, **self._config}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`; the next batch is the one the saved loader would have returned next.

        ``process_index``/``process_count`` may differ from the saving run: the global batches do not
        depend on them.

        Raises:
          LoaderError: the state was saved with a different config or data (names the differing keys).
        """
        differing = [key for key, value in self._config.items() if _jsonable(state.get(key)) != _jsonable(value)]
        if differing:
            details = ", ".join(f"{k}: saved {state.get(k)!r} vs now {self._config[k]!r}" for k in differing)
            raise LoaderError(f"loader state does not match this loader ({details})")
        index = state.get("batch_index")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise LoaderError(f"loader state has invalid batch_index {index!r}")
        # Prefetched batches belong to the old position; they are dropped and regenerated on demand.
        self._stop_thread()
        self._index = int(index)

    def close(self) -> None:
        """Stops the prefetch thread; further ``next()`` calls raise. Safe to call twice."""
        self._stop_thread()
        self._closed = True

    def __enter__(self) -> "TrainLoader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        # The thread only references the batch source, never the loader, so dropping the loader lands here.
        try:
            self._stop_thread()
        except Exception:
            pass

    def _start_thread(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self._prefetch)
        self._thread = threading.Thread(
            target=_produce,
            args=(self._source, self._index, self._stop, self._queue),
            name="jaxseq-loader",
            daemon=True,  # never keeps the interpreter alive
        )
        self._thread.start()

    def _stop_thread(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=10.0)
        self._thread = self._stop = self._queue = None


def eval_batches(
    tokens: Mapping[str, np.ndarray],
    intervals: Sequence[Interval],
    *,
    window_len: int,
    batch_size: int,
    stride: int | None = None,
    soft_mask: Mapping[str, np.ndarray] | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic, unshuffled tiling of every interval, each window exactly once.

    Windows start at ``interval.start + k * stride`` while they fit in the interval (intervals shorter
    than ``window_len`` give none; the last ``< stride`` bases of an interval may be left uncovered). All
    windows are kept whatever their N content: the loss masks N positions. The last global batch is
    padded with rows of N tokens, weight 0, record and start -1.

    Args:
      tokens: record name -> uint8 tokens ``(length,)``.
      intervals: the valid or test split's intervals, tiled in the given order.
      window_len: window length ``L``.
      batch_size: global batch size ``B`` (the caller's choice; training uses twice its batch size).
      stride: distance between window starts; defaults to ``window_len`` (non-overlapping tiles).
      soft_mask: optional record name -> bool/uint8 ``(length,)``, 1 where the FASTA was lowercase.
      process_index: this process's index ``p``; it yields rows ``[p*B/P, (p+1)*B/P)`` of each batch.
      process_count: number of processes ``P``; every process yields the same number of batches.

    Returns:
      An iterator of dicts: ``"tokens"`` int8 ``(B/P, L)``, ``"weights"`` float32 ``(B/P,)`` (1 real, 0
      padding), ``"record"`` int32 ``(B/P,)`` index into ``list(tokens)``, ``"start"`` int64 ``(B/P,)``, and
      ``"soft_mask"`` bool ``(B/P, L)`` when ``soft_mask`` is given.

    Raises:
      LoaderError: bad arguments (raised at the call, not at the first ``next``), or no window at all.
    """
    window_len = _positive_int("window_len", window_len)
    batch_size = _positive_int("batch_size", batch_size)
    rows = _process_rows(batch_size, process_index, process_count)
    names = list(tokens)
    table = _eval_table(tokens, names, intervals, window_len, stride)
    if table.total == 0:
        raise LoaderError(f"no evaluation window: no interval is at least window_len={window_len} bases long")
    views = _record_views(tokens, names, window_len)
    mask_views = None
    if soft_mask is not None:
        missing = [name for name in names if name not in soft_mask]
        if missing:
            raise LoaderError(f"soft_mask lacks record(s) {missing[:5]}")
        mask_views = _record_views(soft_mask, names, window_len)
    return _eval_iterator(table, views, mask_views, window_len, batch_size, rows)


def count_eval_windows(
    tokens: Mapping[str, np.ndarray],
    intervals: Sequence[Interval],
    *,
    window_len: int,
    batch_size: int | None = None,
    stride: int | None = None,
    soft_mask: Mapping[str, np.ndarray] | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> int:
    """Number of real (unpadded) windows :func:`eval_batches` yields over all processes.

    Takes the same arguments as :func:`eval_batches` so a caller can pass the same keywords; only
    ``tokens``, ``intervals``, ``window_len`` and ``stride`` affect the count.
    """
    del batch_size, soft_mask, process_index, process_count
    window_len = _positive_int("window_len", window_len)
    return _eval_table(tokens, list(tokens), intervals, window_len, stride).total


# --------------------------------------------------------------------------------------------------
# Window tables


class _WindowTable:
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


def _train_table(tokens, names, spans, window_len: int, step: int, max_n: int) -> _WindowTable:
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
            run_starts, run_ends = _scan_n_runs(
                seq, min(s for s, _ in record_spans), max(e for _, e in record_spans)
            )
        else:
            run_starts = run_ends = np.zeros(0, dtype=np.int64)
        for start, end in record_spans:
            lo_run = np.searchsorted(run_ends, start, side="right")
            hi_run = np.searchsorted(run_starts, end, side="left")
            rs = np.clip(run_starts[lo_run:hi_run], start, end)
            re = np.clip(run_ends[lo_run:hi_run], start, end)
            lo, hi = _valid_start_ranges(start, end, window_len, rs, re, max_n)
            # First grid point at or after lo, and how many grid points fall in [lo, hi).
            first = start + -(-(lo - start) // step) * step
            count = np.where(first < hi, (hi - 1 - first) // step + 1, 0)
            records.append(np.full(lo.size, record, dtype=np.int32))
            firsts.append(first)
            counts.append(count)
    if not records:
        return _WindowTable(np.zeros(0), np.zeros(0), np.zeros(0), step)
    return _WindowTable(np.concatenate(records), np.concatenate(firsts), np.concatenate(counts), step)


def _eval_table(tokens, names, intervals, window_len: int, stride: int | None) -> _WindowTable:
    step = window_len if stride is None else _positive_int("stride", stride)
    spans = _resolve_intervals(tokens, intervals)
    records = np.array([r for r, _, _ in spans], dtype=np.int32)
    starts = np.array([s for _, s, _ in spans], dtype=np.int64)
    ends = np.array([e for _, _, e in spans], dtype=np.int64)
    counts = np.where(ends - starts >= window_len, (ends - starts - window_len) // step + 1, 0)
    return _WindowTable(records, starts, counts, step)


def _valid_start_ranges(
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


def _scan_n_runs(seq: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of N (token >= 4) in ``seq[start:end]``, read in chunks.

    Returns:
      ``(run_starts, run_ends)`` int64 ``(R,)``, absolute, half-open, sorted and disjoint.
    """
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    inside = False
    for c0 in range(start, end, _SCAN_CHUNK):
        c1 = min(c0 + _SCAN_CHUNK, end)
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


# --------------------------------------------------------------------------------------------------
# Batch generation


class _BatchSource:
    """Immutable recipe for batch ``i``; shared read-only with the prefetch thread."""

    def __init__(self, views, table: _WindowTable, *, window_len, batch_size, rows, seed, augment, strided):
        self.views = views
        self.table = table
        self.window_len = window_len
        self.batch_size = batch_size
        self.rows = rows
        self.seed = seed
        self.strided = strided
        self.reverse = np.array([AUGMENTATIONS[name][0] for name in augment])
        self.complement = np.array([AUGMENTATIONS[name][1] for name in augment])

    def make(self, index: int) -> dict[str, np.ndarray]:
        # One generator per batch, keyed by (seed, index): batches can be made in any order or thread.
        rng = np.random.default_rng([self.seed, index])
        size = self.batch_size
        if self.strided:
            ids = _tile_ids(index * size + np.arange(size, dtype=np.int64), self.table.total, self.seed)
        else:
            ids = rng.integers(0, self.table.total, size=size, dtype=np.int64)
        # Drawn for the whole global batch even if unused, so every process slices the same choices.
        choice = rng.integers(0, self.reverse.size, size=size) if self.reverse.size > 1 else np.zeros(size, np.intp)
        lo, hi = self.rows
        record, starts = self.table.lookup(ids[lo:hi])
        windows = _gather(self.views, record, starts, self.window_len)
        _augment_inplace(windows, self.reverse[choice[lo:hi]], self.complement[choice[lo:hi]])
        return {"tokens": windows.view(np.int8), "weights": np.ones(hi - lo, dtype=np.float32)}


def _produce(source: _BatchSource, index: int, stop: threading.Event, out: queue.Queue) -> None:
    try:
        while not stop.is_set():
            item = (index, source.make(index))
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            index += 1
    except BaseException as error:  # handed to the consumer, which re-raises it
        while not stop.is_set():
            try:
                out.put((None, error), timeout=0.05)
                return
            except queue.Full:
                continue


def _gather(views: list, record: np.ndarray, starts: np.ndarray, window_len: int, dtype=np.uint8) -> np.ndarray:
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


def _augment_inplace(windows: np.ndarray, reverse: np.ndarray, complement: np.ndarray) -> None:
    """Reverses and/or complements rows of a uint8 ``(B, L)`` batch in place (per-row bool flags ``(B,)``)."""
    if reverse.any():
        windows[reverse] = windows[reverse, ::-1]
    if complement.any():
        # For bases b < 4 the complement 3 - b equals b ^ 3; N and MASK (>= 4) must stay themselves.
        flip = (windows < tok.N).view(np.uint8)
        flip *= (complement.astype(np.uint8) * np.uint8(3))[:, None]
        windows ^= flip


def _tile_ids(positions: np.ndarray, total: int, seed: int) -> np.ndarray:
    """Global tile positions ``(n,)`` int64 -> tile ids: epoch ``pos // total`` visits a permutation."""
    epochs = positions // total
    offsets = positions % total
    ids = np.empty_like(positions)
    for epoch in np.unique(epochs).tolist():
        rows = epochs == epoch
        keys = np.random.SeedSequence([seed, _TILE_ORDER_SALT, epoch]).generate_state(_FEISTEL_ROUNDS, np.uint64)
        ids[rows] = _permute(offsets[rows], total, keys)
    return ids


def _permute(x: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
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
            left, right = right, left ^ (_mix64(right ^ key) & mask)
        return (left << shift) | right

    y = rounds(x.astype(np.uint64))
    # The domain is < 4n, so a cycle re-enters [0, n) after a few steps on average.
    outside = y >= np.uint64(n)
    while outside.any():
        y[outside] = rounds(y[outside])
        outside = y >= np.uint64(n)
    return y.astype(np.int64)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 wrap-around arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _eval_iterator(table, views, mask_views, window_len, batch_size, rows) -> Iterator[dict[str, np.ndarray]]:
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
            windows[real] = _gather(views, record[real], starts[real], window_len)
        out.update(tokens=windows.view(np.int8), record=record, start=starts)
        if mask_views is not None:
            soft = np.zeros((local.size, window_len), dtype=bool)
            if real.any():
                soft[real] = _gather(mask_views, record[real], starts[real], window_len, dtype=bool)
            out["soft_mask"] = soft
        yield out


# --------------------------------------------------------------------------------------------------
# Argument checks


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise LoaderError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _process_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise LoaderError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
    if batch_size % process_count:
        raise LoaderError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
    share = batch_size // process_count
    return process_index * share, (process_index + 1) * share


def _check_augment(augment: Sequence[str]) -> tuple[str, ...]:
    if isinstance(augment, str):
        raise LoaderError(f"augment must be a list of names, got the string {augment!r}")
    names = tuple(augment)
    if not names:
        raise LoaderError(f"augment must name at least one of {list(AUGMENTATIONS)} (use ['identity'] for none)")
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise LoaderError(f"unknown augmentation(s) {unknown}; expected some of {list(AUGMENTATIONS)}")
    if len(set(names)) != len(names):
        raise LoaderError(f"augment lists a name twice: {list(names)} (choices are uniform over distinct names)")
    return names


def _resolve_intervals(tokens: Mapping[str, np.ndarray], intervals: Sequence[Interval]) -> list[tuple[int, int, int]]:
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


def _record_views(arrays: Mapping[str, np.ndarray], names: list[str], window_len: int) -> list:
    """Per record, a zero-copy ``(length - L + 1, L)`` view (None if the record is shorter than L)."""
    views = []
    for name in names:
        array = np.asarray(arrays[name])
        views.append(sliding_window_view(array, window_len) if array.shape[0] >= window_len else None)
    return views


def _max_n_count(max_n_fraction: float, window_len: int) -> int:
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from rejecting a window with exactly 29 N.
    return int(math.floor(max_n_fraction * window_len + 1e-9))


def _no_window_message(tokens, names, spans, window_len: int, max_n_fraction: float) -> str:
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


def _fingerprint(tokens: Mapping[str, np.ndarray], intervals: Sequence[Interval]) -> str:
    """Short hash of record names/lengths and intervals: a resumed loader must see the same data."""
    payload = json.dumps(
        [[[name, int(len(array))] for name, array in tokens.items()], [[r, int(s), int(e)] for r, s, e in intervals]]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _jsonable(value):
    # A state that went through JSON has lists for tuples; compare in that form.
    return json.loads(json.dumps(value))
