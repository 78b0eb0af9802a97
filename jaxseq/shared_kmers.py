"""k-mers shared across the split boundary: how much of the valid and test splits repeats train sequence.

Splitting by coordinates is leak-free by position, not by content: rRNA operons, IS elements and
duplications put the same bases on both sides of a split boundary. This module finds every k-mer
(both strands: canonical = min(forward, reverse complement), 2-bit packed in a uint64, so ``k <= 32``)
of the valid and test splits that also occurs in the train split, and reports per split:

* windows (the evaluation tiling: non-overlapping ``window_len`` tiles of each interval) that hold at
  least one shared k-mer, and the bases covered by shared k-mers;
* a histogram of the shared-k-mer fraction per window (shared / valid k-mers of the window);
* the largest shared regions (record, start, end) and where their first k-mer sits in train.

A k-mer counts only if it lies wholly inside one interval of its split (windows never cross an
interval) and holds no N. :func:`shared_intervals` returns the shared stretches of every split as
intervals, so that removing them (:func:`dedup_splits`) leaves no k-mer shared across the boundary.

Memory: the exact answer needs the set of train k-mers. A sorted unique uint64 array of them costs 8
bytes per train base (640 MB for 80 Mb of train) plus a sort's copy, too much for a 100 Mb genome on
a small machine. Sampling (minimisers, hash subsampling) would bound memory but make the counts
approximate. Instead the k-mer space is cut by a hash into ``passes`` buckets and each pass holds
only one bucket's sorted set (``max_kmers_per_pass`` k-mers at most, 128 MB by default): the answer
stays exact, memory is bounded, and the price is recomputing the packed k-mers once per pass (cheap,
vectorised by doubling). A bool mark per base (1 byte/base) records the shared k-mer starts.
Measured by ``experiments/benchmark_audit.py`` (k = 32, default splits): a 100 Mb genome takes 5
passes, 84 s of CPU and 0.78 GB peak RSS (memory-mapped genome included); E. coli 2.4 s and 0.25 GB.

Training uses the same stretches: ``data.dedup: drop_train | drop_eval`` (k = ``data.dedup_k``) cuts
them out of the splits in :func:`jaxseq.steps.open_data`, so the audit of a deduplicated config is 0.
This module works on tokens and intervals only (the data floor); the command line and the accuracy of
a trained model on windows with and without a shared k-mer are :mod:`jaxseq.audit`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jaxseq.splits import DEDUP_MODES, DEFAULT_K, MAX_K, Interval, subtract_intervals

DEFAULT_MAX_KMERS_PER_PASS = 1 << 24
CHUNK = 1 << 21
EVAL_SPLITS = ("valid", "test")
# Odd 64-bit constant (golden ratio): multiplying spreads packed k-mers evenly over the buckets.
_HASH = np.uint64(0x9E3779B97F4A7C15)


class AuditError(ValueError):
    """A bad audit setting (k, window length, dedup mode); the message is one line."""


# ----------------------------------------------------------------------------------------------
# k-mers


def _pack(codes: np.ndarray, k: int) -> np.ndarray:
    """Packed k-mers of 2-bit codes uint64 ``(n,)`` -> uint64 ``(n - k + 1,)``, first base most significant.

    Doubling: words of length 1, 2, 4, ... are combined by the binary digits of ``k``, so ``log2(k)``
    array passes replace ``k`` of them.
    """
    n = len(codes)
    result, result_len = None, 0
    power, power_len = codes, 1
    remaining = k
    while remaining:
        if remaining & 1:
            if result is None:
                result, result_len = power, power_len
            else:
                m = n - result_len - power_len + 1
                result = (result[:m] << np.uint64(2 * power_len)) | power[result_len:result_len + m]
                result_len += power_len
        remaining >>= 1
        if remaining:
            m = n - 2 * power_len + 1
            power = (power[:m] << np.uint64(2 * power_len)) | power[power_len:power_len + m]
            power_len *= 2
    return result[: n - k + 1]


def canonical_kmers(tokens: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical 2-bit packed k-mers of a token stretch (both strands).

    Args:
      tokens: uint8 ``(n,)`` tokens (``A=0 C=1 G=2 T=3``, ``>= 4`` is N), ``n >= k``.
      k: k-mer length, ``1 <= k <= 32``.

    Returns:
      ``(canonical, forward, valid)``: uint64 ``(n - k + 1,)`` min(forward, reverse complement) and the
      forward word of the k-mer starting at each position, and bool ``(n - k + 1,)``, False where the
      k-mer spans an N (its words are then meaningless).
    """
    tokens = np.asarray(tokens)
    is_n = tokens >= 4
    codes = (tokens & 3).astype(np.uint64)
    codes[is_n] = 0
    forward = _pack(codes, k)
    # The reverse complement of the k-mer at p is the k-mer at n - k - p of the reversed complement.
    reverse = _pack((np.uint64(3) - codes)[::-1].copy(), k)[::-1]
    counts = np.concatenate([[0], np.cumsum(is_n, dtype=np.int64)])
    valid = counts[k:] == counts[:-k]
    return np.minimum(forward, reverse), forward, valid


