"""Tests for jaxseq.splits: disjoint, leak-free intervals and one-line SplitErrors."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxseq.loader import LoaderError, TrainLoader, eval_batches
from jaxseq.splits import SPLITS, Interval, SplitError, check_splits, compute_splits


def _coverage(lengths, intervals):
    """Per record, a bool array marking the bases covered by the intervals."""
    masks = {name: np.zeros(length, dtype=bool) for name, length in lengths.items()}
    for record, start, end in intervals:
        masks[record][start:end] = True
    return masks


def _blocks_in(interval, block_len):
    return -(-(interval.end - interval.start) // block_len)


@st.composite
def genome_settings(draw):
    n_records = draw(st.integers(1, 4))
    lengths = {f"chr{i}": draw(st.integers(0, 3000)) for i in range(n_records)}
    weights = draw(st.tuples(*[st.integers(0, 10)] * 3).filter(lambda w: sum(w) > 0))
    proportions = tuple(w / sum(weights) for w in weights)
    block_len = draw(st.integers(1, 1500))
    seed = draw(st.integers(0, 2**32 - 1))
    return lengths, proportions, block_len, seed


@settings(max_examples=300, deadline=None)
@given(genome_settings())
def test_blocks_partition_every_base_into_exactly_one_split(case):
    lengths, proportions, block_len, seed = case
    try:
        splits = compute_splits(lengths, block_len=block_len, proportions=proportions, seed=seed)
    except SplitError as error:
        assert "is empty" in str(error)
        return
    assert set(splits) == set(SPLITS)
    covered = {name: np.zeros(length, dtype=np.int32) for name, length in lengths.items()}
    names = list(lengths)
    for split, intervals in splits.items():
        # Sorted by (file order, start), inside the record, block-aligned, and merged (never touching).
        keys = [(names.index(i.record), i.start) for i in intervals]
        assert keys == sorted(keys)
        for interval in intervals:
            assert 0 <= interval.start < interval.end <= lengths[interval.record]
            assert interval.start % block_len == 0
            assert interval.end % block_len == 0 or interval.end == lengths[interval.record]
            covered[interval.record][interval.start : interval.end] += 1
        for a, b in zip(intervals, intervals[1:]):
            assert a.record != b.record or a.end < b.start
    for name in names:
        assert (covered[name] == 1).all(), name  # every base in exactly one split

    # Block counts are the largest-remainder rounding of the proportions.
    total_blocks = sum(-(-n // block_len) for n in lengths.values())
    counts = [sum(_blocks_in(i, block_len) for i in splits[s]) for s in SPLITS]
    assert sum(counts) == total_blocks
    for count, fraction in zip(counts, proportions):
        assert abs(count - fraction * total_blocks) < 1


@st.composite
def windowed_genomes(draw):
    n_records = draw(st.integers(1, 3))
    lengths = {f"r{i}": draw(st.integers(0, 1500)) for i in range(n_records)}
    block_len = draw(st.integers(5, 120))
    window_len = draw(st.integers(1, 40))
    stride = draw(st.one_of(st.none(), st.integers(1, 50)))
    max_n_fraction = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 1000))
    n_density = draw(st.sampled_from([0.0, 0.01, 0.2]))
    return lengths, block_len, window_len, stride, max_n_fraction, seed, n_density


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windowed_genomes())
def test_windows_of_different_splits_never_share_a_base(case):
    lengths, block_len, window_len, stride, max_n_fraction, seed, n_density = case
    rng = np.random.default_rng(seed)
    tokens = {}
    for name, length in lengths.items():
        seq = rng.integers(0, 4, length).astype(np.uint8)
        seq[rng.random(length) < n_density] = 4
        tokens[name] = seq
    try:
        splits = compute_splits(lengths, block_len=block_len, proportions=(0.6, 0.2, 0.2), seed=seed)
        check_splits(splits, window_len)
    except SplitError:
        return
    windows_of = {}
    for split, intervals in splits.items():
        if split == "train":
            try:
                loader = TrainLoader(
                    tokens, intervals, window_len=window_len, batch_size=4, seed=seed,
                    max_n_fraction=max_n_fraction, stride=stride, prefetch=0,
                )
            except LoaderError:
                continue  # every train window fails the N filter: a construction error, tested elsewhere
            # Every window the sampler can ever return (the whole table), not just a few draws.
            table = loader._source.table
            records, starts = table.lookup(np.arange(table.total))
        else:
            batches = list(eval_batches(tokens, intervals, window_len=window_len, batch_size=7, stride=stride))
            real = np.concatenate([b["weights"] for b in batches]) > 0
            records = np.concatenate([b["record"] for b in batches])[real]
            starts = np.concatenate([b["start"] for b in batches])[real]
        windows_of[split] = [(list(tokens)[r], s, s + window_len) for r, s in zip(records.tolist(), starts.tolist())]
        # Each window lies wholly inside one interval of its own split.
        for record, start, end in windows_of[split]:
            assert any(i.record == record and i.start <= start and end <= i.end for i in intervals)

    covered = {split: _coverage(lengths, windows) for split, windows in windows_of.items()}
    present = list(covered)
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            for name in lengths:
                assert not (covered[a][name] & covered[b][name]).any(), (a, b, name)


def test_blocks_are_deterministic_for_a_seed_and_differ_across_seeds():
    lengths = {"chr1": 1_000_000, "chr2": 500_000}
    first = compute_splits(lengths, block_len=10_000, seed=3)
    assert compute_splits(lengths, block_len=10_000, seed=3) == first
    assert compute_splits(lengths, block_len=10_000, seed=4) != first


def test_blocks_proportions_on_many_blocks():
    lengths = {"chr1": 1_000_000, "chr2": 1_000_000}  # 200 blocks
    splits = compute_splits(lengths, block_len=10_000, proportions=(0.7, 0.2, 0.1), seed=0)
    bases = {s: sum(i.end - i.start for i in splits[s]) for s in SPLITS}
    assert bases == {"train": 1_400_000, "valid": 400_000, "test": 200_000}


def test_last_short_block_is_its_own_block():
    splits = compute_splits({"a": 25, "b": 3}, block_len=10, proportions=(0.5, 0.25, 0.25), seed=1)
    intervals = sorted(i for s in SPLITS for i in splits[s])
    # 3 blocks in "a" ([0,10) [10,20) [20,25)) and one in "b" ([0,3)), merged where adjacent and alike.
    edges = {(i.record, i.start) for i in intervals} | {(i.record, i.end) for i in intervals}
    assert edges <= {("a", 0), ("a", 10), ("a", 20), ("a", 25), ("b", 0), ("b", 3)}
    assert sum(_blocks_in(i, 10) for i in splits["train"]) == 2


def test_records_strategy_holds_out_named_records():
    lengths = {"chr1": 100, "chr2": 50, "chr3": 70, "chrM": 16, "empty": 0}
    splits = compute_splits(lengths, strategy="records", valid_records=["chr2"], test_records=["chr3", "chrM"])
    assert splits == {
        "train": [Interval("chr1", 0, 100)],
        "valid": [Interval("chr2", 0, 50)],
        "test": [Interval("chr3", 0, 70), Interval("chrM", 0, 16)],
    }
    check_splits(splits, window_len=16)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(strategy="chromosomes"), r"unknown split strategy 'chromosomes'; expected one of \['records', 'blocks'\]"),
        (dict(block_len=0), r"block_len must be a positive integer, got 0"),
        (dict(block_len=2.5), r"block_len must be a positive integer"),
        (dict(proportions=(0.9, -0.1, 0.2)), r"proportions must be finite and >= 0"),
        (dict(proportions=(0.5, 0.2, 0.2)), r"proportions must sum to 1, got \(0.5, 0.2, 0.2\)"),
        (dict(proportions=(0.5, 0.5)), r"proportions must be three numbers"),
        (dict(proportions=(1.0, 0.0, 0.0)), r"split 'valid' is empty with strategy='blocks': proportions=\(1.0, 0.0, 0.0\)"),
        (dict(block_len=10_000), r"split 'test' is empty with strategy='blocks'.*block_len=10000"),
        (dict(valid_records=["a"]), r"valid_records=\['a'\] is only used by strategy='records'"),
        (dict(strategy="records", valid_records=["a"], test_records=["zz"]),
         r"test_records names unknown record\(s\) \['zz'\]; known records: \['a', 'b', 'c'\]"),
        (dict(strategy="records", valid_records=["a", "b"], test_records=["b"]),
         r"record\(s\) \['b'\] are in both valid_records and test_records"),
        (dict(strategy="records", valid_records="a", test_records=["b"]), r"valid_records must be a list"),
        (dict(strategy="records", test_records=["b"]), r"split 'valid' is empty with strategy='records'"),
        (dict(strategy="records", valid_records=["a"], test_records=["b", "c"]), r"split 'train' is empty"),
    ],
)
def test_compute_splits_errors(kwargs, pattern):
    lengths = {"a": 12_000, "b": 12_000, "c": 100}  # 3 blocks of 10 kb; 30 of 1 kb
    if "block_len" not in kwargs:
        kwargs = {"block_len": 1000, **kwargs}
    with pytest.raises(SplitError, match=pattern) as info:
        compute_splits(lengths, **kwargs)
    assert "\n" not in str(info.value)


def test_negative_length_is_an_error():
    with pytest.raises(SplitError, match="record 'a' has negative length -1"):
        compute_splits({"a": -1})


@pytest.mark.parametrize(
    "splits, window_len, pattern",
    [
        ({"train": [Interval("a", 0, 10)], "valid": [Interval("a", 10, 20)], "test": []}, 5,
         r"split 'test' is empty"),
        ({"train": [Interval("a", 0, 10)], "valid": [Interval("a", 10, 20)]}, 5, r"split 'test' is empty"),
        ({"train": [Interval("a", 0, 100)], "valid": [Interval("a", 100, 110), Interval("b", 0, 30)],
          "test": [Interval("a", 110, 200)]}, 64,
         r"split 'valid' has no interval of at least window_len=64 bases \(longest is 30 bases, record 'b'\)"),
        ({"train": [Interval("a", 0, 10)], "valid": [Interval("a", 5, 20)], "test": [Interval("a", 30, 40)]}, 5,
         r"intervals overlap in record 'a': \[0, 10\) in 'train' and \[5, 20\) in 'valid'"),
        ({"train": [Interval("a", 10, 10)], "valid": [Interval("a", 10, 20)], "test": [Interval("a", 30, 40)]}, 5,
         r"split 'train' has a malformed interval"),
        ({"train": [Interval("a", 0, 10)], "valid": [Interval("a", 10, 20)], "test": [Interval("a", 30, 40)]}, 0,
         r"window_len must be >= 1"),
    ],
)
def test_check_splits_errors(splits, window_len, pattern):
    with pytest.raises(SplitError, match=pattern) as info:
        check_splits(splits, window_len)
    assert "\n" not in str(info.value)


def test_check_splits_accepts_windows_that_fit():
    splits = compute_splits({"a": 5000}, block_len=100, seed=0)
    check_splits(splits, window_len=100)
    with pytest.raises(SplitError, match="no interval of at least window_len"):
        check_splits(splits, window_len=5000)
