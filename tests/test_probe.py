"""Tests for jaxseq.probe: labels from a hand-written GFF3, metrics against hand values, a planted signal."""

import json

import numpy as np
import pytest

from jaxseq import probe
from jaxseq import tokens as tok
from jaxseq.config import load_config
from jaxseq.splits import compute_splits
from jaxseq.visualize import gff3

TINY_GFF3 = """##gff-version 3
##sequence-region r1 1 40
r1\tt\tgene\t1\t40\t.\t+\t.\tID=g0
r1\tt\tCDS\t3\t10\t.\t+\t0\tID=c1
r1\tt\tCDS\t9\t14\t.\t-\t0\tID=c2
r1\tt\ttRNA\t14\t18\t.\t+\t.\tID=t1
r1\tt\trRNA\t21\t25\t.\t-\t.\tID=r1
r1\tt\ttmRNA\t31\t33\t.\t+\t.\tID=m1
r1\tt\tCDS\t38\t40\t.\t?\t0\tID=c3
"""
# Per 0-based base: CDS+ 2..9, CDS- 8..13, tRNA 13..17, rRNA 20..24, tmRNA 30..32, CDS with strand '?' 37..39.
CODING = "00" + "1" * 12 + "0" * 23 + "111"
STRAND = ".." + "0" * 6 + ".." + "1" * 4 + "." * 26  # both strands at 8..9 and strand '?' are left out
# 13 is CDS and tRNA (ambiguous); the tmRNA is neither a class nor intergenic; the '?' CDS is still a CDS.
FEATURE = "00" + "1" * 11 + "." + "2" * 4 + "00" + "3" * 5 + "0" * 5 + "..." + "0" * 4 + "111"


def _track(text):
    return np.array([-1 if c == "." else int(c) for c in text], np.int8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.gff3"
    path.write_text(TINY_GFF3)
    return gff3.read_gff3(path)


def test_label_tracks_match_hand_labels(tiny):
    np.testing.assert_array_equal(probe.label_track(tiny, "r1", 40, "coding"), _track(CODING))
    np.testing.assert_array_equal(probe.label_track(tiny, "r1", 40, "strand"), _track(STRAND))
    np.testing.assert_array_equal(probe.label_track(tiny, "r1", 40, "feature"), _track(FEATURE))


def test_windows_are_labelled_by_their_centre_and_leave_out_n(tiny):
    seq = np.random.default_rng(0).integers(0, 4, 40).astype(np.uint8)
    n_window = compute_splits({"r1": 40}, block_len=4, seed=0)["train"][0].start
    seq[n_window + 1] = tok.N
    windows = probe.probe_windows({"r1": seq}, tiny, 4, "coding", block_len=4, seed=0)
    track = _track(CODING)
    seen = []
    for part in ("fit", "test"):
        w = windows[part]
        assert w["tokens"].shape == (len(w["labels"]), 4) and w["tokens"].dtype == np.uint8
        for row, label, start in zip(w["tokens"], w["labels"], w["start"]):
            np.testing.assert_array_equal(row, seq[start:start + 4])
            assert label == track[start + 2]
            seen.append(int(start))
    # Ten blocks of one window (8 fit, 1 valid -> fit, 1 test); the window with the N is left out.
    assert sorted(seen) == [s for s in range(0, 40, 4) if s != n_window]
    assert len(windows["test"]["labels"]) == 1


def test_fasta_section_is_written_as_fasta(tmp_path):
    path = tmp_path / "a.gff3"
    path.write_text(TINY_GFF3 + "##FASTA\n>r1 first record\nACGT\n\nAC\n>r2\nGG\n")
    out = tmp_path / "a.fa"
    assert gff3.write_fasta_section(path, out) == ["r1", "r2"]
    assert out.read_text() == ">r1 first record\nACGT\nAC\n>r2\nGG\n"
    plain = tmp_path / "plain.gff3"
    plain.write_text(TINY_GFF3)
    assert gff3.write_fasta_section(plain, tmp_path / "none.fa") == [] and not (tmp_path / "none.fa").exists()
    broken = tmp_path / "broken.gff3"
    broken.write_text(TINY_GFF3 + "##FASTA\nACGT\n")
    with pytest.raises(gff3.GFF3Error, match=r"broken.gff3:11: sequence before any '>'"):
        gff3.write_fasta_section(broken, tmp_path / "b.fa")


def test_auroc_and_balanced_accuracy_against_hand_values():
    labels = np.array([True, False, True, False, True])
    scores = np.array([0.9, 0.8, 0.8, 0.1, 0.5])
    # Positive-negative pairs: (0.9>0.8) (0.9>0.1) (0.8=0.8: 1/2) (0.8>0.1) (0.5<0.8) (0.5>0.1) -> 4.5 / 6.
    assert probe.auroc(labels, scores) == pytest.approx(0.75)
    assert probe.auroc(labels, -scores) == pytest.approx(0.25)
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 0, 1, 1, 0, 2])
    assert probe.balanced_accuracy(y, predicted) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    proba = np.array([[.8, .1, .1], [.6, .2, .2], [.5, .3, .2], [.2, .7, .1], [.1, .8, .1], [.5, .4, .1], [.1, .1, .8]])
    # One-vs-rest: class 0: 4 pos x 3 neg, 11/12 pairs right (0.5 ties 0.5 -> 1/2 each, 0.2 < 0.5);
    # class 1: positives 0.8, 0.4 vs 0.1 0.2 0.3 0.7 0.1 -> (5 + 4) / 10; class 2: 1.0.
    class0 = (sum(a > b for a in (.8, .6, .5, .2) for b in (.1, .5, .1)) + 0.5) / 12
    assert probe.macro_auroc(y, proba) == pytest.approx((class0 + 0.9 + 1.0) / 3)