def _bucket(canonical: np.ndarray, passes: int) -> np.ndarray:
    """Hash bucket in ``0..passes-1`` of each k-mer: top 32 bits of a multiplicative hash, scaled (no division)."""
    return (((canonical * _HASH) >> np.uint64(32)) * np.uint64(passes)) >> np.uint64(32)


class _Chunk(NamedTuple):
    """The k-mers starting in ``[start, start + n)`` of one record, and which side of the split holds each."""

    record: str
    start: int
    canonical: np.ndarray  # uint64 (n,)
    forward: np.ndarray  # uint64 (n,)
    side: np.ndarray  # int8 (n,): 0 train, 1 valid or test, -1 neither (or the k-mer spans N or two intervals)


def _sides(splits: Mapping[str, Sequence[Interval]]) -> dict[str, list[tuple[int, int, int]]]:
    """record -> ``(start, end, side)`` of the split intervals, side 0 for train and 1 for valid/test."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for split, intervals in splits.items():
        side = 0 if split == "train" else 1 if split in EVAL_SPLITS else None
        if side is not None:
            for i in intervals:
                out.setdefault(i.record, []).append((i.start, i.end, side))
    return out


def _genome_chunks(tokens: Mapping[str, np.ndarray], sides: Mapping[str, list], k: int,
                   chunk: int) -> Iterator[_Chunk]:
    """Every k-mer of the records that hold split intervals, ``chunk`` starts at a time.

    Reads overlap by ``k - 1`` bases, so each k-mer appears exactly once; a k-mer gets the side of
    the interval that holds it wholly (windows never cross an interval), else -1.
    """
    for record, spans in sides.items():
        length = len(tokens[record])
        for start in range(0, length - k + 1, chunk):
            stop = min(start + chunk, length - k + 1)
            canonical, forward, valid = canonical_kmers(np.asarray(tokens[record][start:stop + k - 1]), k)
            side = np.full(stop - start, -1, np.int8)
            for s, e, which in spans:
                lo, hi = max(s, start), min(e - k + 1, stop)
                if lo < hi:
                    side[lo - start:hi - start] = which
            side[~valid] = -1
            yield _Chunk(record, start, canonical, forward, side)


def _in_part(chunk: _Chunk, part: int, passes: int) -> np.ndarray:
    """bool ``(n,)``: k-mers of this chunk on either side of the split that fall in hash bucket ``part``."""
    keep = chunk.side >= 0
    return keep if passes == 1 else keep & (_bucket(chunk.canonical, passes) == part)


def _sorted_unique(pieces: list[np.ndarray]) -> np.ndarray:
    words = np.concatenate(pieces) if pieces else np.zeros(0, np.uint64)
    # Sort then drop repeats: several times faster than np.unique's hashing, and in place.
    words.sort()
    return words[np.concatenate([[True], words[1:] != words[:-1]])] if len(words) else words


def _member(sorted_set: np.ndarray, query: np.ndarray) -> np.ndarray:
    """bool ``(n,)``: which of ``query`` uint64 ``(n,)`` are in ``sorted_set``."""
    if len(sorted_set) == 0 or len(query) == 0:
        return np.zeros(len(query), bool)
    # Sorted keys make searchsorted walk the set in order: ~4x faster than random probes.
    order = np.argsort(query)
    keys = query[order]
    index = np.minimum(np.searchsorted(sorted_set, keys), len(sorted_set) - 1)
    found = np.empty(len(query), bool)
    found[order] = sorted_set[index] == keys
    return found


def check_k(k: int, window_len: int | None = None) -> None:
    """Raises :class:`AuditError` unless ``1 <= k <= MAX_K`` and a window of ``window_len`` holds a k-mer."""
    if int(k) != k or not 1 <= k <= MAX_K:
        raise AuditError(f"--k must be an integer in 1..{MAX_K} (k-mers are packed in 64 bits), got {k!r}")
    if window_len is not None and window_len < k:
        raise AuditError(f"k={k} is longer than data.window_len={window_len}: no window holds a whole k-mer")


def shared_kmer_marks(tokens: Mapping[str, np.ndarray], splits: Mapping[str, Sequence[Interval]], k: int = DEFAULT_K,
                      *, max_kmers_per_pass: int = DEFAULT_MAX_KMERS_PER_PASS,
                      chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """Marks every k-mer start whose canonical k-mer occurs on the other side of the train/eval boundary.

    Args:
      tokens: record name -> uint8 tokens ``(length,)`` (e.g. ``Genome.as_mapping()``).
      splits: ``{"train", "valid", "test"}`` -> intervals (``jaxseq.splits.compute_splits``).
      k: k-mer length, ``1 <= k <= 32``.
      max_kmers_per_pass: bound on the k-mers held in one sorted set (8 bytes each); more k-mers than
        this split the work into hash-bucket passes.
      chunk: bases read per step.

    Returns:
      record name -> bool ``(length,)``: True at position ``p`` when the k-mer ``[p, p + k)`` lies in a
      train interval and occurs (either strand) in a valid or test interval, or lies in a valid or test
      interval and occurs in a train interval.
    """
    check_k(k)
    sides = _sides(splits)
    per_side = [sum(max(0, e - s - k + 1) for spans in sides.values() for s, e, w in spans if w == which)
                for which in (0, 1)]
    passes = max(1, -(-max(per_side) // int(max_kmers_per_pass)))
    marks = {name: np.zeros(len(t), bool) for name, t in tokens.items()}
    for part in range(passes):
        # Pass 1 collects this bucket's k-mers of each side; pass 2 marks those found on the other side.
        pieces: tuple[list, list] = ([], [])
        for chunk_ in _genome_chunks(tokens, sides, k, chunk):
            keep = _in_part(chunk_, part, passes)
            for which in (0, 1):
                pieces[which].append(chunk_.canonical[keep & (chunk_.side == which)])
        sets = [_sorted_unique(p) for p in pieces]
        del pieces
        for chunk_ in _genome_chunks(tokens, sides, k, chunk):
            index = np.flatnonzero(_in_part(chunk_, part, passes))
            for which in (0, 1):
                mine = index[chunk_.side[index] == which]
                marks[chunk_.record][chunk_.start + mine[_member(sets[1 - which], chunk_.canonical[mine])]] = True
        del sets
    return marks


# ----------------------------------------------------------------------------------------------
# Shared stretches as intervals, and removing them


def _runs(marks: np.ndarray, interval: Interval, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shared k-mer starts of an interval and the merged stretches they cover, as absolute positions."""
    positions = interval.start + np.flatnonzero(marks[interval.start:max(interval.start, interval.end - k + 1)])
    if len(positions) == 0:
        return positions, positions, positions
    # Overlapping or touching k-mers [p, p + k) join one stretch.
    breaks = np.flatnonzero(np.diff(positions) > k) + 1
    starts = positions[np.concatenate([[0], breaks])]
    ends = positions[np.concatenate([breaks - 1, [len(positions) - 1]])] + k
    return positions, starts, ends


