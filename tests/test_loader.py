"""Tests for jaxseq.loader: sampling, N filtering, augmentation, determinism, resume, eval tiling, sharding."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxseq import tokens as tok
from jaxseq.windows import permute as _permute, valid_start_ranges as _valid_start_ranges
from jaxseq.loader import (
    AUGMENTATIONS,
    LoaderError,
    TrainLoader,
    count_eval_windows,
    eval_batches,
)
from jaxseq.splits import Interval

ALL_AUGMENT = ("identity", "reverse", "complement", "reverse_complement")
TRANSFORMS = {
    "identity": lambda w: w,
    "reverse": tok.reverse,
    "complement": tok.complement,
    "reverse_complement": tok.reverse_complement,
}


def random_genome(lengths, seed=0, n_runs=()):
    """Record name -> uint8 ACGT tokens; ``n_runs`` is a list of (record, start, end) set to N."""
    rng = np.random.default_rng(seed)
    genome = {name: rng.integers(0, 4, length).astype(np.uint8) for name, length in lengths.items()}
    for record, start, end in n_runs:
        genome[record][start:end] = tok.N
    return genome


def whole(genome):
    return [Interval(name, 0, len(seq)) for name, seq in genome.items()]


def window_index(genome, window_len):
    """bytes of every window -> (record, start); asserts windows are unique (true for random genomes)."""
    index = {}
    for name, seq in genome.items():
        for start in range(len(seq) - window_len + 1):
            index[seq[start : start + window_len].tobytes()] = (name, start)
    assert len(index) == sum(len(s) - window_len + 1 for s in genome.values())
    return index


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_loader_does_not_import_jax():
    code = "import sys, jaxseq.loader; assert 'jax' not in sys.modules, 'jax imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batch_shapes_and_dtypes(prefetch):
    genome = random_genome({"a": 3000, "b": 500})
    with TrainLoader(genome, whole(genome), window_len=32, batch_size=16, seed=0, prefetch=prefetch) as loader:
        batch = next(loader)
    assert set(batch) == {"tokens", "weights"}
    assert batch["tokens"].dtype == np.int8 and batch["tokens"].shape == (16, 32)
    assert batch["weights"].dtype == np.float32 and batch["weights"].shape == (16,)
    np.testing.assert_array_equal(batch["weights"], 1.0)
    assert batch["tokens"].min() >= 0 and batch["tokens"].max() <= 3


def test_windows_come_from_the_genome_inside_the_intervals():
    genome = random_genome({"a": 2000, "b": 800})
    intervals = [Interval("a", 100, 400), Interval("b", 500, 800)]
    index = window_index(genome, 24)
    with TrainLoader(genome, intervals, window_len=24, batch_size=64, seed=1, augment=["identity"]) as loader:
        for batch in take(loader, 20):
            for window in batch["tokens"].astype(np.uint8):
                record, start = index[window.tobytes()]
                assert any(i.record == record and i.start <= start and start + 24 <= i.end for i in intervals)


def test_same_seed_same_batches_regardless_of_prefetch_and_different_seed_differs():
    genome = random_genome({"a": 5000, "b": 3000})
    kwargs = dict(window_len=50, batch_size=32, augment=ALL_AUGMENT)
    with TrainLoader(genome, whole(genome), seed=7, prefetch=0, **kwargs) as a, \
         TrainLoader(genome, whole(genome), seed=7, prefetch=3, **kwargs) as b, \
         TrainLoader(genome, whole(genome), seed=8, prefetch=3, **kwargs) as c:
        for x, y, z in zip(take(a, 10), take(b, 10), take(c, 10)):
            np.testing.assert_array_equal(x["tokens"], y["tokens"])
            assert not np.array_equal(x["tokens"], z["tokens"])


def test_augmentation_outputs_an_allowed_transform_of_a_genome_window():
    genome = random_genome({"a": 4000})
    index = window_index(genome, 40)
    used = {name: 0 for name in ALL_AUGMENT}
    with TrainLoader(genome, whole(genome), window_len=40, batch_size=256, seed=3, augment=ALL_AUGMENT) as loader:
        for batch in take(loader, 8):
            for window in batch["tokens"].astype(np.uint8):
                # Every transform is an involution: undoing it must give a genome window.
                found = [name for name in ALL_AUGMENT if TRANSFORMS[name](window).tobytes() in index]
                assert len(found) == 1, found  # random genome: exactly one transform explains the window
                used[found[0]] += 1
    total = sum(used.values())
    for name, count in used.items():
        assert 0.2 < count / total < 0.3, used  # uniform among the four (2048 draws)


@pytest.mark.parametrize("augment", [("reverse_complement",), ("complement",), ("reverse",), ("identity", "reverse")])
def test_augmentation_restricted_to_the_given_set(augment):
    genome = random_genome({"a": 3000}, n_runs=[("a", 1000, 1005)])
    index = window_index(genome, 30)
    with TrainLoader(genome, whole(genome), window_len=30, batch_size=128, seed=0, augment=augment,
                     max_n_fraction=0.5) as loader:
        for window in next(loader)["tokens"].astype(np.uint8):
            assert any(TRANSFORMS[name](window).tobytes() in index for name in augment)


def test_complement_keeps_n():
    genome = {"a": np.full(100, tok.N, dtype=np.uint8)}
    genome["a"][:50] = tok.A
    with TrainLoader(genome, whole(genome), window_len=100, batch_size=2, seed=0, augment=["complement"],
                     max_n_fraction=1.0, prefetch=0) as loader:
        window = next(loader)["tokens"][0]
    np.testing.assert_array_equal(window[:50], tok.T)
    np.testing.assert_array_equal(window[50:], tok.N)


@st.composite
def n_genomes(draw):
    length = draw(st.integers(1, 300))
    n_positions = draw(st.lists(st.integers(0, length - 1), max_size=40))
    run_len = draw(st.integers(1, 12))
    window_len = draw(st.integers(1, 40))
    max_n = draw(st.integers(0, window_len))
    offset = draw(st.integers(0, 50))
    return length, n_positions, run_len, window_len, max_n, offset


@settings(max_examples=400, deadline=None)
@given(n_genomes())
def test_valid_start_ranges_match_brute_force(case):
    length, n_positions, run_len, window_len, max_n, offset = case
    is_n = np.zeros(length, dtype=bool)
    for p in n_positions:
        is_n[p : p + run_len] = True
    edges = np.diff(is_n.astype(np.int8), prepend=0, append=0)
    run_starts = np.flatnonzero(edges == 1).astype(np.int64) + offset
    run_ends = np.flatnonzero(edges == -1).astype(np.int64) + offset
    lo, hi = _valid_start_ranges(offset, offset + length, window_len, run_starts, run_ends, max_n)
    got = np.zeros(length, dtype=bool)
    for a, b in zip(lo.tolist(), hi.tolist()):
        assert not got[a - offset : b - offset].any()  # disjoint
        got[a - offset : b - offset] = True
    expected = np.zeros(length, dtype=bool)
    for s in range(length - window_len + 1):
        expected[s] = is_n[s : s + window_len].sum() <= max_n
    np.testing.assert_array_equal(got, expected)
    assert (lo[1:] > hi[:-1]).all()  # merged: touching ranges are one


@pytest.mark.parametrize("max_n_fraction", [0.0, 0.05, 0.25])
@pytest.mark.parametrize("stride", [None, 7])
def test_no_window_exceeds_max_n_fraction(max_n_fraction, stride):
    rng = np.random.default_rng(5)
    runs = [("a", int(s), int(s) + int(rng.integers(1, 30))) for s in rng.integers(0, 20_000, 60)]
    runs += [("a", 5000, 5003), ("b", 0, 10)]
    genome = random_genome({"a": 20_000, "b": 300}, n_runs=runs)
    assert (genome["a"] == tok.N).mean() > 0.02
    seen_n = 0
    with TrainLoader(genome, whole(genome), window_len=60, batch_size=256, seed=0, augment=ALL_AUGMENT,
                     max_n_fraction=max_n_fraction, stride=stride) as loader:
        for batch in take(loader, 20):
            n_count = (batch["tokens"] == tok.N).sum(axis=1)
            assert (n_count / 60 <= max_n_fraction + 1e-12).all()
            seen_n += n_count.sum()
    assert (seen_n == 0) == (max_n_fraction == 0.0)  # N really is allowed when the fraction permits it


def test_start_distribution_is_uniform_over_valid_starts_next_to_an_n_run():
    # Valid starts: [0, 951) and [1010, 1951). A "move to the next valid start" sampler would pile the
    # 59 invalid starts onto start 1010; rejection sampling (what we must match) keeps all equal.
    genome = random_genome({"a": 2000}, seed=11, n_runs=[("a", 1000, 1010)])
    prefix_len = 16
    prefix_to_start = {genome["a"][s : s + prefix_len].tobytes(): s for s in range(0, 1951)}
    assert len(prefix_to_start) == 1951  # prefixes identify the start
    with TrainLoader(genome, whole(genome), window_len=50, batch_size=4096, seed=0, augment=["identity"],
                     prefetch=0) as loader:
        windows = np.concatenate([b["tokens"] for b in take(loader, 47)]).astype(np.uint8)
    starts = np.array([prefix_to_start[w[:prefix_len].tobytes()] for w in windows])
    counts = np.bincount(starts, minlength=1951)
    assert counts[951:1010].sum() == 0
    valid = np.concatenate([counts[:951], counts[1010:]])
    expected = len(starts) / valid.size  # ~101 per start
    chi2 = ((valid - expected) ** 2 / expected).sum()
    dof = valid.size - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof)  # fixed seed: deterministic, far from the bound by design
    assert counts[1010] < 2 * expected and counts[950] < 2 * expected
    # The sides of the run get their share: 951 / 1892 of draws on the left.
    assert abs(valid[:951].sum() / len(starts) - 951 / 1892) < 0.01


def test_all_n_genome_is_an_error_at_construction():
    genome = {"a": np.full(10_000, tok.N, dtype=np.uint8)}
    with pytest.raises(LoaderError, match=r"no window of window_len=64 with N fraction <= max_n_fraction=0.0"):
        TrainLoader(genome, whole(genome), window_len=64, batch_size=8, seed=0)


def test_dense_n_leaves_no_valid_window_is_an_error():
    genome = random_genome({"a": 5000})
    genome["a"][::20] = tok.N  # every 64-window has >= 3 N
    with pytest.raises(LoaderError, match="raise max_n_fraction or lower window_len"):
        TrainLoader(genome, whole(genome), window_len=64, batch_size=8, seed=0, max_n_fraction=0.03)
    with TrainLoader(genome, whole(genome), window_len=64, batch_size=8, seed=0, max_n_fraction=0.05) as loader:
        assert ((next(loader)["tokens"] == tok.N).sum(axis=1) <= 3).all()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(intervals=[Interval("a", 0, 30)]), r"none of the 1 interval\(s\) is at least window_len=64 bases long"),
        (dict(intervals=[Interval("zz", 0, 30)]), r"unknown record 'zz'"),
        (dict(intervals=[Interval("a", 0, 1001)]), r"outside record 'a' of length 1000"),
        (dict(batch_size=10, process_count=3), r"batch_size=10 is not divisible by process_count=3"),
        (dict(process_index=2, process_count=2), r"process_index < process_count"),
        (dict(augment=["identity", "flip"]), r"unknown augmentation\(s\) \['flip'\]"),
        (dict(augment=[]), r"augment must name at least one"),
        (dict(augment="identity"), r"augment must be a list"),
        (dict(augment=["reverse", "reverse"]), r"lists a name twice"),
        (dict(seed=-1), r"seed must be a non-negative integer"),
        (dict(window_len=0), r"window_len must be a positive integer"),
        (dict(stride=0), r"stride must be a positive integer"),
        (dict(max_n_fraction=1.5), r"max_n_fraction must be in \[0, 1\]"),
    ],
)
def test_construction_errors(kwargs, pattern):
    genome = random_genome({"a": 1000})
    args = {"intervals": whole(genome), "window_len": 64, "batch_size": 8, "seed": 0, **kwargs}
    with pytest.raises(LoaderError, match=pattern):
        TrainLoader(genome, args.pop("intervals"), **args)


@pytest.mark.parametrize("stride", [None, 13])
def test_resume_gives_exactly_the_batches_of_an_uninterrupted_run(stride):
    genome = random_genome({"a": 3000, "b": 2000})
    kwargs = dict(window_len=32, batch_size=24, seed=5, augment=ALL_AUGMENT, stride=stride, prefetch=3)
    with TrainLoader(genome, whole(genome), **kwargs) as loader:
        take(loader, 7)
        state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON checkpoint
        expected = take(loader, 5)
    assert state["batch_index"] == 7
    with TrainLoader(genome, whole(genome), **kwargs) as resumed:
        next(resumed)  # the thread has prefetched from 1 on; loading must discard that
        resumed.load_state_dict(state)
        for want, got in zip(expected, take(resumed, 5)):
            np.testing.assert_array_equal(want["tokens"], got["tokens"])


def test_load_state_dict_rejects_another_config():
    genome = random_genome({"a": 3000})
    with TrainLoader(genome, whole(genome), window_len=32, batch_size=8, seed=5, prefetch=0) as loader:
        state = loader.state_dict()
    with TrainLoader(genome, whole(genome), window_len=32, batch_size=16, seed=5, prefetch=0) as other:
        with pytest.raises(LoaderError, match=r"batch_size: saved 8 vs now 16"):
            other.load_state_dict(state)
    with TrainLoader(genome, [Interval("a", 0, 2000)], window_len=32, batch_size=8, seed=5, prefetch=0) as other:
        with pytest.raises(LoaderError, match=r"data: saved"):
            other.load_state_dict(state)


@pytest.mark.parametrize("stride", [None, 9])
def test_process_shares_concatenate_to_the_single_process_batch(stride):
    genome = random_genome({"a": 3000, "b": 1500}, n_runs=[("a", 100, 200)])
    kwargs = dict(window_len=32, batch_size=24, seed=2, augment=ALL_AUGMENT, stride=stride, prefetch=0)
    with TrainLoader(genome, whole(genome), **kwargs) as single:
        full = take(single, 4)
    shares = []
    for p in range(3):
        with TrainLoader(genome, whole(genome), process_index=p, process_count=3, **kwargs) as loader:
            shares.append(take(loader, 4))
    for i in range(4):
        assert shares[0][i]["tokens"].shape == (8, 32)
        np.testing.assert_array_equal(np.concatenate([s[i]["tokens"] for s in shares]), full[i]["tokens"])


def test_strided_epochs_visit_every_valid_tile_once_in_a_new_order():
    genome = random_genome({"a": 1000, "b": 430}, n_runs=[("a", 300, 305)])
    intervals = [Interval("a", 0, 1000), Interval("b", 10, 430)]
    window_len, stride = 20, 10
    tiles = {(name, s) for i in intervals for name in [i.record]
             for s in range(i.start, i.end - window_len + 1, stride)
             if not (genome[name][s : s + window_len] == tok.N).any()}
    index = window_index(genome, window_len)
    with TrainLoader(genome, intervals, window_len=window_len, batch_size=10, seed=0, augment=["identity"],
                     stride=stride, prefetch=0) as loader:
        assert loader.num_windows == len(tiles)
        windows = np.concatenate([b["tokens"] for b in take(loader, 2 * len(tiles) // 10 + 1)]).astype(np.uint8)
    visited = [index[w.tobytes()] for w in windows]
    first, second = visited[: len(tiles)], visited[len(tiles) : 2 * len(tiles)]
    assert set(first) == tiles and len(set(first)) == len(tiles)
    assert set(second) == tiles
    assert first != second  # reshuffled each epoch
    assert first != sorted(first)  # and shuffled at all


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 2**63))
def test_permute_is_a_bijection(n, key):
    keys = np.random.SeedSequence(key).generate_state(6, np.uint64)
    out = _permute(np.arange(n, dtype=np.int64), n, keys)
    np.testing.assert_array_equal(np.sort(out), np.arange(n))


def test_close_stops_the_daemon_thread_and_next_raises():
    genome = random_genome({"a": 2000})
    loader = TrainLoader(genome, whole(genome), window_len=32, batch_size=8, seed=0, prefetch=2)
    next(loader)
    thread = loader._thread
    assert thread.daemon and thread.is_alive()
    loader.close()
    assert not thread.is_alive()
    loader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_prefetch_hands_over_chunks_and_a_failure_after_the_batches_made_before_it(monkeypatch):
    """Small batches travel in chunks (one queue hand-off per chunk); batches, resumption and errors are
    those of one batch at a time."""
    from jaxseq import loader as loader_lib

    genome = random_genome({"a": 3000})
    kwargs = dict(window_len=32, batch_size=8, seed=4, augment=ALL_AUGMENT)
    with TrainLoader(genome, whole(genome), prefetch=0, **kwargs) as plain:
        expected = [next(plain)["tokens"] for _ in range(40)]
    with TrainLoader(genome, whole(genome), prefetch=2, **kwargs) as chunked:
        assert chunked._source.chunk == loader_lib._MAX_CHUNK  # 2,048 // 8 rows, capped
        got = [next(chunked)["tokens"] for _ in range(13)]
        state = chunked.state_dict()
        assert state["batch_index"] == 13 and len(chunked._ready) == chunked._source.chunk - 13
    with TrainLoader(genome, whole(genome), prefetch=2, **kwargs) as resumed:
        resumed.load_state_dict(state)
        got += [next(resumed)["tokens"] for _ in range(27)]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)

    real_make = loader_lib._BatchSource.make

    def make(self, index):
        if index == 5:
            raise OSError("disk read failed")
        return real_make(self, index)

    monkeypatch.setattr(loader_lib._BatchSource, "make", make)
    with TrainLoader(genome, whole(genome), prefetch=2, **kwargs) as failing:
        for i in range(5):
            np.testing.assert_array_equal(next(failing)["tokens"], expected[i])
        with pytest.raises(OSError, match="disk read failed"):
            next(failing)


def test_unfinished_loader_does_not_hang_interpreter_exit():
    code = (
        "import numpy as np\n"
        "from jaxseq.loader import TrainLoader\n"
        "from jaxseq.splits import Interval\n"
        "g = {'a': np.random.default_rng(0).integers(0, 4, 5000).astype(np.uint8)}\n"
        "loader = TrainLoader(g, [Interval('a', 0, 5000)], window_len=32, batch_size=64, seed=0, prefetch=4)\n"
        "next(loader)\n"
        "print('done')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr


def test_dropping_the_loader_stops_its_thread():
    genome = random_genome({"a": 2000})
    loader = TrainLoader(genome, whole(genome), window_len=32, batch_size=8, seed=0, prefetch=2)
    next(loader)
    thread = loader._thread
    del loader
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert all(t is not thread for t in threading.enumerate())


# --------------------------------------------------------------------------------------------------
# Evaluation


def eval_setup():
    genome = random_genome({"a": 1000, "b": 257, "c": 20}, n_runs=[("a", 0, 40)])
    intervals = [Interval("a", 0, 500), Interval("a", 600, 1000), Interval("b", 3, 257), Interval("c", 0, 20)]
    return genome, intervals


def expected_tiles(intervals, window_len, stride):
    return [(i.record, s) for i in intervals for s in range(i.start, i.end - window_len + 1, stride)]


@pytest.mark.parametrize("stride", [None, 30])
def test_eval_covers_every_window_once_with_padding(stride):
    genome, intervals = eval_setup()
    names = list(genome)
    window_len, batch_size = 50, 8
    tiles = expected_tiles(intervals, window_len, stride or window_len)
    batches = list(eval_batches(genome, intervals, window_len=window_len, batch_size=batch_size, stride=stride))
    assert count_eval_windows(genome, intervals, window_len=window_len, stride=stride) == len(tiles)
    assert len(batches) == -(-len(tiles) // batch_size)
    seen = []
    for batch in batches:
        assert batch["tokens"].dtype == np.int8 and batch["tokens"].shape == (batch_size, window_len)
        assert batch["weights"].dtype == np.float32 and batch["record"].dtype == np.int32
        assert batch["start"].dtype == np.int64 and "soft_mask" not in batch
        for row in range(batch_size):
            if batch["weights"][row] == 0:
                assert (batch["tokens"][row] == tok.N).all() and batch["record"][row] == -1
                continue
            name, start = names[batch["record"][row]], int(batch["start"][row])
            np.testing.assert_array_equal(batch["tokens"][row], genome[name][start : start + window_len])
            seen.append((name, start))
    assert seen == tiles  # every window exactly once, in interval order (N windows kept for eval)
    assert sum(b["weights"].sum() for b in batches) == len(tiles)
    assert (batches[-1]["weights"] == 0).sum() == len(batches) * batch_size - len(tiles)


def test_eval_soft_mask_and_process_shares():
    genome, intervals = eval_setup()
    rng = np.random.default_rng(1)
    soft = {name: rng.random(len(seq)) < 0.3 for name, seq in genome.items()}
    soft["b"] = soft["b"].astype(np.uint8)  # a uint8 track is accepted too
    kwargs = dict(window_len=50, batch_size=6, soft_mask=soft)
    single = list(eval_batches(genome, intervals, **kwargs))
    shares = [list(eval_batches(genome, intervals, process_index=p, process_count=3, **kwargs)) for p in range(3)]
    names = list(genome)
    for i, batch in enumerate(single):
        assert batch["soft_mask"].dtype == bool and batch["soft_mask"].shape == (6, 50)
        for row in np.flatnonzero(batch["weights"]):
            name, start = names[batch["record"][row]], batch["start"][row]
            np.testing.assert_array_equal(batch["soft_mask"][row], soft[name][start : start + 50].astype(bool))
        assert not batch["soft_mask"][batch["weights"] == 0].any()
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([s[i][key] for s in shares]), batch[key])
    assert all(len(s) == len(single) for s in shares)


def test_eval_errors_are_raised_at_the_call():
    genome, intervals = eval_setup()
    with pytest.raises(LoaderError, match="not divisible by process_count"):
        eval_batches(genome, intervals, window_len=50, batch_size=7, process_count=2)
    with pytest.raises(LoaderError, match="no evaluation window"):
        eval_batches(genome, [Interval("c", 0, 20)], window_len=50, batch_size=8)
    with pytest.raises(LoaderError, match="soft_mask lacks record"):
        eval_batches(genome, intervals, window_len=50, batch_size=8, soft_mask={"a": np.zeros(1000, bool)})


def test_augmentations_table_is_the_documented_set():
    assert set(AUGMENTATIONS) == set(ALL_AUGMENT)
