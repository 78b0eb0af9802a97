"""jaxseq.embed: embeddings equal TrainedModel.encode of the same windows, exact tiling, BED round trip, errors."""


import h5py
import numpy as np
import pytest

import jaxseq
from jaxseq import embed as embed_lib
from jaxseq import tokens as tok
from jaxseq.config import load_config
from jaxseq.embed import count_windows, embed, tile_region
from jaxseq.genome import Genome, default_fasta
from jaxseq.regions import Region, read_bed

W = 16
# A genome with a record shorter than a window, N bases and a record to tile at both ends.
SMALL_FASTA = ">long desc\n" + "ACGTTGCA" * 10 + "NNNNNNNN" + "GATTACA" * 6 + "\n>tiny\nACGTACGTAC\n"


@pytest.fixture(scope="module")
def lam(tiny_model):
    genome = Genome.open(default_fasta(), cache_dir=tiny_model.config.data.cache_dir)
    return genome, genome.names[0], genome.lengths[genome.names[0]]


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("small")
    (folder / "small.fa").write_text(SMALL_FASTA)
    return folder / "small.fa", Genome.open(folder / "small.fa", cache_dir=tiny_model.config.data.cache_dir)


def read_h5(path):
    with h5py.File(path) as f:
        data = {k: (v.asstr()[:] if v.dtype.kind == "O" else v[:]) for k, v in f.items()}
        return data, dict(f.attrs)


def test_tile_region_exact_coordinates():
    # Full windows from the region's start; the tail window shifted back to end at the region's end.
    assert tile_region(100, 150, 1000, W, W)[0].tolist() == [100, 116, 132, 134]
    assert tile_region(100, 148, 1000, W, W)[0].tolist() == [100, 116, 132]  # exact fit: no extra window
    assert tile_region(984, 1000, 1000, W, 5)[0].tolist() == [984]
    assert tile_region(0, 40, 40, W, 10)[0].tolist() == [0, 10, 20, 24]
    # Shorter than a window: one window centred on it, moved inside the record at its ends; flagged.
    assert tile_region(100, 103, 1000, W, W) == (pytest.approx([94]), True)
    assert tile_region(2, 5, 1000, W, W)[0].tolist() == [0]
    assert tile_region(998, 1000, 1000, W, W)[0].tolist() == [984]
    assert tile_region(50, 50, 1000, W, W)[0].tolist() == [42]  # zero-length interval
    assert tile_region(0, 10, 10, W, W)[0].tolist() == []  # record shorter than a window
    for start, end, length, stride in [(0, 1000, 1000, 7), (3, 77, 80, 16), (5, 21, 30, 3), (0, 15, 30, 4)]:
        regions = [Region("r", start, end)]
        starts, _ = tile_region(start, end, length, W, stride)
        assert count_windows(regions, {"r": length}, W, stride) == [len(starts)]
        assert starts.min() >= 0 and starts.max() + W <= length and len(set(starts.tolist())) == len(starts)


