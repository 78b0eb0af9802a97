"""Tests for jaxseq.shared_kmers and the jaxseq.audit command: exact shared k-mer counts on planted repeats,
both strands, N, dedup, the accuracy by group, the CLI."""

import json

import numpy as np
import pytest

from jaxseq import audit, shared_kmers, steps
from jaxseq import tokens as tok
from jaxseq.config import load_config
from jaxseq.splits import Interval, compute_splits

K = 16
L = 64


def _revcomp(t):
    return (3 - t)[::-1]


@pytest.fixture(scope="module")
def planted():
    """chr1 (2000 bp) and chr2 (1000 bp) of random bases with repeats planted across the split boundary."""
    rng = np.random.default_rng(7)
    chr1 = rng.integers(0, 4, 2000).astype(np.uint8)
    chr2 = rng.integers(0, 4, 1000).astype(np.uint8)
    chr1[1100:1140] = chr1[100:140]  # valid <- train, 40 bp, forward
    chr1[1300:1340] = chr1[300:340]  # valid <- train, 40 bp with an N at 1320
    chr1[1320] = tok.N
    chr1[1600:1632] = _revcomp(chr1[500:532])  # test <- train, 32 bp, reverse complement
    chr2[200:250] = chr1[700:750]  # test (other record) <- train, 50 bp
    # The bases beside each copy differ from those beside its source, so no repeat extends by chance.
    for dst, src in ((chr1, (1099, 99)), (chr1, (1140, 140)), (chr1, (1299, 299)), (chr1, (1340, 340)),
                     (chr2, (199, 699)), (chr2, (250, 750))):
        dst[src[0]] = (chr1[src[1]] + 1) % 4
    chr1[1599], chr1[1632] = chr1[532], chr1[499]  # a base never equals its own complement
    splits = {"train": [Interval("chr1", 0, 1000)], "valid": [Interval("chr1", 1000, 1500)],
              "test": [Interval("chr1", 1500, 2000), Interval("chr2", 0, 1000)]}
    return {"chr1": chr1, "chr2": chr2}, splits


def _brute_force_marks(tokens, splits, k):
    """Reference: k-mer starts of one side whose canonical k-mer (as a tuple) occurs on the other side."""
    def kmers(intervals):
        out = {}
        for iv in intervals:
            t = tokens[iv.record]
            for p in range(iv.start, iv.end - k + 1):
                w = t[p:p + k]
                if not (w >= 4).any():
                    out.setdefault(min(tuple(w), tuple(_revcomp(w))), []).append((iv.record, p))
        return out
    train, held = kmers(splits["train"]), kmers(splits["valid"] + splits["test"])
    marks = {name: np.zeros(len(t), bool) for name, t in tokens.items()}
    for side, other in ((train, held), (held, train)):
        for word, places in side.items():
            if word in other:
                for record, p in places:
                    marks[record][p] = True
    return marks


def test_canonical_kmers_match_naive_packing_for_k_1_to_32():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 80).astype(np.uint8)
    t[40] = tok.N
    for k in (1, 2, 3, 7, 16, 31, 32):
        canonical, forward, valid = shared_kmers.canonical_kmers(t, k)
        assert canonical.shape == forward.shape == valid.shape == (80 - k + 1,)
        for p in range(80 - k + 1):
            w = t[p:p + k].astype(np.uint64)
            assert valid[p] == (not (w >= 4).any())
            if valid[p]:
                f = sum(int(b) << (2 * (k - 1 - j)) for j, b in enumerate(w))
                r = sum(int(3 - b) << (2 * j) for j, b in enumerate(w))
                assert int(forward[p]) == f and int(canonical[p]) == min(f, r)