def intervals_from_marks(marks: Mapping[str, np.ndarray], splits: Mapping[str, Sequence[Interval]],
                         k: int) -> dict[str, list[Interval]]:
    """The stretches of each split covered by its marked k-mers (merged, sorted like the splits)."""
    out: dict[str, list[Interval]] = {}
    for split, intervals in splits.items():
        out[split] = []
        for interval in intervals:
            _, starts, ends = _runs(marks[interval.record], interval, k)
            out[split].extend(Interval(interval.record, int(s), int(e)) for s, e in zip(starts, ends))
    return out


def shared_intervals(tokens: Mapping[str, np.ndarray], splits: Mapping[str, Sequence[Interval]], k: int = DEFAULT_K,
                     **kwargs) -> dict[str, list[Interval]]:
    """Stretches of each split covered by k-mers shared across the train/eval boundary.

    Subtracting ``result["train"]`` from the train split (``data.dedup: drop_train``), or
    ``result["valid"]`` and ``result["test"]`` from those splits (``drop_eval``), exactly like a BED
    exclude list, leaves no k-mer shared between train and valid/test.

    Args:
      tokens: record name -> uint8 tokens ``(length,)``.
      splits: ``{"train", "valid", "test"}`` -> intervals.
      k: k-mer length, ``1 <= k <= 32``.
      **kwargs: ``max_kmers_per_pass``, ``chunk`` (see :func:`shared_kmer_marks`).

    Returns:
      split name -> list of :class:`Interval` (half-open, merged, inside that split's intervals).
    """
    return intervals_from_marks(shared_kmer_marks(tokens, splits, k, **kwargs), splits, k)


