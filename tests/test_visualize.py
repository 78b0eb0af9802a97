"""Tests for jaxseq.visualize: Hilbert mapping, pixel colours, GFF3, overlaps, k-mers, error tracks, CLI."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from jaxseq import tokens as tok
from jaxseq.visualize import annotations, errors, gff3, hilbert, images, kmers, sequence
from jaxseq.visualize.__main__ import main


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def distinct_colours(rgb: np.ndarray) -> int:
    return len(np.unique(rgb.reshape(-1, 3), axis=0))


# ----------------------------------------------------------------------------------------------
# Hilbert curve


@pytest.mark.parametrize("order", range(1, 11))
def test_hilbert_is_a_bijection_with_adjacent_steps(order):
    side = 1 << order
    d = np.arange(side * side)
    x, y = hilbert.d2xy(d, order)
    assert x.min() == 0 and y.min() == 0 and x.max() == side - 1 and y.max() == side - 1
    flat = y * side + x
    assert np.array_equal(np.sort(flat), d)  # every pixel exactly once
    steps = np.abs(np.diff(x)) + np.abs(np.diff(y))
    assert np.all(steps == 1)  # consecutive indices are 4-neighbours
    assert (x[0], y[0]) == (0, 0) and (x[-1], y[-1]) == (side - 1, 0)


@pytest.mark.parametrize("order", range(0, 11))
def test_hilbert_inverse_round_trips(order):
    side = 1 << order
    d = np.arange(side * side)
    x, y = hilbert.d2xy(d, order)
    assert np.array_equal(hilbert.xy2d(x, y, order), d)
    # and the other way round, from every pixel
    yy, xx = np.divmod(np.arange(side * side), side)
    x2, y2 = hilbert.d2xy(hilbert.xy2d(xx, yy, order), order)
    assert np.array_equal(x2, xx) and np.array_equal(y2, yy)


def test_hilbert_order_is_smallest_that_fits():
    assert [hilbert.hilbert_order(n) for n in (0, 1, 2, 4, 5, 16, 17, 4639675)] == [0, 0, 1, 1, 2, 2, 3, 12]
    with pytest.raises(ValueError):
        hilbert.hilbert_order(-1)


def test_hilbert_rejects_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        hilbert.d2xy(np.array([16]), 2)
    with pytest.raises(ValueError, match="out of range"):
        hilbert.xy2d(np.array([4]), np.array([0]), 2)


def test_aligned_runs_fill_aligned_blocks():
    # The downscaled images rely on this: 4**j consecutive indices = one 2**j x 2**j block.
    order, j = 6, 2
    d = np.arange(4**order)
    x, y = hilbert.d2xy(d, order)
    bx, by = hilbert.d2xy(d // 4**j, order - j)
    assert np.array_equal(x >> j, bx) and np.array_equal(y >> j, by)


def test_to_square_places_values_and_fills_tail():
    square = hilbert.to_square(np.arange(10), 2, -1)
    assert square.shape == (4, 4)
    assert square[0, 0] == 0 and square[0, 1] == 1 and square[1, 1] == 2 and square[1, 0] == 3
    assert (square == -1).sum() == 6
    with pytest.raises(ValueError):
        hilbert.to_square(np.arange(17), 2, 0)


# ----------------------------------------------------------------------------------------------
# Sequence images

TEXT = b"ACGTacgtNnAC"  # 12 bases -> order 2 (4x4), 4 tail pixels


def test_sequence_pixel_colours_are_exact():
    tokens = tok.encode(TEXT)
    mask = tok.soft_mask(TEXT)
    rgb = sequence.compose_sequence_image(tokens, mask)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    x, y = hilbert.d2xy(np.arange(16), 2)
    at = [tuple(int(c) for c in rgb[y[i], x[i]]) for i in range(16)]
    a, c, g, t = (tuple(int(v) for v in col) for col in sequence.BASE_COLOURS)
    assert at[0] == a and at[1] == c and at[2] == g and at[3] == t
    assert at[10] == a and at[11] == c
    for i, upper in zip(range(4, 8), (a, c, g, t)):
        dark = at[i]
        assert dark == tuple(round(v * sequence.SOFT_MASK_SHADE) for v in upper)
        assert all(dv <= uv for dv, uv in zip(dark, upper)) and sum(dark) < sum(upper)
    assert at[8] == images.NEUTRAL and at[9] == images.NEUTRAL  # N, and soft-masked n, stay neutral
    assert all(p == images.BACKGROUND for p in at[12:])
    assert len(set(at)) == 10  # 4 bases, 4 darker bases, N, background: all distinct


def test_display_image_mean_colour_over_runs():
    # 16 A then 8 C + 8 G: at 1 px = 16 bases the first pixel is pure A, the second the mean of C and G.
    tokens = np.array([tok.A] * 16 + [tok.C] * 8 + [tok.G] * 8 + [tok.T] * 4, dtype=np.uint8)
    scale = images.Scale(order=3, run_order=2, zoom=1)  # 8x8 square shown as 2x2
    square = sequence.display_sequence_image(tokens, None, scale)
    assert square.shape == (2, 2, 3)
    pal = sequence.PALETTE.astype(float)
    assert tuple(square[0, 0]) == tuple(sequence.BASE_COLOURS[tok.A])
    assert np.array_equal(square[1, 0], np.rint((pal[tok.C] + pal[tok.G]) / 2).astype(np.uint8))
    # third run: 4 T + 12 tail pixels (background)
    expected = np.rint((4 * pal[tok.T] + 12 * pal[sequence.BACKGROUND_CLASS]) / 16).astype(np.uint8)
    assert np.array_equal(square[1, 1], expected)
    assert tuple(square[0, 1]) == images.BACKGROUND


def test_choose_scale_is_exact_and_fits():
    assert images.choose_scale(2, 100) == images.Scale(2, 0, 25)
    assert images.choose_scale(12, 1024) == images.Scale(12, 2, 1)
    assert images.choose_scale(12, 1023) == images.Scale(12, 3, 1)
    for order in range(0, 13):
        for room in (1, 50, 256, 700):
            s = images.choose_scale(order, room)
            assert s.side <= room and (s.zoom == 1 or s.run_order == 0)
            assert s.side == (1 << (order - s.run_order)) * s.zoom
    assert images.Scale(12, 2, 1).describe() == "1 px = 16 bases (4\u00d74 block, mean colour)"
    assert images.Scale(8, 0, 4).describe() == "1 base = 4\u00d74 px"
    assert images.Scale(8, 0, 1).describe() == "1 px = 1 base"


def test_render_sequence_png_is_pixel_exact(tmp_path):
    rng = np.random.default_rng(0)
    text = rng.choice(list(b"ACGTacgtN"), size=1000).astype(np.uint8).tobytes()  # order 5: 32x32
    tokens, mask = tok.encode(text), tok.soft_mask(text)
    out, raw = tmp_path / "seq.png", tmp_path / "raw.png"
    rendered = sequence.render_sequence(tokens, out, soft_mask=mask, record="r1", max_size=600, raw_out=raw)
    png = read_png(out)
    assert png.shape[1::-1] == rendered.size and max(rendered.size) <= 600
    (scale,) = rendered.scales
    assert scale == images.Scale(5, 0, scale.zoom) and scale.zoom >= 8
    left, top, side = rendered.boxes[0]
    expected = sequence.compose_sequence_image(tokens, mask).repeat(scale.zoom, 0).repeat(scale.zoom, 1)
    assert np.array_equal(png[top:top + side, left:left + side], expected)  # the title's scale is true
    assert distinct_colours(png) >= 10
    full = read_png(raw)
    assert full.shape == (32, 32, 3)
    assert np.array_equal(full, sequence.compose_sequence_image(tokens, mask))


def test_render_sequence_large_states_aggregated_scale(tmp_path):
    tokens = np.tile(np.array([0, 1, 2, 3], dtype=np.uint8), 5000)  # 20 kb -> order 8 (256x256)
    rendered = sequence.render_sequence(tokens, tmp_path / "s.png", max_size=400)
    (scale,) = rendered.scales
    assert scale.run > 1 and rendered.boxes[0][2] == 256 >> scale.run_order
    assert max(read_png(tmp_path / "s.png").shape[:2]) <= 400


def test_render_sequence_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        sequence.render_sequence(np.zeros(0, np.uint8), tmp_path / "e.png", record="chrE")


# ----------------------------------------------------------------------------------------------
# GFF3

GFF = """\
##gff-version 3
##sequence-region chrA 1 100
# a comment line
chrA\tsrc\tgene\t10\t60\t.\t+\t.\tID=g1;Name=alpha%3Bbeta;Note=a%2Cb,c
chrA\tsrc\tgene\t40\t80\t.\t-\t.\tID=g2
chrA\tsrc\tCDS\t20\t30\t.\t+\t0\tID=c1;Parent=g1
chrA\tsrc\tCDS\t25\t28\t.\t+\t0\tID=c2;Parent=g1
chrA\tsrc\tgene\t50\t55\t.\t+\t.\tID=g3
###
chr%20B\tsrc\tgene\t5\t7\t.\t+\t.\tID=g4;
chrC\tsrc\tgene\t1\t3\t.\t+\t.\tID=g5
##FASTA
>chrC description
ACGTACGTAC
GTAC
>chrA
NOTAFEATURE\tLINE
"""


def write(tmp_path, text, name="a.gff3"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_gff3_parse_directives_escapes_and_lengths(tmp_path):
    ann = gff3.read_gff3(write(tmp_path, GFF))
    assert [f.attributes["ID"][0] for f in ann.features] == ["g1", "g2", "c1", "c2", "g3", "g4", "g5"]
    g1 = ann.features[0]
    assert (g1.seqid, g1.type, g1.start, g1.end, g1.strand, g1.phase, g1.line) == ("chrA", "gene", 10, 60, "+", None, 4)
    assert g1.attributes["Name"] == ["alpha;beta"]
    assert g1.attributes["Note"] == ["a,b", "c"]  # escaped comma kept, plain comma splits
    assert ann.features[2].phase == 0
    assert ann.seqids == ["chrA", "chr B", "chrC"]
    # region end for chrA; largest end for "chr B"; FASTA length (not largest end 3) for chrC
    assert ann.lengths == {"chrA": 100, "chr B": 7, "chrC": 14}
    assert ann.types == ["gene", "CDS"]


def test_overlap_counts_by_hand(tmp_path):
    ann = gff3.read_gff3(write(tmp_path, GFF))
    genes = annotations.feature_overlaps(ann.select("chrA", "gene"), 100)
    expected = np.zeros(100, int)
    expected[9:60] += 1   # g1: 10..60 (1-based inclusive) -> indices 9..59
    expected[39:80] += 1  # g2: 40..80
    expected[49:55] += 1  # g3: 50..55 nested in both
    assert np.array_equal(genes, expected)
    assert genes[8] == 0 and genes[9] == 1 and genes[39] == 2 and genes[49] == 3 and genes[54] == 3
    assert genes[55] == 2 and genes[59] == 2 and genes[60] == 1 and genes[79] == 1 and genes[80] == 0
    cds = annotations.feature_overlaps(ann.select("chrA", "CDS"), 100)
    assert cds[18] == 0 and cds[19] == 1 and cds[23] == 1 and cds[24] == 2 and cds[27] == 2 and cds[28] == 1
    assert cds[29] == 1 and cds[30] == 0 and cds.sum() == 11 + 4


def test_overlap_counts_match_brute_force():
    rng = np.random.default_rng(1)
    length = 500
    starts = rng.integers(1, length + 1, 300)
    ends = np.minimum(starts + rng.integers(0, 60, 300), length)
    starts[:20] = 7  # many features sharing a start and an end: the case a fancy-index += gets wrong
    ends[:20] = 90
    counts = annotations.overlap_counts(starts, ends, length)
    pos = np.arange(1, length + 1)
    brute = ((starts[:, None] <= pos) & (pos <= ends[:, None])).sum(axis=0)
    assert np.array_equal(counts, brute)


def test_circular_features_wrap(tmp_path):
    text = ("##sequence-region c 1 20\n"
            "c\ts\tregion\t1\t20\t.\t+\t.\tID=r;Is_circular=true\n"
            "c\ts\tgene\t18\t23\t.\t+\t.\tID=x\n")
    ann = gff3.read_gff3(write(tmp_path, text))
    counts = annotations.feature_overlaps(ann.select("c", "gene"), 20, circular="c" in ann.circular)
    assert counts.tolist() == [1, 1, 1] + [0] * 14 + [1, 1, 1]


@pytest.mark.parametrize("line, message", [
    ("chrA\tsrc\tgene\t10\t60\t.\t+\t.", r"a\.gff3:3: expected 9 tab-separated columns, found 8"),
    ("chrA\tsrc\tgene\tten\t60\t.\t+\t.\tID=x", r"a\.gff3:3: start 'ten' is not an integer"),
    ("chrA\tsrc\tgene\t10\t6.5\t.\t+\t.\tID=x", r"a\.gff3:3: end '6\.5' is not an integer"),
    ("chrA\tsrc\tgene\t60\t10\t.\t+\t.\tID=x", r"a\.gff3:3: start 60 > end 10"),
    ("chrA\tsrc\tgene\t0\t10\t.\t+\t.\tID=x", r"a\.gff3:3: start 0 < 1"),
    ("chrA\tsrc\tgene\t1\t10\t.\tx\t.\tID=x", r"a\.gff3:3: strand 'x'"),
    ("chrA\tsrc\tgene\t1\t10\t.\t+\t.\tgene_id \"x\"", r"a\.gff3:3: attribute .* is not tag=value"),
    ("chrA\tsrc\tgene\t90\t120\t.\t+\t.\tID=x", r"a\.gff3:3: end 120 is beyond the end of chrA \(100\)"),
])
def test_gff3_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, f"##gff-version 3\n##sequence-region chrA 1 100\n{line}\n")
    with pytest.raises(gff3.GFF3Error, match=message) as info:
        gff3.read_gff3(path)
    assert "\n" not in str(info.value)


def test_gff3_unknown_seqid_and_type(tmp_path):
    ann = gff3.read_gff3(write(tmp_path, GFF))
    with pytest.raises(gff3.GFF3Error, match=r"a\.gff3: seqid 'chrZ' not found \(seqids: chrA, chr B, chrC\)"):
        annotations.render_annotations(ann, tmp_path / "x.png", seqid="chrZ")
    with pytest.raises(gff3.GFF3Error, match=r"no features of type 'mRNA'"):
        annotations.render_annotations(ann, tmp_path / "x.png", types=["mRNA"])


def test_count_colours_get_brighter():
    colours = annotations.count_colours((86, 180, 233), 4).astype(int)
    assert tuple(colours[0]) == annotations.NONE_COLOUR
    brightness = colours.sum(axis=1)
    assert np.all(np.diff(brightness) > 0)


def test_render_annotations_png(tmp_path):
    ann = gff3.read_gff3(write(tmp_path, GFF))
    out = tmp_path / "ann.png"
    rendered = annotations.render_annotations(ann, out, seqid="chrA", max_size=900)
    png = read_png(out)
    assert png.shape[1::-1] == rendered.size and len(rendered.boxes) == 2  # gene, CDS panels
    left, top, side = rendered.boxes[0]
    (scale,) = set(rendered.scales)
    assert scale.order == 4 and scale.run == 1  # 100 bp -> 16x16, zoomed
    # base 50 (index 49) is covered by 3 genes: its pixel has the brightest gene colour
    colours = annotations.count_colours(annotations.TYPE_COLOURS[0], 3)
    x, y = hilbert.d2xy(np.array([49, 8, 99]), 4)
    pick = lambda i: tuple(png[top + y[i] * scale.zoom, left + x[i] * scale.zoom])
    assert pick(0) == tuple(colours[3]) and pick(1) == tuple(colours[0]) and pick(2) == tuple(colours[0])
    assert distinct_colours(png[top:top + side, left:left + side]) == 5  # counts 0..3 + tail
    assert distinct_colours(png) > 20


# ----------------------------------------------------------------------------------------------
# k-mers


def brute_force_counts(seqs, k):
    counts = np.zeros(4**k, dtype=np.int64)
    for s in seqs:
        text = tok.decode(s)
        for i in range(len(text) - k + 1):
            word = text[i:i + k]
            if "N" in word:
                continue
            counts[int("".join("0123"["ACGT".index(ch)] for ch in word), 4)] += 1
    return counts


@pytest.mark.parametrize("k", range(1, 6))
def test_kmer_counts_equal_brute_force(k):
    rng = np.random.default_rng(k)
    seqs = [rng.choice(5, size=n, p=[0.24, 0.24, 0.24, 0.24, 0.04]).astype(np.uint8) for n in (700, 3, 0, 129)]
    expected = brute_force_counts(seqs, k)
    assert np.array_equal(kmers.count_kmers(seqs, k), expected)
    # chunk boundaries (with k-1 overlap) change nothing
    for chunk in (1, 7, 64):
        assert np.array_equal(kmers.count_kmers(seqs, k, chunk_size=chunk), expected)


def test_kmer_words_and_parse_k():
    assert kmers.kmer_words(1) == ["A", "C", "G", "T"]
    assert kmers.kmer_words(2)[6] == "CG" and len(kmers.kmer_words(3)) == 64
    assert kmers.parse_k("3") == [3] and kmers.parse_k("1..8") == list(range(1, 9))
    for bad in ("0", "x", "3..1", "1..13", "2-4"):
        with pytest.raises(ValueError):
            kmers.parse_k(bad)


def test_markov_expected_matches_formula():
    rng = np.random.default_rng(3)
    seq = rng.integers(0, 4, 2000).astype(np.uint8)
    c = {k: kmers.count_kmers(seq, k) for k in (1, 2, 3)}
    words = {k: kmers.kmer_words(k) for k in (1, 2, 3)}
    index = {k: {w: i for i, w in enumerate(words[k])} for k in (1, 2, 3)}
    exp3 = kmers.markov_expected(c[3], c[2], c[1])
    for w in ("ACG", "TTT", "GCA"):
        by_hand = c[2][index[2][w[:2]]] * c[2][index[2][w[1:]]] / c[1][index[1][w[1]]]
        assert exp3[index[3][w]] == pytest.approx(by_hand)
    exp2 = kmers.markov_expected(c[2], c[1], None)
    assert exp2[index[2]["CG"]] == pytest.approx(c[1][1] * c[1][2] / c[1].sum())
    assert kmers.uniform_expected(c[3])[0] == pytest.approx(c[3].sum() / 64)


def test_render_kmers_png(tmp_path):
    rng = np.random.default_rng(4)
    seqs = {"a": rng.integers(0, 5, 5000).astype(np.uint8), "b": rng.integers(0, 4, 3000).astype(np.uint8)}
    out = tmp_path / "k.png"
    rendered = kmers.render_kmers(seqs, out, [1, 2, 3, 4], label="test", max_size=800)
    png = read_png(out)
    assert png.shape[1::-1] == rendered.size and max(rendered.size) <= 800 and min(rendered.size) > 300
    assert distinct_colours(png) > 20


# ----------------------------------------------------------------------------------------------
# Error maps and bedGraph


def test_error_runs_merge_and_skip_nan():
    rate = np.array([0.1, 0.1, 0.2, np.nan, np.nan, 0.2, 0.2, 0.0, 0.1000000001, 0.1])
    starts, ends, values = errors.error_runs(rate)
    assert starts.tolist() == [0, 2, 5, 7, 8] and ends.tolist() == [2, 3, 7, 8, 10]
    assert values.tolist() == [0.1, 0.2, 0.2, 0.0, 0.1]  # 6 significant digits merge the last two
    starts, ends, _ = errors.error_runs(rate, significant_digits=None)
    assert ends.tolist() == [2, 3, 7, 8, 9, 10]


def test_write_bedgraph(tmp_path):
    path = tmp_path / "e.bedgraph"
    n = errors.write_bedgraph(path, "chr1", np.array([np.nan, 0.5, 0.5, 0.25, np.nan]), track_name="err")
    n += errors.write_bedgraph(path, "chr2", np.array([1.0, 1.0]), append=True)
    assert n == 3
    assert path.read_text() == ('track type=bedGraph name="err"\n'
                                "chr1\t1\t3\t0.5\nchr1\t3\t4\t0.25\nchr2\t0\t2\t1\n")
    with pytest.raises(ValueError):
        errors.write_bedgraph(path, "chr 1", np.zeros(3))


def test_render_error_map_png(tmp_path):
    rate = np.linspace(0, 0.5, 200)
    rate[50:60] = np.nan
    out = tmp_path / "err.png"
    rendered = errors.render_error_map(rate, out, record="r", max_size=500)
    png = read_png(out)
    (scale,) = rendered.scales
    left, top, side = rendered.boxes[0]
    assert scale.order == 4 and scale.run == 1 and png.shape[1::-1] == rendered.size
    x, y = hilbert.d2xy(np.array([55, 199, 0]), 4)
    z = scale.zoom
    assert tuple(png[top + y[0] * z, left + x[0] * z]) == images.NEUTRAL  # unscored
    assert tuple(png[top + y[1] * z, left + x[1] * z]) == tuple(errors.error_colours(np.array([0.5]), 0.5)[0])
    assert tuple(png[top + y[2] * z, left + x[2] * z]) == tuple(errors.error_colours(np.array([0.0]), 0.5)[0])
    tail_x, tail_y = hilbert.d2xy(np.array([255]), 4)
    assert tuple(png[top + tail_y[0] * z, left + tail_x[0] * z]) == images.BACKGROUND
    assert distinct_colours(png[top:top + side, left:left + side]) > 50


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_errors_calls_the_evaluator_lazily(tmp_path, monkeypatch):
    calls = []

    def per_base_errors(run_dir, fasta):
        calls.append((run_dir, fasta))
        return {"rec": np.array([0.0, 0.0, 0.5, np.nan, 1.0])}

    fake = types.ModuleType("jaxseq.evaluate")
    fake.per_base_errors = per_base_errors
    monkeypatch.setitem(sys.modules, "jaxseq.evaluate", fake)
    out = tmp_path / "e.png"
    assert main(["errors", str(tmp_path / "run"), "--fasta", "g.fa", "--out", str(out)]) == 0
    assert calls == [(str(tmp_path / "run"), "g.fa")]
    assert read_png(out).shape[0] > 100
    lines = (tmp_path / "e.bedgraph").read_text().splitlines()
    assert lines[1:] == ["rec\t0\t2\t0", "rec\t2\t3\t0.5", "rec\t4\t5\t1"]


def test_cli_errors_without_evaluator_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jaxseq.evaluate", None)  # makes the import fail
    assert main(["errors", str(tmp_path), "--out", str(tmp_path / "e.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "jaxseq.evaluate.per_base_errors" in err


def test_cli_annotations_and_errors(tmp_path, capsys):
    gff = write(tmp_path, GFF)
    out = tmp_path / "a.png"
    assert main(["annotations", str(gff), "--features", "gene,CDS", "--seqid", "chrA", "--out", str(out)]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert main(["annotations", str(gff), "--seqid", "nope", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "seqid 'nope' not found" in err and "a.gff3" in err
    bad = write(tmp_path, "chrA\tsrc\tgene\t5\t1\t.\t+\t.\tID=x\n", "bad.gff3")
    assert main(["annotations", str(bad), "--out", str(out)]) == 1
    assert "bad.gff3:1: start 5 > end 1" in capsys.readouterr().err


def test_cli_sequence_and_kmers_on_a_fasta(tmp_path, capsys):
    fasta = tmp_path / "g.fa"
    fasta.write_text(">one\nACGTACGTacgtacgtNNNNACGT\n>two\nGGGGCCCC\n")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "s.png"
    assert main(["sequence", str(fasta), "--record", "two", "--out", str(out), "--max-size", "500"] + cache) == 0
    assert read_png(out).shape[0] <= 500
    assert main(["sequence", str(fasta), "--record", "three", "--out", str(out)] + cache) == 1
    assert "no record named 'three'" in capsys.readouterr().err
    assert main(["kmers", str(fasta), "--k", "1..3", "--out", str(tmp_path / "k.png")] + cache) == 0
    assert main(["kmers", str(fasta), "--k", "0..3", "--out", str(tmp_path / "k.png")] + cache) == 1
