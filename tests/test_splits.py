"""Tests for jaxseq.splits: disjoint, leak-free intervals and one-line SplitErrors."""

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxseq.config import DataConfig
from jaxseq.genome import Genome, default_fasta
from jaxseq.loader import LoaderError, TrainLoader, eval_batches
from jaxseq.regions import RegionError
from jaxseq.splits import (SPLITS, Interval, SplitError, check_splits, compute_splits, intersect_intervals,
                           split_genome, subtract_intervals)


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
    restrict = draw(restrictions(lengths))
    return lengths, block_len, window_len, stride, max_n_fraction, seed, n_density, restrict


@st.composite
def restrictions(draw, lengths):
    """data.records / data.regions / data.exclude: each absent or a random selection or BED."""
    def bed(draw_count):
        spans = []
        for _ in range(draw_count):
            name = draw(st.sampled_from(list(lengths)))
            start = draw(st.integers(0, lengths[name]))
            spans.append((name, start, draw(st.integers(start, lengths[name]))))
        return spans  # unsorted, overlapping and zero-length spans included

    records = draw(st.one_of(st.none(), st.lists(st.sampled_from(list(lengths)), min_size=1, unique=True)))
    regions = bed(draw(st.integers(1, 6))) if draw(st.booleans()) else None
    exclude = bed(draw(st.integers(1, 6))) if draw(st.booleans()) else None
    return records, regions, exclude


@pytest.fixture(scope="module")
def bed_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("beds")


def _split_with(lengths, restrict, folder, **settings):
    """split_genome on a genome of ``lengths`` with the drawn restrictions written as BED files."""
    records, regions, exclude = restrict
    paths = {}
    for key, spans in (("regions", regions), ("exclude", exclude)):
        if spans is not None:
            paths[key] = str(folder / f"{key}.bed")
            Path(paths[key]).write_text("".join(f"{n}\t{a}\t{b}\n" for n, a, b in spans))
    data = DataConfig(records=list(records or []), **paths, **settings)
    return split_genome(SimpleNamespace(sizes=lambda: dict(lengths)), data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windowed_genomes())
def test_windows_of_different_splits_never_share_a_base(bed_dir, case):
    lengths, block_len, window_len, stride, max_n_fraction, seed, n_density, restrict = case
    rng = np.random.default_rng(seed)
    tokens = {}
    for name, length in lengths.items():
        seq = rng.integers(0, 4, length).astype(np.uint8)
        seq[rng.random(length) < n_density] = 4
        tokens[name] = seq
    try:
        splits = _split_with(lengths, restrict, bed_dir, block_len=block_len, proportions=[0.6, 0.2, 0.2],
                             split_seed=seed, window_len=window_len)
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
        _assert_restricted(windows_of[split], restrict)

    covered = {split: _coverage(lengths, windows) for split, windows in windows_of.items()}
    present = list(covered)
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            for name in lengths:
                assert not (covered[a][name] & covered[b][name]).any(), (a, b, name)


def _assert_restricted(windows, restrict):
    records, regions, exclude = restrict
    for record, start, end in windows:
        assert records is None or record in records
        # wholly inside one region (regions are merged first, so overlapping regions count as one)
        if regions is not None:
            inside = np.zeros(end, dtype=bool)
            for n, a, b in regions:
                if n == record:
                    inside[a:min(b, end)] = True
            assert inside[start:end].all()
        # shares no base with an excluded interval (a zero-length one holds no base)
        if exclude is not None:
            assert not any(n == record and a < b and a < end and start < b for n, a, b in exclude)


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


def test_subtract_and_intersect_intervals():
    intervals = [Interval("a", 0, 100), Interval("b", 10, 20), Interval("a", 200, 300)]
    cut = [("a", 50, 60), ("a", 55, 70), ("a", 90, 210), ("b", 15, 15), ("c", 0, 5), ("a", 299, 400)]
    assert subtract_intervals(intervals, cut) == [
        Interval("a", 0, 50), Interval("a", 70, 90), Interval("b", 10, 20), Interval("a", 210, 299)]
    assert intersect_intervals(intervals, cut) == [
        Interval("a", 50, 70), Interval("a", 90, 100), Interval("a", 200, 210), Interval("a", 299, 300)]
    assert subtract_intervals(intervals, []) == intervals and intersect_intervals(intervals, []) == []


