"""Leak-free train/valid/test intervals over a genome's records.

Two strategies:

* ``"records"``: whole records are held out by name (``valid_records``, ``test_records``); every other
  record is train. Use it when chromosomes are the natural unit (e.g. hold out chr8 and chr9).
* ``"blocks"``: every record is cut into ``block_len`` blocks (the last, shorter block of a record is a
  block of its own); a seeded shuffle assigns the blocks to train/valid/test in ``proportions``, and
  adjacent blocks of the same split are merged into one interval so that windows can span their join.

Intervals are half-open ``[start, end)`` and never overlap across splits. The loader samples every
window wholly inside one interval, so no base is seen by windows of two splits. This module only
describes the partition; sampling belongs to :mod:`jaxseq.loader`.

:func:`split_genome` is what training and evaluation call: it selects records (``data.records``),
splits them, then intersects every split with ``data.regions`` (windows wholly inside them) and
subtracts ``data.exclude`` (no window touches them). Restricting after splitting keeps the block
layout of a genome the same whatever the regions, and cutting intervals can only shrink them, so
the splits stay disjoint. :func:`subtract_intervals` and :func:`intersect_intervals` are the
interval arithmetic for any other restriction (a k-mer deduplication removes shared stretches the
same way ``data.exclude`` does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxseq import regions as regions_lib

#: Split names, in the order of ``proportions``.
SPLITS = ("train", "valid", "test")
STRATEGIES = ("records", "blocks")
#: ``data.dedup``: cut the k-mers shared across the train/eval boundary out of train or out of valid and test
#: (carried out by :func:`jaxseq.shared_kmers.dedup_splits`; the names live here, below config, beside the
#: other split settings).
DEDUP_MODES = ("none", "drop_train", "drop_eval")
#: ``data.dedup_k`` and the audit's ``--k``: k-mers are packed 2 bits per base in 64 bits.
MAX_K = 32
DEFAULT_K = 32


class Interval(NamedTuple):
    """A half-open, 0-based stretch ``[start, end)`` of one record."""

    record: str
    start: int
    end: int


class SplitError(ValueError):
    """A split setting cannot give three usable, disjoint splits. The message is one line."""


def compute_splits(
    lengths: Mapping[str, int],
    *,
    strategy: str = "blocks",
    block_len: int = 10_000,
    proportions: Sequence[float] = (0.8, 0.1, 0.1),
    valid_records: Sequence[str] = (),
    test_records: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, list[Interval]]:
    """Partitions the records into disjoint train/valid/test intervals.

    Args:
      lengths: record name -> length in bases, in file order (the order of the output intervals).
      strategy: ``"blocks"`` or ``"records"``.
      block_len: block size in bases (``"blocks"`` only).
      proportions: fractions of blocks for (train, valid, test), each >= 0, summing to 1 (``"blocks"``
        only; ignored by ``"records"``). Block counts follow the proportions as closely as possible
        (largest-remainder rounding).
      valid_records: record names held out for validation (``"records"`` only).
      test_records: record names held out for testing (``"records"`` only).
      seed: seed of the block shuffle; the same (lengths, settings, seed) always give the same splits.

    Returns:
      ``{"train": [...], "valid": [...], "test": [...]}``, each a list of :class:`Interval` sorted by
      (record file order, start); intervals of one split never touch each other (they are merged).

    Raises:
      SplitError: unknown strategy, bad ``block_len`` or ``proportions``, an unknown or doubly held-out
        record, record names given to the ``"blocks"`` strategy, or a split that ends up empty.
    """
    for name, length in lengths.items():
        if int(length) < 0:
            raise SplitError(f"record {name!r} has negative length {length}")
    if strategy == "records":
        splits = _split_by_records(lengths, valid_records, test_records)
    elif strategy == "blocks":
        for setting, names in (("valid_records", valid_records), ("test_records", test_records)):
            if len(names):
                raise SplitError(
                    f"{setting}={list(names)!r} is only used by strategy='records' (got strategy='blocks'); "
                    f"set strategy='records' or clear {setting}"
                )
        splits = _split_by_blocks(lengths, block_len, proportions, seed)
    else:
        raise SplitError(f"unknown split strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    return splits


def check_splits(splits: Mapping[str, Sequence[Interval]], window_len: int) -> None:
    """Checks that every split can give at least one window and that splits do not overlap.

    Args:
      splits: the output of :func:`compute_splits` (or hand-made intervals).
      window_len: window length in bases.

    Raises:
      SplitError: one line naming the split and the setting: a split is missing or empty, no interval of
        a split is at least ``window_len`` long, an interval is malformed, or two splits overlap.
    """
    if int(window_len) < 1:
        raise SplitError(f"window_len must be >= 1, got {window_len}")
    for split in SPLITS:
        intervals = splits.get(split)
        if not intervals:
            raise SplitError(f"split {split!r} is empty: it has no interval at all")
        for interval in intervals:
            if not 0 <= interval.start < interval.end:
                raise SplitError(f"split {split!r} has a malformed interval {tuple(interval)} (need 0 <= start < end)")
        longest = max(intervals, key=lambda i: i.end - i.start)
        if longest.end - longest.start < window_len:
            raise SplitError(
                f"split {split!r} has no interval of at least window_len={window_len} bases "
                f"(longest is {longest.end - longest.start} bases, record {longest.record!r}); "
                f"lower window_len or use larger blocks/records"
            )
    _check_disjoint(splits)


def _split_by_records(
    lengths: Mapping[str, int], valid_records: Sequence[str], test_records: Sequence[str]
) -> dict[str, list[Interval]]:
    known = list(lengths)
    for setting, names in (("valid_records", valid_records), ("test_records", test_records)):
        if isinstance(names, str):
            # A bare string would be split into characters; almost certainly a config mistake.
            raise SplitError(f"{setting} must be a list of record names, got the string {names!r}")
        unknown = [name for name in names if name not in lengths]
        if unknown:
            raise SplitError(f"{setting} names unknown record(s) {unknown}; known records: {_preview(known)}")
    both = sorted(set(valid_records) & set(test_records), key=known.index)
    if both:
        raise SplitError(f"record(s) {both} are in both valid_records and test_records")
    held_out = {name: "valid" for name in valid_records} | {name: "test" for name in test_records}
    splits: dict[str, list[Interval]] = {split: [] for split in SPLITS}
    for name, length in lengths.items():
        if int(length) > 0:
            splits[held_out.get(name, "train")].append(Interval(name, 0, int(length)))
    for split, setting in (("train", "valid_records/test_records"), ("valid", "valid_records"), ("test", "test_records")):
        if not splits[split]:
            why = "every non-empty record is held out" if split == "train" else "it names no non-empty record"
            raise SplitError(f"split {split!r} is empty with strategy='records': {setting} {why}")
    return splits


def _split_by_blocks(
    lengths: Mapping[str, int], block_len: int, proportions: Sequence[float], seed: int
) -> dict[str, list[Interval]]:
    if int(block_len) != block_len or block_len < 1:
        raise SplitError(f"block_len must be a positive integer, got {block_len!r}")
    block_len = int(block_len)
    fractions = check_proportions(proportions)

    names = list(lengths)
    blocks_per_record = np.array([-(-int(lengths[n]) // block_len) for n in names], dtype=np.int64)
    num_blocks = int(blocks_per_record.sum())
    counts = _largest_remainder(fractions, num_blocks)
    for split, count in zip(SPLITS, counts):
        if count == 0:
            raise SplitError(
                f"split {split!r} is empty with strategy='blocks': proportions={tuple(proportions)} of "
                f"{num_blocks} block(s) of block_len={block_len} gives it none; lower block_len or change proportions"
            )

    # Shuffling block ids and cutting the permutation gives exact counts (unlike an independent draw per
    # block) while every block is equally likely to land in every split.
    order = np.random.default_rng(seed).permutation(num_blocks)
    labels = np.empty(num_blocks, dtype=np.int8)
    labels[order[: counts[0]]] = 0
    labels[order[counts[0] : counts[0] + counts[1]]] = 1
    labels[order[counts[0] + counts[1] :]] = 2

    splits: dict[str, list[Interval]] = {split: [] for split in SPLITS}
    first_block = 0
    for name, n_blocks in zip(names, blocks_per_record.tolist()):
        length = int(lengths[name])
        record_labels = labels[first_block : first_block + n_blocks]
        first_block += n_blocks
        if n_blocks == 0:
            continue
        # Runs of equal labels become one interval each.
        change = np.flatnonzero(np.diff(record_labels)) + 1
        run_starts = np.concatenate([[0], change])
        run_ends = np.concatenate([change, [n_blocks]])
        for b0, b1 in zip(run_starts.tolist(), run_ends.tolist()):
            splits[SPLITS[record_labels[b0]]].append(Interval(name, b0 * block_len, min(b1 * block_len, length)))
    return splits


def check_proportions(proportions: Sequence[float]) -> np.ndarray:
    try:
        fractions = np.asarray(proportions, dtype=np.float64)
    except (TypeError, ValueError):
        raise SplitError(f"proportions must be three numbers (train, valid, test), got {proportions!r}") from None
    if fractions.shape != (3,):
        raise SplitError(f"proportions must be three numbers (train, valid, test), got {proportions!r}")
    if not np.all(np.isfinite(fractions)) or np.any(fractions < 0):
        raise SplitError(f"proportions must be finite and >= 0, got {tuple(proportions)}")
    if not math.isclose(float(fractions.sum()), 1.0, abs_tol=1e-6):
        raise SplitError(f"proportions must sum to 1, got {tuple(proportions)} (sum {fractions.sum():g})")
    return fractions / fractions.sum()


def _largest_remainder(fractions: np.ndarray, total: int) -> list[int]:
    """Integer counts summing to ``total`` that are closest to ``fractions * total``."""
    quotas = fractions * total
    counts = np.floor(quotas).astype(np.int64)
    remainder = total - int(counts.sum())
    # Stable sort: ties go to the earlier split (train, then valid), which keeps the rule deterministic.
    for index in np.argsort(-(quotas - counts), kind="stable")[:remainder]:
        counts[index] += 1
    return counts.tolist()


def _check_disjoint(splits: Mapping[str, Sequence[Interval]]) -> None:
    by_record: dict[str, list[tuple[int, int, str]]] = {}
    for split, intervals in splits.items():
        for interval in intervals:
            by_record.setdefault(interval.record, []).append((interval.start, interval.end, split))
    for record, spans in by_record.items():
        spans.sort()
        for (s0, e0, split0), (s1, e1, split1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise SplitError(
                    f"intervals overlap in record {record!r}: [{s0}, {e0}) in {split0!r} and [{s1}, {e1}) in {split1!r}"
                )


def _preview(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} records)"


def _merged(spans: Sequence[tuple]) -> dict[str, list[tuple[int, int]]]:
    """(record, start, end, ...) tuples -> record -> sorted, merged, non-empty [start, end) spans."""
    by_record: dict[str, list[tuple[int, int]]] = {}
    for span in spans:
        if span[2] > span[1]:
            by_record.setdefault(span[0], []).append((int(span[1]), int(span[2])))
    for record, items in by_record.items():
        items.sort()
        merged = [items[0]]
        for start, end in items[1:]:
            if start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        by_record[record] = merged
    return by_record


def subtract_intervals(intervals: Sequence[Interval], removed: Sequence[tuple]) -> list[Interval]:
    """Removes every base covered by ``removed`` from ``intervals``.

    Args:
      intervals: disjoint :class:`Interval` s (one split), in any order.
      removed: ``(record, start, end, ...)`` tuples (:class:`Interval`, :class:`jaxseq.regions.Region`),
        0-based half-open, overlapping or unsorted; zero-length ones remove nothing.

    Returns:
      The remaining non-empty pieces, in the order of ``intervals`` (then by start).
    """
    cut = _merged(removed)
    out = []
    for interval in intervals:
        start = interval.start
        for a, b in cut.get(interval.record, ()):
            if b <= start or a >= interval.end:
                continue
            if a > start:
                out.append(Interval(interval.record, start, a))
            start = max(start, b)
        if start < interval.end:
            out.append(Interval(interval.record, start, interval.end))
    return out


def intersect_intervals(intervals: Sequence[Interval], kept: Sequence[tuple]) -> list[Interval]:
    """Keeps only the bases of ``intervals`` that ``kept`` covers (arguments as :func:`subtract_intervals`)."""
    keep = _merged(kept)
    out = []
    for interval in intervals:
        for a, b in keep.get(interval.record, ()):
            start, end = max(a, interval.start), min(b, interval.end)
            if start < end:
                out.append(Interval(interval.record, start, end))
    return out


def split_genome(genome: Any, data: Any) -> dict[str, list[Interval]]:
    """The final train/valid/test intervals of a genome under a data config: what runs train and score on.

    Steps: aliases (``data.aliases``) -> record selection (``data.records``, names or globs) ->
    :func:`compute_splits` (``split``, ``block_len``, ``proportions``, ``valid_records``,
    ``test_records`` (aliases allowed), ``split_seed``) -> intersect with ``data.regions`` -> subtract
    ``data.exclude`` -> :func:`check_splits` with ``window_len``.

    Args:
      genome: anything with ``sizes() -> dict[str, int]`` (:class:`jaxseq.genome.Genome`).
      data: the ``data`` group of a config (:class:`jaxseq.config.DataConfig`; splits sits below config
        and genome and imports neither).

    Returns:
      ``{"train": [...], "valid": [...], "test": [...]}`` of :class:`Interval`, disjoint across splits.

    Raises:
      RegionError: a bad aliases or BED file, or a record name or glob that names nothing (one line
        naming the setting, file and line).
      SplitError: settings that leave a split without a window.
    """
    sizes = genome.sizes()
    aliases = _setting("data.aliases", lambda: regions_lib.read_aliases(data.aliases, sizes)) if data.aliases else {}
    if data.records:
        chosen = _setting("data.records", lambda: regions_lib.select_records(data.records, sizes, aliases))
        sizes = {name: sizes[name] for name in chosen}
    held_out = {}
    for key in ("valid_records", "test_records"):
        names = getattr(data, key)
        held_out[key] = names if isinstance(names, str) else [aliases.get(n, n) for n in names]
    splits = compute_splits(sizes, strategy=data.split, block_len=data.block_len, proportions=tuple(data.proportions),
                            seed=data.split_seed, **held_out)
    restricted = []
    if data.regions:
        # Validated against every record: a region on an unselected record is dropped, not an error.
        kept = _setting("data.regions", lambda: regions_lib.read_bed(data.regions, genome.sizes(), aliases))
        splits = {split: intersect_intervals(intervals, kept) for split, intervals in splits.items()}
        restricted.append(f"data.regions={data.regions}")
    if data.exclude:
        removed = _setting("data.exclude", lambda: regions_lib.read_bed(data.exclude, genome.sizes(), aliases))
        splits = {split: subtract_intervals(intervals, removed) for split, intervals in splits.items()}
        restricted.append(f"data.exclude={data.exclude}")
    try:
        check_splits(splits, data.window_len)
    except SplitError as e:
        raise SplitError(f"{e} (after {', '.join(restricted)})" if restricted else str(e)) from None
    return splits


def _setting(key: str, read):
    try:
        return read()
    except regions_lib.RegionError as e:
        raise regions_lib.RegionError(f"{key}: {e}") from None


if __name__ == "__main__":  # the leak audit was ``python -m jaxseq.splits audit`` before it had its own command
    import sys

    print("error: the leak audit is its own command now: python -m jaxseq.audit [--config FILE | --run RUN] ...",
          file=sys.stderr)
    raise SystemExit(2)