def test_h5_rows_equal_encode_of_their_windows_with_attributes(tiny_run, tiny_model, lam, tmp_path):
    genome, chrom, length = lam
    regions = [f"{chrom}:1-100", f"{chrom}:{length - 39:,}-{length:,}"]
    out = tmp_path / "e.h5"
    summary = embed(tiny_model, regions, out, stride=12, batch_size=4)
    data, attrs = read_h5(out)
    starts = data["start"].tolist()
    assert starts == [0, 12, 24, 36, 48, 60, 72, 84, length - 40, length - 28, length - 16]
    assert (data["end"] - data["start"] == W).all() and (data["chrom"] == chrom).all()
    assert data["region"].tolist() == [0] * 8 + [1] * 3 and not data["extended"].any()
    windows = np.stack([genome.tokens(chrom, s, s + W) for s in starts]).astype(np.int8)
    np.testing.assert_allclose(data["embeddings"], tiny_model.encode(windows), rtol=1e-5, atol=1e-6)
    assert data["embeddings"].dtype == np.float32 and data["embeddings"].shape == (11, 5)
    assert data["n_fraction"].tolist() == [0.0] * 11 and data["name"].tolist() == [""] * 11
    assert attrs["run_dir"] == str(tiny_run.absolute()) and attrs["step"] == 2 and attrs["model"] == "multilayer"
    assert (attrs["window_len"], attrs["stride"], attrs["reduce"]) == (W, 12, "none")
    assert attrs["jaxseq_version"] == jaxseq.__version__ and attrs["genome_fingerprint"] == genome.fingerprint
    assert summary["rows"] == summary["windows"] == 11 and summary["out"] == [str(out)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5"]  # no temporary file left


def test_short_regions_n_windows_and_short_records(tiny_model, small, tmp_path):
    fasta, genome = small
    bed = tmp_path / "r.bed"
    bed.write_text("long\t2\t5\tstart\nlong\t84\t84\tempty\ntiny\t0\t10\tskipped\nlong\t70\t96\tns\n")
    summary = embed(tiny_model, bed, tmp_path / "s.h5", fasta=fasta)
    data, attrs = read_h5(tmp_path / "s.h5")
    # The short regions' windows are extended symmetrically, inside the record, and flagged.
    assert data["start"].tolist() == [0, 76, 70, 80] and data["region"].tolist() == [0, 1, 3, 3]
    assert data["extended"].tolist() == [True, True, False, False]
    assert data["name"].tolist() == ["start", "empty", "ns", "ns"]
    # N bases are embedded as they are and counted.
    assert data["n_fraction"].tolist() == [0.0, 0.5, 0.375, 0.5]
    windows = np.stack([genome.tokens("long", s, s + W) for s in data["start"]]).astype(np.int8)
    assert (windows == tok.N).any()
    np.testing.assert_allclose(data["embeddings"], tiny_model.encode(windows), rtol=1e-5, atol=1e-6)
    assert summary["skipped"] == ["tiny:1-10"] and attrs["skipped_regions"] == 1 and attrs["extended_regions"] == 2
    assert attrs["fasta"] == str(fasta)


def test_reduce_mean_is_the_mean_of_the_windows(tiny_model, lam, tmp_path):
    genome, chrom, _ = lam
    bed = tmp_path / "r.bed"
    bed.write_text(f"{chrom}\t1000\t1100\tA\n{chrom}\t5\t9\tB\n{chrom}\t300\t340\tC\n")
    embed(tiny_model, bed, tmp_path / "w.h5", stride=8, batch_size=3)
    embed(tiny_model, bed, tmp_path / "m.h5", stride=8, batch_size=3, reduce="mean")
    windows, _ = read_h5(tmp_path / "w.h5")
    means, attrs = read_h5(tmp_path / "m.h5")
    assert attrs["reduce"] == "mean" and means["embeddings"].shape == (3, 5)
    expected = [windows["embeddings"][windows["region"] == i].mean(0) for i in range(3)]
    np.testing.assert_allclose(means["embeddings"], expected, rtol=1e-5, atol=1e-6)
    assert means["windows"].tolist() == [np.sum(windows["region"] == i) for i in range(3)] == [12, 1, 4]
    assert means["start"].tolist() == [1000, 5, 300] and means["end"].tolist() == [1100, 9, 340]
    assert means["span_start"].tolist() == [1000, 0, 300] and means["span_end"].tolist() == [1100, 16, 340]
    assert means["extended"].tolist() == [False, True, False] and means["name"].tolist() == ["A", "B", "C"]


def test_reduce_mean_of_a_per_position_model_averages_positions_too(lam, tmp_path):
    genome, chrom, _ = lam
    config = load_config(None, ["model.name=autoencoder", "model.kernel_len=5", "model.latent_len=3",
                                f"data.window_len={W}"])
    per_position = jaxseq.TrainedModel.from_config(config)
    region = Region(chrom, 200, 250)
    embed(per_position, [region], tmp_path / "p.h5")
    embed(per_position, [region], tmp_path / "pm.h5", reduce="mean")
    rows, _ = read_h5(tmp_path / "p.h5")
    mean, _ = read_h5(tmp_path / "pm.h5")
    assert rows["embeddings"].shape == (4, W - 4, 3) and mean["embeddings"].shape == (1, 3)
    np.testing.assert_allclose(mean["embeddings"][0], rows["embeddings"].mean((0, 1)), rtol=1e-5, atol=1e-6)


def test_npy_and_bed_sidecar_round_trip(tiny_run, tiny_model, lam, tmp_path):
    genome, chrom, _ = lam
    bed = tmp_path / "in.bed"
    bed.write_text(f"# peaks\n{chrom}\t40\t90\tp1\n{chrom}\t7\t8\n")
    embed(tiny_model, bed, tmp_path / "x.h5")
    assert embed_lib.main([str(tiny_run), "--bed", str(bed), "--out", str(tmp_path / "x.npy")]) == 0
    h5, _ = read_h5(tmp_path / "x.h5")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), h5["embeddings"])
    back = read_bed(tmp_path / "x.bed", genome.sizes())
    assert [(r.chrom, r.start, r.end) for r in back] == list(zip(h5["chrom"], h5["start"], h5["end"]))
    assert [r.name for r in back] == ["p1", "p1", "p1", "p1", "."]


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/o.txt", "--genome"], r"--out .*o.txt: unknown output format '.txt'; use .h5"),
    (["--out", "{tmp}/missing/o.h5", "--genome"], r"directory .*missing does not exist"),
    (["--out", "{tmp}/o.h5", "--region", "NC_001416:1-10"], r"region 'NC_001416:1-10': unknown record 'NC_001416'"),
    (["--out", "{tmp}/o.h5", "--region", "{chrom}:20-10"], r"end 10 is before start 20"),
    (["--out", "{tmp}/o.h5", "--bed", "{tmp}/bad.bed"], r"bad.bed, line 2: start 9 is after end 3"),
    (["--out", "{tmp}/bad.npy", "--bed", "{tmp}/bad.bed"], r"sidecar would overwrite the input .*bad.bed"),
    (["--out", "{tmp}/o.h5", "--genome", "--stride", "0"], r"--stride must be >= 1"),
    (["--out", "{tmp}/o.h5", "--genome", "--step", "7"], r"--step 7: no checkpoint at step 7 .* available: 2"),
    (["--out", "{tmp}/o.h5", "--genome", "--fasta", "{tmp}/none.fa"], r"none.fa"),
])
def test_errors_are_one_line_before_any_output(tiny_run, lam, tmp_path, capsys, args, message):
    import re

    (tmp_path / "bad.bed").write_text(f"{lam[1]}\t1\t5\n{lam[1]}\t9\t3\n")
    argv = [str(tiny_run)] + [a.format(tmp=tmp_path, chrom=lam[1]) for a in args]
    assert embed_lib.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and re.search(message, err[-1]), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bed"]


def test_missing_run_is_an_error(tmp_path, capsys):
    assert embed_lib.main([str(tmp_path / "nope"), "--genome", "--out", str(tmp_path / "o.h5")]) == 2
    assert capsys.readouterr().err.strip() == f"error: run directory {tmp_path / 'nope'} does not exist"


def test_a_failure_mid_way_leaves_no_output(tiny_model, tmp_path, monkeypatch):
    calls = []

    def failing(tokens, batch_size=256):
        calls.append(1)
        if len(calls) > 2:  # the shape probe and the first batch succeed
            raise RuntimeError("device lost")
        return np.zeros((len(tokens), 5), np.float32)

    m = tiny_model
    broken = jaxseq.TrainedModel(m.config, m.variables, step=m.step, run_dir=m.run_dir)
    monkeypatch.setattr(broken, "encode", failing)
    for name in ("f.h5", "f.npy"):
        with pytest.raises(RuntimeError, match="device lost"):
            embed(broken, None, tmp_path / name, batch_size=64)
        calls.clear()
    assert list(tmp_path.iterdir()) == []
