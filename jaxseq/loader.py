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

import collections
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxseq import windows
from jaxseq.splits import Interval
from jaxseq.windows import LoaderError  # noqa: F401  (the loader's error; raised by both modules)

# The prefetch thread hands over chunks of about _CHUNK_ROWS windows (at most _MAX_CHUNK batches).
_CHUNK_ROWS = 2048
_MAX_CHUNK = 64

#: Augmentation name -> (reverse, complement).
AUGMENTATIONS: dict[str, tuple[bool, bool]] = {
    "identity": (False, False),
    "reverse": (True, False),
    "complement": (False, True),
    "reverse_complement": (True, True),
}



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
          prefetch: batches the background thread keeps ready (at least one chunk of ~2,048 windows,
            handed over together); 0 generates in the caller's thread.
          process_index: this process's index ``p``; it yields rows ``[p*B/P, (p+1)*B/P)`` of each batch.
          process_count: number of processes ``P``.

        Raises:
          LoaderError: bad arguments, an interval outside its record, or no window in any interval that
            satisfies ``max_n_fraction`` (including an all-N genome).
        """
        self._window_len = windows.positive_int("window_len", window_len)
        self._batch_size = windows.positive_int("batch_size", batch_size)
        self._rows = _process_rows(self._batch_size, process_index, process_count)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise LoaderError(f"seed must be a non-negative integer, got {seed!r}")
        self._seed = int(seed)
        self._augment = check_augment(augment)
        if not 0.0 <= float(max_n_fraction) <= 1.0:
            raise LoaderError(f"max_n_fraction must be in [0, 1], got {max_n_fraction}")
        self._max_n_fraction = float(max_n_fraction)
        self._stride = None if stride is None else windows.positive_int("stride", stride)
        self._prefetch = int(prefetch)
        if self._prefetch < 0:
            raise LoaderError(f"prefetch must be >= 0, got {prefetch}")

        self._source = _BatchSource(
            tokens,
            self._train_table(tokens, intervals),
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
            "data": windows.fingerprint(tokens, intervals),
        }
        self._index = 0
        self._ready: collections.deque = collections.deque()  # batches of the current chunk, not yet returned
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._queue: queue.Queue | None = None
        self._closed = False

    def _train_table(self, tokens: Mapping[str, np.ndarray], intervals: Sequence[Interval]) -> windows.WindowTable:
        """The drawable windows (one chunked N scan over the intervals); raises if there is none."""
        names = list(tokens)
        spans = windows.resolve_intervals(tokens, intervals)
        max_n = windows.max_n_count(self._max_n_fraction, self._window_len)
        table = windows.train_table(tokens, names, spans, self._window_len, self._stride or 1, max_n)
        if table.total == 0:
            raise LoaderError(windows.no_window_message(tokens, names, spans, self._window_len, self._max_n_fraction))
        return table

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
            if not self._ready:
                while True:
                    try:
                        index, batches = self._queue.get(timeout=1.0)
                        break
                    except queue.Empty:
                        if not self._thread.is_alive():
                            raise RuntimeError("TrainLoader prefetch thread stopped unexpectedly") from None
                if index is None:  # the producer failed: surface its exception here
                    self._stop_thread()
                    raise batches
                # Batches are produced in order from self._index, so this only fails on a logic error.
                assert index == self._index, (index, self._index)
                self._ready = collections.deque(batches)
            batch = self._ready.popleft()
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
        differing = [key for key, value in self._config.items() if windows.jsonable(state.get(key)) != windows.jsonable(value)]
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
        self._queue = queue.Queue(maxsize=max(1, -(-self._prefetch // self._source.chunk)))
        self._thread = threading.Thread(
            target=_produce,
            args=(self._source, self._index, self._stop, self._queue),
            name="jaxseq-loader",
            daemon=True,  # never keeps the interpreter alive
        )
        self._thread.start()

    def _stop_thread(self) -> None:
        if getattr(self, "_ready", None):
            self._ready.clear()  # prefetched, not consumed: regenerated from self._index when asked
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
    window_len = windows.positive_int("window_len", window_len)
    batch_size = windows.positive_int("batch_size", batch_size)
    rows = _process_rows(batch_size, process_index, process_count)
    names = list(tokens)
    table = windows.eval_table(tokens, names, intervals, window_len, stride)
    if table.total == 0:
        raise LoaderError(f"no evaluation window: no interval is at least window_len={window_len} bases long")
    views = windows.record_views(tokens, names, window_len)
    mask_views = None
    if soft_mask is not None:
        missing = [name for name in names if name not in soft_mask]
        if missing:
            raise LoaderError(f"soft_mask lacks record(s) {missing[:5]}")
        mask_views = windows.record_views(soft_mask, names, window_len)
    return windows.eval_iterator(table, views, mask_views, window_len, batch_size, rows)


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
    window_len = windows.positive_int("window_len", window_len)
    return windows.eval_table(tokens, list(tokens), intervals, window_len, stride).total


# --------------------------------------------------------------------------------------------------
# Window tables


# --------------------------------------------------------------------------------------------------
# Batch generation


class _BatchSource:
    """Immutable recipe for batch ``i``; shared read-only with the prefetch thread."""

    def __init__(self, tokens, table: windows.WindowTable, *, window_len, batch_size, rows, seed, augment, strided):
        self.views = windows.record_views(tokens, list(tokens), window_len)
        self.table = table
        # The prefetch thread hands over chunks of consecutive batches: one queue hand-off (a GIL round trip) per
        # chunk instead of per batch, ~2x the batches/s for small batches (experiments/RESULTS.md, section G).
        self.chunk = max(1, min(_MAX_CHUNK, _CHUNK_ROWS // (rows[1] - rows[0])))
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
            ids = windows.tile_ids(index * size + np.arange(size, dtype=np.int64), self.table.total, self.seed)
        else:
            ids = rng.integers(0, self.table.total, size=size, dtype=np.int64)
        # Drawn for the whole global batch even if unused, so every process slices the same choices.
        choice = rng.integers(0, self.reverse.size, size=size) if self.reverse.size > 1 else np.zeros(size, np.intp)
        lo, hi = self.rows
        record, starts = self.table.lookup(ids[lo:hi])
        batch = windows.gather(self.views, record, starts, self.window_len)
        windows.augment_inplace(batch, self.reverse[choice[lo:hi]], self.complement[choice[lo:hi]])
        return {"tokens": batch.view(np.int8), "weights": np.ones(hi - lo, dtype=np.float32)}


def _produce(source: _BatchSource, index: int, stop: threading.Event, out: queue.Queue) -> None:
    """Puts ``(first index, [batches])`` of ``source.chunk`` consecutive batches, then ``(None, error)`` if one fails."""
    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    batches: list = []
    try:
        while not stop.is_set():
            batches = []
            for j in range(source.chunk):
                batches.append(source.make(index + j))
            put((index, batches))
            index += source.chunk
    except BaseException as error:  # handed to the consumer after the batches made before it
        if batches:
            put((index, batches))
        put((None, error))


# --------------------------------------------------------------------------------------------------
# Argument checks


def _process_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise LoaderError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
    if batch_size % process_count:
        raise LoaderError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
    share = batch_size // process_count
    return process_index * share, (process_index + 1) * share


def check_augment(augment: Sequence[str]) -> tuple[str, ...]:
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