def test_split_genome_applies_records_regions_exclude_and_aliases(tmp_path):
    genome = SimpleNamespace(sizes=lambda: {"chr1": 1000, "chr2": 800, "chrM": 100})
    (tmp_path / "aliases.tsv").write_text("chr1\t1\nchr2\t2\nchrM\tMT\n")
    (tmp_path / "regions.bed").write_text("1\t0\t600\nchr2\t100\t700\nMT\t0\t100\n")
    (tmp_path / "exclude.bed").write_text("chr1\t200\t250\n")
    files = dict(aliases=str(tmp_path / "aliases.tsv"), regions=str(tmp_path / "regions.bed"),
                 exclude=str(tmp_path / "exclude.bed"))
    data = DataConfig(split="records", valid_records=["2"], test_records=["MT"], records=["chr*"], window_len=50, **files)
    assert split_genome(genome, data) == {"train": [Interval("chr1", 0, 200), Interval("chr1", 250, 600)],
                                          "valid": [Interval("chr2", 100, 700)], "test": [Interval("chrM", 0, 100)]}
    data.records = ["1", "2"]  # chrM not selected: it cannot be held out
    with pytest.raises(SplitError, match=r"test_records names unknown record\(s\) \['chrM'\]"):
        split_genome(genome, data)
    (tmp_path / "regions.bed").write_text("chr2\t0\t800\nchrM\t0\t100\n")
    data.records = []
    with pytest.raises(SplitError, match=r"split 'train' is empty: .* \(after data.regions=.*regions.bed, "
                                         r"data.exclude=.*exclude.bed\)$"):
        split_genome(genome, data)


@pytest.mark.parametrize("key, text, message", [
    ("regions", "chr1\t0\t200000\n", r"data.regions: .*r.bed, line 1: end 200000 is past the end of record 'chr1'"),
    ("exclude", "chrX\t0\t1\n", r"data.exclude: .*r.bed, line 1: unknown record 'chrX'"),
    ("aliases", "chr1\t1\textra\n", r"data.aliases: .*r.bed, line 1: expected two columns"),
])
def test_split_genome_bad_files_name_the_setting(tmp_path, key, text, message):
    (tmp_path / "r.bed").write_text(text)
    with pytest.raises(RegionError, match=message) as info:
        split_genome(SimpleNamespace(sizes=lambda: {"chr1": 100_000}), DataConfig(**{key: str(tmp_path / "r.bed")}))
    assert "\n" not in str(info.value)


def test_split_genome_on_the_bundled_genome_matches_compute_splits(tmp_path):
    genome = Genome.open(default_fasta(), cache_dir=tmp_path / "cache")
    data = DataConfig()
    expected = compute_splits(genome.lengths, block_len=data.block_len, proportions=tuple(data.proportions), seed=0)
    assert split_genome(genome, data) == expected
    (tmp_path / "ex.bed").write_text(f"{genome.names[0]}\t0\t10000\n")
    restricted = split_genome(genome, DataConfig(exclude=str(tmp_path / "ex.bed")))
    assert restricted == {s: subtract_intervals(expected[s], [(genome.names[0], 0, 10000)]) for s in SPLITS}
    assert min(i.start for s in SPLITS for i in restricted[s]) == 10000


@pytest.mark.parametrize("override, message", [
    ("data.regions=/nonexistent/r.bed", "data.regions: file /nonexistent/r.bed does not exist"),
    ("data.exclude=/nonexistent/x.bed", "data.exclude: file /nonexistent/x.bed does not exist"),
    ("data.aliases=/nonexistent/a.tsv", "data.aliases: file /nonexistent/a.tsv does not exist"),
    ("data.records=['chr1', '']", "data.records[1]: expected a record name or glob, got ''"),
])
def test_restriction_settings_are_checked_with_the_config(override, message):
    from jaxseq.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])