def test_kmer_features_are_frequencies_per_window():
    tokens = np.array([[0, 0, 1, 3], [2, 2, 2, 2], [0, tok.N, 1, 1]], np.uint8)
    x = probe.kmer_features(tokens, ks=(1, 2))
    assert x.shape == (3, 4 + 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :4], [0.5, 0.25, 0, 0.25])
    np.testing.assert_allclose(x[0, 4:][[0, 1, 7]], [1 / 3] * 3)  # AA, AC, CT
    np.testing.assert_allclose(x[1, 4 + 10], 1.0)  # GG only
    np.testing.assert_allclose(x[2, :4], [1 / 3, 2 / 3, 0, 0])  # N not counted
    np.testing.assert_allclose(x[2, 4 + 5], 1.0)  # CC: AN and NC span the N


def _planted_genome(tmp_path):
    """60 kb in two records; 1 kb CDS every 2 kb (alternating strands), GATC planted every 12 bases in CDS."""
    rng = np.random.default_rng(1)
    records = {"s1": rng.integers(0, 4, 40_000).astype(np.uint8), "s2": rng.integers(0, 4, 20_000).astype(np.uint8)}
    lines = ["##gff-version 3"] + [f"##sequence-region {n} 1 {len(s)}" for n, s in records.items()]
    for name, seq in records.items():
        for i, start in enumerate(range(0, len(seq), 2_000)):
            for p in range(start, start + 1_000 - 4, 12):
                seq[p:p + 4] = [2, 0, 3, 1]
            lines.append(f"{name}\tt\tCDS\t{start + 1}\t{start + 1_000}\t.\t{'+-'[i % 2]}\t0\tID={name}_{i}")
    lines.append("##FASTA")
    for name, seq in records.items():
        lines += [f">{name}", "".join("ACGT"[b] for b in seq)]
    path = tmp_path / "planted.gff3"
    path.write_text("\n".join(lines) + "\n")
    return path, records


def test_kmer_probe_finds_a_planted_signal_and_shuffled_labels_do_not(tmp_path):
    path, records = _planted_genome(tmp_path)
    windows = probe.probe_windows(records, gff3.read_gff3(path), 64, "coding", block_len=2_000, seed=0)
    fit, test = windows["fit"], windows["test"]
    assert len(test["labels"]) > 50 and set(np.unique(test["labels"])) == {0, 1}
    x_fit, x_test = probe.kmer_features(fit["tokens"]), probe.kmer_features(test["tokens"])
    found = probe.score_probe(x_fit, fit["labels"], x_test, test["labels"], 2, steps=30)
    assert found["balanced_accuracy"] > 0.95 and found["auroc"] > 0.98 and found["features"] == 340
    shuffled = np.random.default_rng(0).permutation(fit["labels"])
    control = probe.score_probe(x_fit, shuffled, x_test, test["labels"], 2, steps=30)
    assert abs(control["balanced_accuracy"] - 0.5) < 0.15 and abs(control["auroc"] - 0.5) < 0.15


def test_cli_probes_a_tiny_trained_run_from_the_gff3_fasta_section(tmp_path, capsys):
    from jaxseq import train

    path, _ = _planted_genome(tmp_path)
    fasta = tmp_path / "planted.fa"
    assert gff3.write_fasta_section(path, fasta) == ["s1", "s2"]
    small = ["model.name=autoencoder", "model.kernel_len=5", "model.latent_len=4", "data.window_len=32",
             "train.batch_size=16", "train.num_steps=2", "train.steps_per_call=1", "train.eval_every=2",
             "train.checkpoint_every=2", "train.histogram_every=0", "train.examples=0", "train.eval_max_windows=32",
             "train.log_every=2",
             f"data.fasta={fasta}", f"data.cache_dir={tmp_path / 'cache'}"]
    train.train_and_evaluate(load_config(None, small), tmp_path / "run")
    out = tmp_path / "probe.json"
    argv = [str(tmp_path / "run"), "--annotations", str(path), "--task", "strand", "--block-len", "2000",
            "--max-windows", "400", "--steps", "10", "--json", str(out)]
    assert probe.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["classes"] == ["+", "-"] and report["window_len"] == 32
    assert set(report["results"]) == {"model", "random_init", "kmer", "random_labels"}
    assert report["results"]["model"]["features"] == (32 - 5 + 1) * 4
    assert report["fasta"].endswith("planted.gff3.fa")
    for r in report["results"].values():
        assert 0 <= r["balanced_accuracy"] <= 1 and 0 <= r["auroc"] <= 1
    assert "random_labels" in capsys.readouterr().out
    # Bad input: one line, exit 2.
    plain = tmp_path / "plain.gff3"
    plain.write_text(path.read_text().split("##FASTA")[0])
    assert probe.main([str(tmp_path / "run"), "--annotations", str(plain), "--task", "coding"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no ##FASTA section" in err and err.count("\n") == 1