def dedup_splits(splits: Mapping[str, Sequence[Interval]], shared: Mapping[str, Sequence[Interval]],
                 mode: str) -> dict[str, list[Interval]]:
    """Applies ``data.dedup``: removes the shared stretches from train (``drop_train``) or eval (``drop_eval``).

    Args:
      splits: ``{"train", "valid", "test"}`` -> intervals.
      shared: the output of :func:`shared_intervals` for these splits.
      mode: ``"none"``, ``"drop_train"`` or ``"drop_eval"``.

    Returns:
      new splits; ``"none"`` returns copies of the input lists.
    """
    if mode not in DEDUP_MODES:
        raise AuditError(f"data.dedup must be one of {', '.join(DEDUP_MODES)}, got {mode!r}")
    dropped = {"none": (), "drop_train": ("train",), "drop_eval": EVAL_SPLITS}[mode]
    return {split: subtract_intervals(intervals, shared.get(split, ())) if split in dropped else list(intervals)
            for split, intervals in splits.items()}


# ----------------------------------------------------------------------------------------------
# The report


def _shared_per_window(interval: Interval, positions: np.ndarray, k: int, window_len: int) -> np.ndarray:
    """Shared k-mers (starts ``positions``) wholly inside each window of the interval's tiling: int64 ``(windows,)``."""
    n_windows = (interval.end - interval.start) // window_len
    offsets = positions - interval.start
    inside = (offsets % window_len <= window_len - k) & (offsets // window_len < n_windows)
    return np.bincount(offsets[inside] // window_len, minlength=n_windows).astype(np.int64)


def _window_counts(tokens: np.ndarray, interval: Interval, positions: np.ndarray, k: int,
                   window_len: int, block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Valid and shared k-mers per window of the evaluation tiling of one interval: int64 ``(windows,)`` each."""
    n_windows = (interval.end - interval.start) // window_len
    shared = _shared_per_window(interval, positions, k, window_len)
    valid = np.full(n_windows, window_len - k + 1, np.int64)
    for first in range(0, n_windows, block):
        last = min(first + block, n_windows)
        start = interval.start + first * window_len
        rows = np.asarray(tokens[start:interval.start + last * window_len]).reshape(-1, window_len)
        with_n = np.flatnonzero((rows >= 4).any(axis=1))
        if len(with_n):
            counts = np.concatenate([np.zeros((len(with_n), 1), np.int32),
                                     np.cumsum(rows[with_n] >= 4, axis=1, dtype=np.int32)], axis=1)
            valid[first + with_n] = (counts[:, k:] == counts[:, :-k]).sum(axis=1)
    return valid, shared


def _split_report(tokens, marks, intervals, k: int, window_len: int, edges: np.ndarray) -> tuple[dict, list]:
    totals = dict(windows=0, shared_windows=0, no_kmer_windows=0, bases=0, shared_bases=0, shared_kmers=0)
    histogram = np.zeros(len(edges) - 1, np.int64)
    regions = []
    for interval in intervals:
        positions, starts, ends = _runs(marks[interval.record], interval, k)
        valid, shared = _window_counts(tokens[interval.record], interval, positions, k, window_len)
        has_kmer = valid > 0
        histogram += np.histogram(shared[has_kmer] / valid[has_kmer], bins=edges)[0]
        totals["windows"] += len(valid)
        totals["shared_windows"] += int((shared > 0).sum())
        totals["no_kmer_windows"] += int((~has_kmer).sum())
        totals["bases"] += interval.end - interval.start
        totals["shared_bases"] += int((ends - starts).sum())
        totals["shared_kmers"] += len(positions)
        regions.extend((interval.record, int(s), int(e)) for s, e in zip(starts, ends))
    totals["shared_window_fraction"] = totals["shared_windows"] / max(totals["windows"], 1)
    totals["shared_base_fraction"] = totals["shared_bases"] / max(totals["bases"], 1)
    totals["histogram"] = histogram.tolist()
    return totals, regions


def _locate(tokens: Mapping[str, np.ndarray], train: Sequence[Interval], regions: list[dict], k: int,
            chunk: int) -> None:
    """Adds where in train the first k-mer of each region occurs (first occurrence, either strand)."""
    queries = {}
    for region in regions:
        first = np.asarray(tokens[region["record"]][region["start"]:region["start"] + k])
        canonical, forward, _ = canonical_kmers(first, k)
        queries.setdefault(int(canonical[0]), []).append((region, int(forward[0])))
    if not queries:
        return
    for chunk_ in _genome_chunks(tokens, _sides({"train": train}), k, chunk):
        wanted = np.array(sorted(queries), np.uint64)
        for i in np.flatnonzero((chunk_.side == 0) & _member(wanted, chunk_.canonical)).tolist():
            start = chunk_.start + i
            for region, query_forward in queries.pop(int(chunk_.canonical[i]), ()):
                region["train"] = dict(record=chunk_.record, start=start, end=start + k,
                                       strand="+" if int(chunk_.forward[i]) == query_forward else "-")
        if not queries:
            return


def audit_splits(tokens: Mapping[str, np.ndarray], splits: Mapping[str, Sequence[Interval]], *, k: int = DEFAULT_K,
                 window_len: int, top: int = 10, bins: int = 10,
                 max_kmers_per_pass: int = DEFAULT_MAX_KMERS_PER_PASS, chunk: int = CHUNK,
                 marks: Mapping[str, np.ndarray] | None = None) -> dict:
    """Audits valid and test against train for shared canonical k-mers.

    Args:
      tokens: record name -> uint8 tokens ``(length,)``.
      splits: ``{"train", "valid", "test"}`` -> intervals.
      k: k-mer length, ``1 <= k <= 32``, at most ``window_len``.
      window_len: the evaluation tiling's window length (``data.window_len``).
      top: how many of the largest shared regions to report.
      bins: histogram bins over the shared-k-mer fraction per window, ``[0, 1]``.
      max_kmers_per_pass: see :func:`shared_kmer_marks`.
      chunk: bases read per step.
      marks: :func:`shared_kmer_marks` of these tokens, splits and ``k`` if already computed (the
        expensive part; computed here otherwise).

    Returns:
      a JSON-ready dict: ``k``, ``window_len``, ``histogram_edges``; ``splits``: per split (valid, test)
      ``windows``, ``shared_windows``, ``shared_window_fraction``, ``no_kmer_windows`` (all k-mers span
      N; left out of the histogram), ``bases``, ``shared_bases``, ``shared_base_fraction``,
      ``shared_kmers``, ``histogram`` (window counts per bin); ``train``: ``bases``, ``shared_bases``
      (what ``drop_train`` removes); ``regions``: the largest shared regions, each with ``split``,
      ``record``, ``start``, ``end``, ``length`` and ``train`` (record, start, end, strand of a
      matching train k-mer).
    """
    check_k(k, window_len)
    if marks is None:
        marks = shared_kmer_marks(tokens, splits, k, max_kmers_per_pass=max_kmers_per_pass, chunk=chunk)
    edges = np.linspace(0.0, 1.0, bins + 1)
    report = dict(k=k, window_len=window_len, histogram_edges=edges.tolist(), splits={}, regions=[])
    regions = []
    for split in EVAL_SPLITS:
        report["splits"][split], found = _split_report(tokens, marks, splits.get(split, ()), k, window_len, edges)
        regions.extend(dict(split=split, record=r, start=s, end=e, length=e - s) for r, s, e in found)
    train_shared = intervals_from_marks(marks, {"train": splits["train"]}, k)["train"]
    report["train"] = dict(bases=sum(i.end - i.start for i in splits["train"]),
                           shared_bases=sum(i.end - i.start for i in train_shared))
    regions.sort(key=lambda r: (-r["length"], r["record"], r["start"]))
    report["regions"] = regions[:top]
    _locate(tokens, splits["train"], report["regions"], k, chunk)
    return report


def windows_by_shared(marks: Mapping[str, np.ndarray], intervals: Sequence[Interval], k: int,
                      window_len: int) -> dict[str, list[Interval]]:
    """The evaluation tiling of ``intervals`` cut into windows that hold a shared k-mer and windows that do not.

    Args:
      marks: :func:`shared_kmer_marks` of the splits that ``intervals`` belongs to.
      intervals: one split's intervals.
      k: the k of ``marks``.
      window_len: the tiling's window length (non-overlapping tiles from each interval's start).

    Returns:
      ``{"shared": [...], "clean": [...]}``: :class:`Interval` lists whose own evaluation tilings are
      exactly those windows (adjacent windows of a group merged).
    """
    groups: dict[str, list[Interval]] = {"shared": [], "clean": []}
    for interval in intervals:
        positions, _, _ = _runs(marks[interval.record], interval, k)
        shared = _shared_per_window(interval, positions, k, window_len)
        for index, has in enumerate(shared > 0):
            group = groups["shared" if has else "clean"]
            start = interval.start + index * window_len
            if group and group[-1].record == interval.record and group[-1].end == start:
                group[-1] = group[-1]._replace(end=start + window_len)
            else:
                group.append(Interval(interval.record, start, start + window_len))
    return groups


def format_report(report: Mapping) -> str:
    """The audit as text tables: per-split fractions, the histogram, the largest shared regions."""
    lines = [f"k-mers shared with train (k={report['k']}, both strands; windows of {report['window_len']} bases)",
             f"{'split':<6} {'windows':>10} {'shared':>10} {'%':>7} {'bases':>12} {'shared':>12} {'%':>7}"]
    for split, s in report["splits"].items():
        lines.append(f"{split:<6} {s['windows']:>10,} {s['shared_windows']:>10,} "
                     f"{100 * s['shared_window_fraction']:>7.3f} {s['bases']:>12,} {s['shared_bases']:>12,} "
                     f"{100 * s['shared_base_fraction']:>7.3f}")
    t = report["train"]
    lines.append(f"train bases covered by k-mers found in valid/test: {t['shared_bases']:,} of {t['bases']:,}")
    edges = report["histogram_edges"]
    lines += ["", "windows by shared-k-mer fraction",
              f"{'fraction':<12}" + "".join(f"{s:>10}" for s in report["splits"])]
    for b in range(len(edges) - 1):
        closing = "]" if b == len(edges) - 2 else ")"
        label = f"[{edges[b]:.2f},{edges[b + 1]:.2f}{closing}"
        lines.append(f"{label:<12}" + "".join(f"{s['histogram'][b]:>10,}" for s in report["splits"].values()))
    if report["regions"]:
        lines += ["", "largest shared regions",
                  f"{'split':<6} {'record':<16} {'start':>10} {'end':>10} {'length':>8}  in train"]
        for r in report["regions"]:
            where = r.get("train")
            at = f"{where['record']}:{where['start']}-{where['end']} ({where['strand']})" if where else "?"
            lines.append(f"{r['split']:<6} {r['record']:<16} {r['start']:>10,} {r['end']:>10,} {r['length']:>8,}  {at}")
    return "\n".join(lines)