def test_planted_repeats_give_exact_counts(planted):
    tokens, splits = planted
    report = shared_kmers.audit_splits(tokens, splits, k=K, window_len=L, top=5)
    valid, test = report["splits"]["valid"], report["splits"]["test"]
    # valid: forward repeat (25 k-mers, 40 bp) + repeat broken by an N (starts 1300-1304 and 1321-1324).
    assert (valid["windows"], valid["shared_windows"], valid["shared_kmers"]) == (7, 3, 25 + 9)
    assert (valid["bases"], valid["shared_bases"]) == (500, 40 + 20 + 19)
    # test: reverse-complement repeat (17 k-mers, 32 bp) + a repeat in another record (35 k-mers, 50 bp).
    assert (test["windows"], test["shared_windows"], test["shared_kmers"]) == (7 + 15, 2, 17 + 35)
    assert (test["bases"], test["shared_bases"]) == (1500, 32 + 50)
    assert valid["shared_window_fraction"] == pytest.approx(3 / 7)
    assert test["shared_base_fraction"] == pytest.approx(82 / 1500)
    assert report["train"] == {"bases": 1000, "shared_bases": 40 + 39 + 32 + 50}
    # Per-window fractions: valid 13/49, 5/49, 4/48 (the window with the N has 48 valid k-mers), test 13/49, 35/49.
    assert valid["histogram"] == [4 + 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert test["histogram"] == [20, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    assert [(r["split"], r["record"], r["start"], r["end"]) for r in report["regions"]] == [
        ("test", "chr2", 200, 250), ("valid", "chr1", 1100, 1140), ("test", "chr1", 1600, 1632),
        ("valid", "chr1", 1300, 1320), ("valid", "chr1", 1321, 1340)]
    where = [r["train"] for r in report["regions"]]
    assert where[0] == {"record": "chr1", "start": 700, "end": 716, "strand": "+"}
    assert where[2] == {"record": "chr1", "start": 516, "end": 532, "strand": "-"}


def test_hash_passes_and_chunks_do_not_change_the_answer(planted):
    tokens, splits = planted
    whole = shared_kmers.audit_splits(tokens, splits, k=K, window_len=L)
    parts = shared_kmers.audit_splits(tokens, splits, k=K, window_len=L, max_kmers_per_pass=300, chunk=97)
    assert parts == whole
    # Marks computed beforehand (as the command does, once for the audit and the accuracy) give the same report.
    marks = shared_kmers.shared_kmer_marks(tokens, splits, K)
    assert shared_kmers.audit_splits(tokens, splits, k=K, window_len=L, marks=marks) == whole


def test_marks_equal_brute_force_on_block_splits():
    rng = np.random.default_rng(3)
    tokens = {"a": rng.integers(0, 4, 3000).astype(np.uint8), "b": rng.integers(0, 5, 900).astype(np.uint8)}
    tokens["a"][2000:2300] = tokens["a"][0:300]
    tokens["b"][100:160] = _revcomp(tokens["a"][50:110])
    splits = compute_splits({n: len(t) for n, t in tokens.items()}, block_len=250, seed=1)
    expected = _brute_force_marks(tokens, splits, 10)
    marks = shared_kmers.shared_kmer_marks(tokens, splits, 10, max_kmers_per_pass=500, chunk=333)
    for name in tokens:
        np.testing.assert_array_equal(marks[name], expected[name])
    assert sum(m.sum() for m in marks.values()) > 0


@pytest.mark.parametrize("mode", ["drop_train", "drop_eval"])
def test_subtracting_shared_intervals_leaves_nothing_shared(planted, mode):
    tokens, splits = planted
    shared = shared_kmers.shared_intervals(tokens, splits, K)
    assert shared["valid"] == [Interval("chr1", 1100, 1140), Interval("chr1", 1300, 1320), Interval("chr1", 1321, 1340)]
    deduped = shared_kmers.dedup_splits(splits, shared, mode)
    report = shared_kmers.audit_splits(tokens, deduped, k=K, window_len=L)
    assert [s["shared_kmers"] for s in report["splits"].values()] == [0, 0]
    assert report["train"]["shared_bases"] == 0
    removed = {"drop_train": ("train",), "drop_eval": ("valid", "test")}[mode]
    for split in splits:
        before = sum(i.end - i.start for i in splits[split])
        after = sum(i.end - i.start for i in deduped[split])
        assert before - after == (sum(i.end - i.start for i in shared[split]) if split in removed else 0)


def test_unknown_dedup_mode_is_refused():
    with pytest.raises(shared_kmers.AuditError, match="data.dedup"):
        shared_kmers.dedup_splits({"train": [Interval("a", 0, 100)]}, {}, "drop_all")


@pytest.fixture(scope="module")
def planted_fasta(tmp_path_factory):
    """A 6 kb FASTA with 200 bp copied (forward) into valid and 150 bp (reverse complement) into test,
    and the config overrides that split it into 500 bp blocks (the copies land in different splits)."""
    tmp = tmp_path_factory.mktemp("dedup")
    rng = np.random.default_rng(11)
    seq = rng.integers(0, 4, 6000)
    seq[4000:4200] = seq[0:200]
    seq[600:750] = (3 - seq[2100:2250])[::-1]
    # Flanks that differ from the source's, so no copy extends by chance.
    seq[4200] = (seq[200] + 1) % 4
    seq[599], seq[750] = (4 - seq[2250]) % 4, (4 - seq[2099]) % 4
    fasta = tmp / "g.fa"
    fasta.write_text(">g\n" + "".join("ACGT"[b] for b in seq) + "\n")
    return [f"data.fasta={fasta}", f"data.cache_dir={tmp / 'cache'}", "data.block_len=500", "data.window_len=64"]


def _audit_config(overrides, k=20):
    data = steps.open_data(load_config(None, overrides))
    return data, shared_kmers.audit_splits(data.genome.as_mapping(), data.splits, k=k, window_len=64)


@pytest.mark.parametrize("mode", ["drop_train", "drop_eval"])
def test_dedup_config_audits_to_zero_shared(planted_fasta, mode):
    data, before = _audit_config(planted_fasta + ["data.dedup_k=20"])
    assert data.splits == shared_kmers.dedup_splits(data.splits, {}, "none")  # dedup off: the splits as computed
    shared_before = sum(s["shared_kmers"] for s in before["splits"].values())
    # Both planted copies straddle the boundary with split_seed 0: all their k-mers are shared, nothing else.
    assert shared_before == (200 - 20 + 1) + (150 - 20 + 1)
    assert before["train"]["shared_bases"] == 350
    deduped, after = _audit_config(planted_fasta + ["data.dedup_k=20", f"data.dedup={mode}"])
    assert [s["shared_kmers"] for s in after["splits"].values()] == [0, 0]
    assert after["train"]["shared_bases"] == 0
    size = {split: sum(i.end - i.start for i in iv) for split, iv in data.splits.items()}
    size_after = {split: sum(i.end - i.start for i in iv) for split, iv in deduped.splits.items()}
    eval_removed = sum(s["shared_bases"] for s in before["splits"].values())
    assert size["train"] - size_after["train"] == (350 if mode == "drop_train" else 0)
    assert sum(size[s] - size_after[s] for s in ("valid", "test")) == (eval_removed if mode == "drop_eval" else 0)


def test_drop_train_windows_never_hold_a_shared_kmer(planted_fasta):
    overrides = planted_fasta + ["data.dedup_k=20"]
    plain = steps.open_data(load_config(None, overrides))
    marks = shared_kmers.shared_kmer_marks(plain.genome.as_mapping(), plain.splits, 20)
    config = load_config(None, overrides + ["data.dedup=drop_train", "data.augment=[identity]", "train.batch_size=64"])
    data = steps.open_data(config)
    # A forward train k-mer occurs in valid/test iff its start is marked; augmentation is off so windows are forward.
    train_tokens = np.asarray(data.genome.as_mapping()["g"])
    shared = {tuple(train_tokens[p:p + 20]) for p in np.flatnonzero(marks["g"])}
    loader = steps.create_train_loader(config, data)
    seen = 0
    for _, batch in zip(range(40), loader):
        for row in np.asarray(batch["tokens"]):
            assert not any(tuple(row[i:i + 20]) in shared for i in range(64 - 20 + 1))
            seen += 1
    assert seen == 40 * 64 and len(shared) > 0


def test_dedup_settings_are_checked_before_compute():
    from jaxseq.config import ConfigError

    with pytest.raises(ConfigError, match="data.dedup: unknown mode 'drop_trian'.*did you mean drop_train"):
        load_config(None, ["data.dedup=drop_trian"])
    with pytest.raises(ConfigError, match="data.dedup_k must be in 1..32"):
        load_config(None, ["data.dedup_k=40"])


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(5)
    seq = rng.integers(0, 4, 6000)
    seq[4000:4200] = seq[0:200]
    fasta = tmp_path / "g.fa"
    fasta.write_text(">g\n" + "".join("ACGT"[b] for b in seq) + "\n")
    out = tmp_path / "out" / "audit.json"
    sets = ["--set", f"data.fasta={fasta}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "data.block_len=500"]
    assert audit.main([*sets, "--k", "20", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["k"] == 20 and report["window_len"] == 64
    assert set(report["splits"]) == {"valid", "test"}
    assert "largest shared regions" in printed and "k=20" in printed
    # The same genome and config, audited in-process, gives the same report.
    data = steps.open_data(load_config(None, [s for s in sets if s != "--set"]))
    assert shared_kmers.audit_splits(data.genome.as_mapping(), data.splits, k=20, window_len=64) == report


@pytest.mark.parametrize("argv, message", [
    (["--k", "33"], "--k must be an integer in 1..32"),
    (["--k", "65"], "--k must be"),
    (["--set", "data.window_len=16", "--k", "20"], "longer than data.window_len=16"),
    (["--set", "data.fasta=/nonexistent.fa"], "nonexistent.fa"),
    (["--top", "0"], "--top must be >= 1"),
    (["--run", "/nonexistent-run"], "--run audits the run's own config; drop --config/--set"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    code = audit.main(["--set", f"data.cache_dir={tmp_path}", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_missing_run_is_one_line(tmp_path, capsys):
    code = audit.main(["--run", str(tmp_path / "no-run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "no-run" in err and "does not exist" in err and err.count("\n") == 1


def test_accuracy_by_shared_splits_the_test_windows_exactly(planted_fasta):
    from jaxseq.trained import TrainedModel

    config = load_config(None, planted_fasta + ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=2",
                                                "train.batch_size=8"])
    data = steps.open_data(config)
    marks = shared_kmers.shared_kmer_marks(data.genome.as_mapping(), data.splits, 20)
    # Test is [500, 1000): tiles start at 500, 564, ..., 884; the reverse-complement copy [600, 750) has
    # whole 20-mers in the tiles at 564, 628 and 692.
    assert shared_kmers.windows_by_shared(marks, data.splits["test"], 20, 64) == {
        "shared": [Interval("g", 564, 756)], "clean": [Interval("g", 500, 564), Interval("g", 756, 948)]}
    model = TrainedModel.from_config(config, seed=0)
    got = audit.accuracy_by_shared(model, "test", k=20)
    whole = model.evaluate("test")
    assert (got["shared"]["windows"], got["clean"]["windows"]) == (3, 4)
    assert got["shared"]["n_bases"] + got["clean"]["n_bases"] == whole["n_bases"] == 7 * 64
    mixed = (got["shared"]["accuracy"] * 3 + got["clean"]["accuracy"] * 4) / 7
    assert mixed == pytest.approx(whole["accuracy"], abs=1e-12)
    assert got["difference"] == pytest.approx(got["clean"]["accuracy"] - got["shared"]["accuracy"])
    with pytest.raises(audit.AuditError, match="split must be one of valid, test"):
        audit.accuracy_by_shared(model, "train", k=20)


def test_cli_run_adds_the_runs_accuracy_by_group(tiny_run, tmp_path, capsys):
    out = tmp_path / "audit.json"
    assert audit.main(["--run", str(tiny_run), "--k", "12", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    accuracy = report["accuracy"]
    assert report["run"] == str(tiny_run) and accuracy["split"] == "test" and accuracy["k"] == 12
    # Every test window lands in exactly one group, and the groups' counts are the audit's own (lambda
    # phage at k = 12: a few test windows share a 12-mer with train, most do not).
    test = report["splits"]["test"]
    assert 0 < accuracy["shared"]["windows"] == test["shared_windows"] < test["windows"]
    assert accuracy["shared"]["windows"] + accuracy["clean"]["windows"] == test["windows"]
    assert accuracy["difference"] == pytest.approx(accuracy["clean"]["accuracy"] - accuracy["shared"]["accuracy"])
    assert f"test accuracy of run {tiny_run} by windows holding a shared k-mer" in printed
    assert "largest shared regions" in printed and "clean - shared accuracy" in printed
