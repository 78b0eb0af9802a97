"""Tests for jaxseq.genome: FASTA validation, the memory-mapped token cache, and the downloader."""

import gzip
import hashlib
import http.server
import json
import os
import pickle
import re
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pyfaidx
import pytest

from jaxseq import download, fasta, genome, regions, tokens
from jaxseq.genome import Genome, GenomeError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")  # a checkout elsewhere on this machine
CHR17 = SHARED / "human_chr17_hg19_part.fa"


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def wrap(seq: str, width: int, newline: str = "\n") -> str:
    return "".join(seq[i:i + width] + newline for i in range(0, len(seq), width))


def random_seq(rng, length: int, alphabet: str = "ACGTacgtN") -> str:
    return "".join(rng.choice(list(alphabet), size=length))


def pyfaidx_records(path: Path, tmp: Path) -> dict[str, str]:
    """Reads every record with pyfaidx (index written into tmp, never next to the file)."""
    with pyfaidx.Fasta(str(path), indexname=str(tmp / (path.name + ".test.fai")), as_raw=True) as fasta:
        return {name: fasta[name][:] for name in fasta.keys()}


def assert_matches_text(g: Genome, records: dict[str, str]):
    assert g.names == list(records)
    assert g.lengths == {name: len(seq) for name, seq in records.items()}
    for name, seq in records.items():
        assert np.array_equal(g.tokens(name), tokens.encode(seq)), name
        assert np.array_equal(g.soft_mask(name), np.array([c.islower() for c in seq], dtype=bool)), name


# --------------------------------------------------------------------------------------------
# Reading


def test_default_fasta_is_bundled_lambda_phage(cache):
    path = genome.default_fasta()
    assert path.name == "lambda_phage.fa.gz" and path.is_file()
    g = Genome.open(path, cache_dir=cache)
    assert g.names == ["gi|9626243|ref|NC_001416.1|"]
    assert g.lengths == {"gi|9626243|ref|NC_001416.1|": 48_502}
    text = gzip.decompress(path.read_bytes()).decode()
    seq = "".join(text.splitlines()[1:])
    assert tokens.decode(g.tokens(g.names[0])[:10]) == "GGGCGGCGAC"
    assert np.array_equal(g.tokens(g.names[0]), tokens.encode(seq))
    assert g.path == path


def test_tokens_are_read_only_memmaps(cache):
    g = Genome.open(genome.default_fasta(), cache_dir=cache)
    t, m = g.tokens(g.names[0]), g.soft_mask(g.names[0])
    assert isinstance(t, np.memmap) and isinstance(m, np.memmap)
    assert t.dtype == np.uint8 and m.dtype == np.bool_ and t.shape == m.shape == (48_502,)
    assert not t.flags.writeable
    assert set(np.unique(t).tolist()) <= {0, 1, 2, 3, 4}
    mapping = g.as_mapping()
    assert list(mapping) == g.names and mapping[g.names[0]] is g.tokens(g.names[0])
    with pytest.raises(KeyError, match="no record named 'chrZ'"):
        g.tokens("chrZ")


def test_soft_masked_human_chr17_matches_pyfaidx(tmp_path, cache):
    before = sorted(os.listdir(SHARED))
    g = Genome.open(CHR17, cache_dir=cache)
    # nothing written next to the shared (read-only) data: the index lives in the cache
    assert sorted(os.listdir(SHARED)) == before
    copy = shutil.copy(CHR17, tmp_path / "chr17.fa")
    records = pyfaidx_records(Path(copy), tmp_path)
    assert list(records) == ["chr17"] and len(records["chr17"]) == 40_000
    assert_matches_text(g, records)
    mask = g.soft_mask("chr17")
    assert 0.3 < mask.mean() < 0.6  # it really is soft-masked
    assert g.record_stats("chr17") == {"length": 40_000, "n_count": 0, "soft_masked": int(mask.sum())}


def test_multi_record_names_lengths_and_pyfaidx_agreement(tmp_path, cache):
    rng = np.random.default_rng(0)
    records = {"chr1": random_seq(rng, 1000), "chr2": random_seq(rng, 61), "chrM": random_seq(rng, 7)}
    text = (">chr1 some description\there\n" + wrap(records["chr1"], 60)
            + ">chr2\n" + wrap(records["chr2"], 80) + "\n"  # a blank line between records is fine
            + ">chrM mito\n" + records["chrM"])  # no final newline
    path = write(tmp_path / "multi.fa", text)
    g = Genome.open(path, cache_dir=cache)
    assert_matches_text(g, records)
    assert pyfaidx_records(path, tmp_path) == records


def test_iupac_codes_become_n(tmp_path, cache):
    g = Genome.open(write(tmp_path / "iupac.fa", ">r\nACRYKMswbdhvnNU\n"), cache_dir=cache)
    assert tokens.decode(g.tokens("r")) == "ACNNNNNNNNNNNNT"
    assert g.record_stats("r")["n_count"] == 12


def test_gzip_and_bgzip_read_like_plain(tmp_path, cache):
    rng = np.random.default_rng(1)
    records = {"a": random_seq(rng, 5000), "b": random_seq(rng, 3333)}
    text = "".join(f">{k}\n{wrap(v, 70)}" for k, v in records.items()).encode()
    for name, data in [("plain.fa", text), ("gz.fa.gz", gzip.compress(text)), ("bgz.fa.gz", bgzip(text))]:
        g = Genome.open(write(tmp_path / name, data), cache_dir=cache)
        assert_matches_text(g, records)
    # a compressed input keeps only tokens and mask in the cache, not a second copy of the text
    assert sorted(os.listdir(g.cache_path)) == ["meta.json", "soft_mask.u8", "tokens.u8"]


def bgzip(data: bytes, block: int = 1000) -> bytes:
    """BGZF: gzip members of at most 64 KiB with a 'BC' extra field giving the block size, plus an EOF block."""
    out = bytearray()
    for chunk in [data[i:i + block] for i in range(0, len(data), block)] + [b""]:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        cdata = compressor.compress(chunk) + compressor.flush()
        out += struct.pack("<BBBBIBBHBBHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, 18 + len(cdata) + 8 - 1)
        out += cdata + struct.pack("<II", zlib.crc32(chunk), len(chunk))
    return bytes(out)


def test_crlf_reads_like_lf(tmp_path, cache):
    rng = np.random.default_rng(2)
    records = {"x": random_seq(rng, 500), "y": random_seq(rng, 123)}
    crlf = "".join(f">{k} desc\r\n{wrap(v, 50, newline=chr(13) + chr(10))}" for k, v in records.items())
    g = Genome.open(write(tmp_path / "crlf.fa", crlf), cache_dir=cache)
    assert_matches_text(g, records)
    assert "\r" not in "".join(tokens.decode(g.tokens(n)) for n in g.names)
    assert pyfaidx_records(tmp_path / "crlf.fa", tmp_path) == records


@pytest.mark.parametrize("block", [7, 64, 1000])
def test_small_blocks_and_unwrapped_lines_give_the_same_cache(tmp_path, monkeypatch, block):
    """Blocks ending inside lines (including long unwrapped ones and CRLF pairs) are parsed exactly."""
    monkeypatch.setattr(fasta, "BLOCK_BYTES", block)
    rng = np.random.default_rng(block)
    for case in range(6):
        nl = "\r\n" if case % 2 else "\n"
        records = {f"r{i}": random_seq(rng, int(rng.integers(1, 700))) for i in range(int(rng.integers(1, 4)))}
        widths = [int(rng.integers(1, 300)) if case < 4 else 10_000 for _ in records]
        text = "".join(f">{k}{nl}{wrap(v, w, nl)}" for (k, v), w in zip(records.items(), widths))
        if case == 5:
            text = text[:-len(nl)]  # no final newline
        g = Genome.open(write(tmp_path / f"case{case}.fa", text), cache_dir=tmp_path / f"cache{block}")
        assert_matches_text(g, records)


def test_long_unwrapped_line_in_small_blocks_matches_normal_build(tmp_path, monkeypatch):
    normal = Genome.open(CHR17, cache_dir=tmp_path / "a")
    monkeypatch.setattr(fasta, "BLOCK_BYTES", 1000)  # the file is a single 40,000-base line
    small = Genome.open(CHR17, cache_dir=tmp_path / "b")
    assert np.array_equal(normal.tokens("chr17"), small.tokens("chr17"))
    assert np.array_equal(normal.soft_mask("chr17"), small.soft_mask("chr17"))


# --------------------------------------------------------------------------------------------
# Validation errors


def fasta_error(tmp_path, text, name="bad.fa") -> str:
    path = write(tmp_path / name, text)
    with pytest.raises(GenomeError) as info:
        Genome.open(path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(GenomeError, match=r"nope\.fa: FASTA file not found$"):
        Genome.open(tmp_path / "nope.fa", cache_dir=tmp_path / "cache")
    assert fasta_error(tmp_path, b"").endswith("bad.fa: FASTA file is empty")
    assert fasta_error(tmp_path, gzip.compress(b""), "e.fa.gz").endswith("empty after decompression")
    assert fasta_error(tmp_path, "\n\n", "blank.fa").endswith("no FASTA records (the file holds only blank lines)")


def test_no_header(tmp_path):
    assert fasta_error(tmp_path, "\nACGT\n>r\nACGT\n").endswith(
        "bad.fa, line 2: no FASTA header: the first non-empty line does not start with '>'")


@pytest.mark.parametrize("header", [">", ">  \t"])
def test_bare_header(tmp_path, header):
    assert fasta_error(tmp_path, f">ok\nACGT\n{header}\nACGT\n").endswith("line 3: header '>' has no record name")


def test_record_without_sequence_is_an_error(tmp_path):
    assert fasta_error(tmp_path, ">a\n>b\nACGT\n").endswith("record 'a', line 1: record has no sequence")
    assert fasta_error(tmp_path, ">a\nACGT\n>last\n\n").endswith("record 'last', line 3: record has no sequence")


def test_inconsistent_line_lengths(tmp_path):
    assert fasta_error(tmp_path, ">r\nACGT\nACGT\nAC\nACGT\n>s\nA\n").endswith(
        "record 'r', line 4: inconsistent line length: 2 bases where the record's lines have 4 "
        "(only the last line of a record may be shorter)")
    assert fasta_error(tmp_path, ">r\nACGT\nACGTA\n").endswith(
        "record 'r', line 3: inconsistent line length: 5 bases where the record's lines have 4")
    assert fasta_error(tmp_path, ">r\nACGT\n\nACGT\n").endswith(
        "record 'r', line 3: blank line inside the sequence (sequence continues at line 4)")
    assert fasta_error(tmp_path, ">r\nACGT\r\nACGT\nACGT\n").endswith(
        "record 'r', line 3: inconsistent line endings: this line ends differently from the record's "
        "first line (mixed LF and CRLF)")
    # each record has its own width, and the last line may be shorter
    g = Genome.open(write(tmp_path / "ok.fa", ">r\nACGT\nAC\n\n\n\n>s\nACGTACGT\nA\n"), cache_dir=tmp_path / "c2")
    assert g.lengths == {"r": 6, "s": 9}


def test_utf8_byte_order_mark_is_accepted(tmp_path, cache):
    g = Genome.open(write(tmp_path / "bom.fa", b"\xef\xbb\xbf>r\nACGT\nAC\n"), cache_dir=cache)
    assert g.fetch("r") == "ACGTAC"
    assert (g.cache_path / "index.fai").read_text() == "r\t6\t6\t4\t5\n"  # offsets count the 3 BOM bytes
    gz = Genome.open(write(tmp_path / "bom.fa.gz", gzip.compress(b"\xef\xbb\xbf>r\nACGT\nAC\n")), cache_dir=cache)
    assert gz.fingerprint == g.fingerprint


@pytest.mark.parametrize("text, line, record", [
    (";old-style comment\n>r\nACGT\n", 1, None),
    (">r\n;comment\nACGT\n", 2, "r"),
    (">r\nACGT\nACGT\n;comment\nACGT\n", 4, "r"),
    (">r\nACGT\nAC\n;comment\n>s\nA\n", 4, "r"),
])
def test_semicolon_comment_lines_are_reported_as_comments(tmp_path, text, line, record):
    where = f"record 'r', line {line}" if record else f"line {line}"
    assert fasta_error(tmp_path, text).endswith(f"bad.fa, {where}: comment line starting with ';' (old FASTA "
                                                "comments are not accepted: they break the fixed line layout "
                                                "that indexes rely on; delete the line)")


@pytest.mark.parametrize("block", [3, 7])
def test_comment_error_does_not_depend_on_block_boundaries(tmp_path, monkeypatch, block):
    text = ">r\nACGT\nACGT\n;c\n"
    expected = fasta_error(tmp_path, text)
    monkeypatch.setattr(fasta, "BLOCK_BYTES", block)
    assert fasta_error(tmp_path, text, name="bad.fa") == expected


def test_cr_only_line_endings(tmp_path):
    assert fasta_error(tmp_path, ">r\rACGT\rACGT\r").endswith(
        "bad.fa, line 1: carriage return not followed by a line feed (CR-only 'classic Mac' line endings are "
        "not supported; convert to LF or CRLF)")
    assert "line 3: carriage return" in fasta_error(tmp_path, ">r\nACGT\nAC\rGT\n")


def test_duplicate_record_names(tmp_path):
    assert fasta_error(tmp_path, ">a one\nACGT\n>b\nAC\n>a two\nGG\n").endswith(
        "line 5: duplicate record name 'a' (first defined at line 1)")


@pytest.mark.parametrize("bad, shown", [("7", "'7'"), ("*", r"'\*'"), ("-", "'-'"), (".", r"'\.'"),
                                        (" ", "' '"), ("\xe9", "'é'"), ("\x00", r"'\\x00'")])
def test_invalid_characters_name_record_line_and_position(tmp_path, bad, shown):
    text = ">chr1\nACGT\n>chr2 x\nAAAAA\nAC" + bad + "TA\nA\n"
    message = fasta_error(tmp_path, text.encode("latin-1"))  # one byte per character
    assert re.fullmatch(re.escape(str(tmp_path / "bad.fa")) + rf", record 'chr2', line 5: invalid character {shown} "
                        r"at position 8 \(expected A C G T, lowercase, or an IUPAC code\)", message)


def test_invalid_character_in_a_long_line_split_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(fasta, "BLOCK_BYTES", 16)
    text = ">r\n" + "ACGT" * 50 + "\n" + "ACGT" * 20 + "*" + "\n"
    assert fasta_error(tmp_path, text).endswith(
        "record 'r', line 3: invalid character '*' at position 281 (expected A C G T, lowercase, or an IUPAC code)")


BAD_TEXTS = [
    ">r\nACGT\nACGT\nAC\nACGT\n>s\nA\n", ">r\nACGT\nACGTA\n", ">r\nACGT\n\nACGT\n", ">r\nACGT\r\nACGT\nACGT\n",
    ">r\rACGT\rACGT\r", ">r\nACGT\nAC\rGT\n", ">a one\nACGT\n>b\nAC\n>a two\nGG\n", ">c\nACGT\n>d x\nAAAAA\nAC*TA\nA\n",
    "\nACGT\n>r\nACGT\n", ">ok\nACGT\n>\nACGT\n", ">a\n>b\nACGT\n", ">a\nACGT\n>last\n\n", ">r\nACGT\r",
    ">r\n" + "A" * 100 + "\n" + "A" * 50 + "\n" + "A" * 100 + "\n",
    ">r\n" + "A" * 100 + "\r\n" + "A" * 100 + "\n" + "A" * 100 + "\n",
    ">r\n" + "A" * 100 + "\r\r\n",
]


@pytest.mark.parametrize("text", BAD_TEXTS)
def test_error_messages_do_not_depend_on_block_boundaries(tmp_path, monkeypatch, text):
    expected = fasta_error(tmp_path, text)
    for block in (1, 3, 16):
        monkeypatch.setattr(fasta, "BLOCK_BYTES", block)
        assert fasta_error(tmp_path, text) == expected


def test_truncated_or_corrupt_gzip(tmp_path):
    data = gzip.compress(b">r\n" + b"ACGT" * 10_000 + b"\n")
    assert "truncated or corrupt gzip data" in fasta_error(tmp_path, data[: len(data) // 2], "t.fa.gz")
    assert "truncated or corrupt gzip data" in fasta_error(tmp_path, bgzip(b">r\nACGT\n")[:-40], "t.fa.bgz")
    assert "truncated or corrupt gzip data" in fasta_error(tmp_path, data[:20] + b"\x00" * 50 + data[70:], "c.fa.gz")


def test_unsupported_compression(tmp_path):
    import bz2

    assert fasta_error(tmp_path, bz2.compress(b">r\nACGT\n")).endswith(
        "bzip2-compressed FASTA is not supported; use plain text, gzip or bgzip")


# --------------------------------------------------------------------------------------------
# The cache


def test_cache_is_reused_without_pyfaidx_and_pyfaidx_checks_the_build(tmp_path, cache, monkeypatch):
    calls = []
    real = pyfaidx.Fasta

    def spy(*args, **kwargs):
        calls.append(kwargs.get("indexname"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pyfaidx, "Fasta", spy)
    path = write(tmp_path / "g.fa", ">r\nACGTNacgt\n")
    g = Genome.open(path, cache_dir=cache)
    assert len(calls) == 1 and Path(calls[0]).parent.parent == cache / "genome-v2"  # index kept in the cache
    assert (g.cache_path / "index.fai").read_text() == "r\t9\t3\t9\t10\n"
    monkeypatch.setattr(genome, "_build", lambda *a: pytest.fail("cache should be reused"))
    again = Genome.open(path, cache_dir=cache)
    assert len(calls) == 1 and again.cache_path == g.cache_path
    assert sorted(os.listdir(cache / "genome-v2")) == [g.content_hash]  # no temporary folders left
    assert g.content_hash == genome.hash_file(path) == hashlib.blake2b(path.read_bytes(), digest_size=20).hexdigest()


def test_replaced_fasta_with_older_mtime_is_not_stale(tmp_path, cache):
    path = write(tmp_path / "g.fa", ">r\nAAAAAAAA\n")
    first = Genome.open(path, cache_dir=cache)
    # a .fai that pyfaidx wrote for the old content sits next to the file and must not be trusted
    with pyfaidx.Fasta(str(path)) as fasta:
        assert str(fasta["r"]) == "AAAAAAAA"
    write(path, ">r\nCCCCCCCC\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))  # older than both the cache and the .fai
    second = Genome.open(path, cache_dir=cache)
    assert tokens.decode(second.tokens("r")) == "CCCCCCCC"
    assert tokens.decode(first.tokens("r")) == "AAAAAAAA"  # the old cache is a different folder
    assert second.content_hash != first.content_hash


def test_read_only_fasta_folder_gets_nothing_written(tmp_path, cache):
    folder = tmp_path / "ro"
    folder.mkdir()
    write(folder / "g.fa", ">r\nACGT\nAC\n")
    shutil.copy(genome.default_fasta(), folder / "lambda.fa.gz")
    before = sorted(os.listdir(folder))
    folder.chmod(0o555)
    try:
        assert Genome.open(folder / "g.fa", cache_dir=cache).lengths == {"r": 6}
        assert Genome.open(folder / "lambda.fa.gz", cache_dir=cache).lengths["gi|9626243|ref|NC_001416.1|"] == 48_502
    finally:
        folder.chmod(0o755)
    # tests run as root, for whom chmod does not stop writes: the listing is the real check
    assert sorted(os.listdir(folder)) == before


def test_failed_build_leaves_no_cache_and_next_open_builds(tmp_path, cache, monkeypatch):
    path = write(tmp_path / "g.fa", ">r\nACGT\n")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fasta, "check_with_pyfaidx", killed)
    with pytest.raises(KeyboardInterrupt):
        Genome.open(path, cache_dir=cache)
    assert os.listdir(cache / "genome-v2") == []
    monkeypatch.undo()
    assert tokens.decode(Genome.open(path, cache_dir=cache).tokens("r")) == "ACGT"


def test_leftover_build_of_a_dead_process_is_removed(tmp_path, cache):
    leftover = cache / "genome-v2" / ".tmp-0123456789ab-999999999-xyz"
    leftover.mkdir(parents=True)
    (leftover / "tokens.u8").write_bytes(b"\x00" * 10)
    Genome.open(write(tmp_path / "g.fa", ">r\nACGT\n"), cache_dir=cache)
    assert not leftover.exists()


def test_damaged_cache_is_rebuilt(tmp_path, cache):
    path = write(tmp_path / "g.fa", ">r\nACGTACGT\n")
    g = Genome.open(path, cache_dir=cache)
    (g.cache_path / "tokens.u8").write_bytes(b"\x00\x00")
    assert tokens.decode(Genome.open(path, cache_dir=cache).tokens("r")) == "ACGTACGT"


@pytest.fixture(scope="module")
def chr17_cache(tmp_path_factory):
    """One built cache of the chr17 excerpt; each corruption test works on its own copy."""
    root = tmp_path_factory.mktemp("chr17cache")
    g = Genome.open(CHR17, cache_dir=root)
    return root, g.cache_path.name, {n: g.fetch(n) for n in g.names}


@pytest.fixture
def chr17_copy(chr17_cache, tmp_path):
    root, key, text = chr17_cache
    shutil.copytree(root, tmp_path / "c")
    return tmp_path / "c", tmp_path / "c" / "genome-v2" / key, text


def _damage_xor_two_bytes(folder):
    data = bytearray((folder / "tokens.u8").read_bytes())
    data[100] = 200  # the case: token 200 where the FASTA says C
    data[30_000] ^= 1
    (folder / "tokens.u8").write_bytes(bytes(data))


@pytest.mark.parametrize("damage, why", [
    (_damage_xor_two_bytes, "tokens.u8, record 'chr17': checksum mismatch (holds the value 200)"),
    (lambda f: (f / "tokens.u8").write_bytes(b"\x07" * (f / "tokens.u8").stat().st_size),
     "tokens.u8, record 'chr17': checksum mismatch (holds the value 7)"),
    (lambda f: (f / "soft_mask.u8").write_bytes(b"\x01" * (f / "soft_mask.u8").stat().st_size),
     "soft_mask.u8, record 'chr17': checksum mismatch"),
    (lambda f: os.truncate(f / "tokens.u8", 1000), "tokens.u8 has 1,000 bytes, expected"),
    (lambda f: os.truncate(f / "soft_mask.u8", 0), "soft_mask.u8 has 0 bytes, expected"),
    (lambda f: os.truncate(f / "meta.json", 50), "unreadable: JSONDecodeError"),
    (lambda f: (f / "tokens.u8").unlink(), "tokens.u8 is missing"),
])
def test_corrupted_cache_is_rebuilt_with_a_message(chr17_copy, capsys, damage, why):
    root, folder, text = chr17_copy
    damage(folder)
    g = Genome.open(CHR17, cache_dir=root)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"warning: token cache {folder} failed verification (") and why in err
    assert err.endswith(f"rebuilding it from {CHR17}") and "\n" not in err
    assert {n: g.fetch(n) for n in g.names} == text  # the FASTA's bases again, never a 200 or a 7
    assert int(np.max(g.tokens("chr17"))) <= 4
    assert Genome.open(CHR17, cache_dir=root).cache_path == folder and capsys.readouterr().err == ""


def test_consistent_but_wrong_meta_is_rebuilt(chr17_copy, capsys):
    root, folder, text = chr17_copy
    meta = json.loads((folder / "meta.json").read_text())
    meta["records"][0]["length"] -= 1  # shorter record: sizes no longer add up
    (folder / "meta.json").write_text(json.dumps(meta))
    assert Genome.open(CHR17, cache_dir=root).fetch("chr17") == text["chr17"]
    assert "meta.json fingerprint does not match its records" in capsys.readouterr().err


def test_fingerprint_is_the_content_not_the_file(tmp_path, cache):
    seq = random_seq(np.random.default_rng(0), 500)
    plain = Genome.open(write(tmp_path / "a.fa", ">r\n" + wrap(seq, 60)), cache_dir=cache)
    gz = Genome.open(write(tmp_path / "b.fa.gz", gzip.compress((">r desc\n" + wrap(seq, 70, "\r\n")).encode())),
                     cache_dir=cache)
    assert plain.content_hash != gz.content_hash and plain.fingerprint == gz.fingerprint
    assert re.fullmatch(r"[0-9a-f]{40}", plain.fingerprint)
    changed = seq[:100] + ("A" if seq[100] != "A" else "C") + seq[101:]  # same names and lengths
    other = Genome.open(write(tmp_path / "c.fa", ">r\n" + wrap(changed, 60)), cache_dir=cache)
    renamed = Genome.open(write(tmp_path / "d.fa", ">s\n" + wrap(seq, 60)), cache_dir=cache)
    assert len({plain.fingerprint, other.fingerprint, renamed.fingerprint}) == 3


def test_pyfaidx_checks_an_excerpt_of_gzip_input_without_a_full_copy(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(fasta, "PYFAIDX_EXCERPT_BYTES", 1000)
    checked, real = [], fasta.check_with_pyfaidx

    def spy(*args, **kwargs):
        checked.append((Path(args[1]).stat().st_size, kwargs.get("text_size"), real(*args, **kwargs)))
        return checked[-1][2]

    monkeypatch.setattr(fasta, "check_with_pyfaidx", spy)
    rng = np.random.default_rng(5)
    records = {"a": random_seq(rng, 500), "b": random_seq(rng, 3000), "c": random_seq(rng, 50)}
    text = "".join(f">{n}\n" + wrap(s, 60) for n, s in records.items())
    g = Genome.open(write(tmp_path / "g.fa.gz", gzip.compress(text.encode())), cache_dir=cache)
    assert_matches_text(g, records)
    # 1000 bytes of text: all of 'a' (500 bases + 9 newlines + header) and 7 full lines of 'b'
    assert checked == [(1000, 1000, 500 + 7 * 60)]
    assert sorted(os.listdir(g.cache_path)) == ["meta.json", "soft_mask.u8", "tokens.u8"]


def test_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSEQ_CACHE_DIR", str(tmp_path / "envcache"))
    assert genome.default_cache_dir() == tmp_path / "envcache"
    g = Genome.open(write(tmp_path / "g.fa", ">r\nACGT\n"))
    assert g.cache_path.parent == tmp_path / "envcache" / "genome-v2"
    monkeypatch.delenv("JAXSEQ_CACHE_DIR")
    assert genome.default_cache_dir() == Path.home() / ".cache" / "jaxseq"


def test_pickle_remaps_instead_of_copying(cache):
    g = Genome.open(genome.default_fasta(), cache_dir=cache)
    data = pickle.dumps(g)
    assert len(data) < 5_000  # paths and metadata, not 48,502 tokens
    clone = pickle.loads(data)
    assert isinstance(clone.tokens(clone.names[0]), np.memmap)
    assert np.array_equal(clone.tokens(clone.names[0]), g.tokens(g.names[0]))


def test_pyfaidx_like_access(tmp_path, cache):
    text = {"chr1": "ACGTacgtNNACGTRY", "chr2": "ggccAT"}
    g = Genome.open(write(tmp_path / "g.fa", "".join(f">{n}\n{wrap(s, 5)}" for n, s in text.items())), cache_dir=cache)
    with pyfaidx.Fasta(str(tmp_path / "g.fa"), indexname=str(tmp_path / "x.fai"), as_raw=True,
                       sequence_always_upper=False) as ref:
        for a, b in [(0, 16), (3, 9), (15, 16), (7, 7)]:
            assert g.fetch("chr1", a, b) == ref["chr1"][a:b].replace("R", "N").replace("Y", "N")
            assert g["chr1"][a:b] == g.fetch("chr1", a, b)
    assert g["chr2"][-2:] == "AT" and g["chr2"][:] == "ggccAT" and len(g["chr1"]) == 16
    t = g.tokens("chr1", 2, 6)
    assert t.dtype == np.uint8 and t.shape == (4,) and not t.flags.writeable and t.tolist() == [2, 3, 0, 1]
    assert g.soft_mask("chr1", 2, 6).tolist() == [False, False, True, True]
    assert g.sizes() == {"chr1": 16, "chr2": 6} and list(g.sizes()) == ["chr1", "chr2"]
    assert "chr1" in g and "chr3" not in g
    with pytest.raises(KeyError, match=r"no record named 'chr3' \(close names: chr2, chr1\)"):
        g.fetch("chr3", 0, 1)
    for a, b in [(-1, 2), (5, 4), (0, 17)]:
        with pytest.raises(ValueError, match=rf"record 'chr1': \[{a}, {b}\) is outside \[0, 16\)"):
            g.fetch("chr1", a, b)


def test_cli_sizes_prints_only_chrom_sizes(tmp_path, cache, capfd):
    path = write(tmp_path / "g.fa", ">a desc\nACGTN\n>b\nacgt\n")
    assert genome.main(["sizes", str(path), "--cache-dir", str(cache)]) == 0
    assert capfd.readouterr().out == "a\t5\nb\t4\n"
    assert genome.main(["sizes", str(path), "--cache-dir", str(cache)]) == 0  # cached: still nothing else
    assert capfd.readouterr().out == "a\t5\nb\t4\n"


def test_cli_prepare_and_info(tmp_path, cache, capsys):
    path = write(tmp_path / "g.fa", ">a\nACGTN\n>b\nacgt\n")
    assert genome.main(["prepare", str(path), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{path}: 2 record(s), 9 bp", "a\t5", "b\t4"]
    assert genome.main(["info", str(path), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "20.00%" in out and "100.00%" in out and str(cache) in out
    assert genome.main(["prepare", str(tmp_path / "missing.fa"), "--cache-dir", str(cache)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.fa'}: FASTA file not found"


# --------------------------------------------------------------------------------------------
# Download (local server on 127.0.0.1 only)


class RangeServer(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.drop_after: int | None = None  # bytes sent before dropping the next response
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server naming)
        server: RangeServer = self.server
        requested = self.headers.get("Range")
        server.requests.append((self.path, requested))
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if requested and not server.ignore_range:
            start = int(requested.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if server.drop_after is not None:
            cut, server.drop_after = server.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = RangeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def small_fasta_gz():
    rng = np.random.default_rng(3)
    data = gzip.compress((">dl1\n" + wrap(random_seq(rng, 200_000, "ACGT"), 60)).encode(), mtime=0)
    assert len(data) > 20_000  # the drop points below fall inside the file
    return data


FAST = {"timeout": 5, "retry_wait": 0, "progress": False}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_interrupted_download_resumes_automatically(server, small_fasta_gz, tmp_path):
    server.files["g.fa.gz"] = small_fasta_gz
    server.drop_after = 5000
    path = download.download(server.url("g.fa.gz"), tmp_path / "dl", md5=md5(small_fasta_gz), retries=2, **FAST)
    assert path == tmp_path / "dl" / "g.fa.gz" and path.read_bytes() == small_fasta_gz
    assert server.requests == [("/g.fa.gz", None), ("/g.fa.gz", "bytes=5000-")]
    assert os.listdir(tmp_path / "dl") == ["g.fa.gz"]


def test_interrupted_download_resumes_on_second_call(server, small_fasta_gz, tmp_path):
    server.files["g.fa.gz"] = small_fasta_gz
    server.drop_after = 17000
    url = server.url("g.fa.gz")
    kept = r"failed after 1 attempt\(s\).*partial data kept in .*g\.fa\.gz\.part"
    with pytest.raises(download.DownloadError, match=kept):
        download.download(url, tmp_path, md5=md5(small_fasta_gz), retries=0, **FAST)
    assert (tmp_path / "g.fa.gz.part").stat().st_size == 17000 and not (tmp_path / "g.fa.gz").exists()
    path = download.download(url, tmp_path, md5=md5(small_fasta_gz), retries=0, **FAST)
    assert path.read_bytes() == small_fasta_gz and server.requests[-1] == ("/g.fa.gz", "bytes=17000-")
    assert not (tmp_path / "g.fa.gz.part").exists()
    # already there and verified: no new request
    n = len(server.requests)
    assert download.download(url, tmp_path, md5=md5(small_fasta_gz), **FAST) == path and len(server.requests) == n


def test_checksum_mismatch_is_refused_and_leaves_nothing(server, small_fasta_gz, tmp_path):
    server.files["g.fa.gz"] = small_fasta_gz
    refused = rf"md5 mismatch \(expected {'0' * 32}, got {md5(small_fasta_gz)}\); deleted .*g\.fa\.gz\.part$"
    with pytest.raises(download.DownloadError, match=refused):
        download.download(server.url("g.fa.gz"), tmp_path / "dl", md5="0" * 32, **FAST)
    assert os.listdir(tmp_path / "dl") == []


def test_server_ignoring_range_restarts_from_zero(server, small_fasta_gz, tmp_path):
    server.files["g.fa.gz"] = small_fasta_gz
    (tmp_path / "g.fa.gz.part").write_bytes(small_fasta_gz[:100])
    server.ignore_range = True
    path = download.download(server.url("g.fa.gz"), tmp_path, md5=md5(small_fasta_gz), **FAST)
    assert path.read_bytes() == small_fasta_gz


def test_complete_part_file_is_verified_after_416(server, small_fasta_gz, tmp_path):
    server.files["g.fa.gz"] = small_fasta_gz
    (tmp_path / "g.fa.gz.part").write_bytes(small_fasta_gz)
    path = download.download(server.url("g.fa.gz"), tmp_path, md5=md5(small_fasta_gz), **FAST)
    assert path.read_bytes() == small_fasta_gz and server.requests == [("/g.fa.gz", f"bytes={len(small_fasta_gz)}-")]


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        download.download(server.url("missing.fa.gz"), tmp_path, md5="0" * 32, retries=3, **FAST)
    assert len(server.requests) == 1


def test_preset_reads_md5_listing_and_downloads(server, small_fasta_gz, tmp_path):
    server.files["asm_genomic.fna.gz"] = small_fasta_gz
    server.files["md5checksums.txt"] = (f"{'1' * 32}  ./asm_assembly_report.txt\n"
                                        f"{md5(small_fasta_gz)}  ./asm_genomic.fna.gz\n").encode()
    preset = download.DownloadPreset(url=server.url("asm_genomic.fna.gz"), md5_url=server.url("md5checksums.txt"),
                                   description="test")
    path = download.download_preset(preset, tmp_path / "dl", **FAST)
    assert path.read_bytes() == small_fasta_gz and not Path(f"{path}.aliases.tsv").exists()
    g = Genome.open(path, cache_dir=tmp_path / "cache")
    assert g.lengths == {"dl1": 200_000}
    with pytest.raises(download.DownloadError, match="no md5 listed for other.fna.gz"):
        download.fetch_md5(server.url("md5checksums.txt"), "other.fna.gz", timeout=5)


REPORT_ROWS = [  # a GRCh38.p13-shaped assembly report: name, role, molecule, type, GenBank, rel, RefSeq, unit, length, UCSC
    ("1", "assembled-molecule", "1", "Chromosome", "CM000663.2", "=", "NC_000001.11", "Primary Assembly", 300, "chr1"),
    ("HSCHR1_CTG1_UNLOCALIZED", "unlocalized-scaffold", "1", "Chromosome", "KI270706.1", "=", "NT_187361.1",
     "Primary Assembly", 120, "chr1_KI270706v1_random"),
    ("HSCHR1_1_CTG3", "alt-scaffold", "1", "Chromosome", "KI270762.1", "=", "NT_187515.1", "ALT_REF_LOCI_1", 90,
     "chr1_KI270762v1_alt"),
    ("HG986_PATCH", "fix-patch", "1", "Chromosome", "KN196472.1", "=", "NW_009646194.1", "PATCHES", 80, "chr1_KN196472v1_fix"),
    ("MT", "assembled-molecule", "MT", "Mitochondrion", "J01415.2", "<>", "NC_012920.1", "non-nuclear", 70, "chrM"),
]


@pytest.fixture
def assembly(server):
    """Serves asm_genomic.fna.gz (the report's five records), its report and md5 listing."""
    rng = np.random.default_rng(11)
    seqs = {row[6]: random_seq(rng, row[8], "ACGTacgt") for row in REPORT_ROWS}
    fna = gzip.compress("".join(f">{acc} Homo sapiens {row[0]}\n{wrap(seqs[acc], 60)}"
                                for row, acc in zip(REPORT_ROWS, seqs)).encode())
    report = ("# Assembly name:  GRCh38.p13\r\n# Sequence-Name\tSequence-Role\tAssigned-Molecule\t"
              "Assigned-Molecule-Location/Type\tGenBank-Accn\tRelationship\tRefSeq-Accn\tAssembly-Unit\t"
              "Sequence-Length\tUCSC-style-name\r\n" + "".join("\t".join(map(str, r)) + "\r\n" for r in REPORT_ROWS)).encode()
    server.files.update({"asm_genomic.fna.gz": fna, "asm_assembly_report.txt": report,
                         "md5checksums.txt": f"{md5(fna)}  ./asm_genomic.fna.gz\n{md5(report)}  ./asm_assembly_report.txt\n".encode()})
    preset = download.DownloadPreset(url=server.url("asm_genomic.fna.gz"), md5_url=server.url("md5checksums.txt"),
                                     description="test", report_url=server.url("asm_assembly_report.txt"))
    return preset, seqs


def test_preset_with_report_keeps_assembled_molecules_under_ucsc_names(assembly, tmp_path, cache):
    preset, seqs = assembly
    path = download.download_preset(preset, tmp_path / "dl", **FAST)
    assert path == tmp_path / "dl" / "asm.primary.fa.gz"
    assert sorted(os.listdir(tmp_path / "dl")) == ["asm.primary.fa.gz", "asm.primary.fa.gz.aliases.tsv",
                                                   "asm_assembly_report.txt", "asm_genomic.fna.gz"]
    g = Genome.open(path, cache_dir=cache)
    assert g.names == ["chr1", "chrM"]  # no random/alt/patch records
    assert g.fetch("chr1") == seqs["NC_000001.11"] and g.fetch("chrM") == seqs["NC_012920.1"]
    aliases = regions.read_aliases(f"{path}.aliases.tsv", g.names)
    assert aliases == {"NC_000001.11": "chr1", "CM000663.2": "chr1", "1": "chr1",
                       "NC_012920.1": "chrM", "J01415.2": "chrM", "MT": "chrM"}
    assert regions.read_aliases(tmp_path / "dl" / "asm_assembly_report.txt", g.names) == aliases
    bed = write(tmp_path / "r.bed", "1\t0\t10\nNC_000001.11\t5\t20\tx\nchrM\t0\t70\n")
    assert regions.read_bed(bed, g.sizes(), aliases) == [("chr1", 0, 10, ""), ("chr1", 5, 20, "x"), ("chrM", 0, 70, "")]
    with pytest.raises(regions.RegionError, match=r"line 1: unknown record 'chr1_KI270762v1_alt'"):
        regions.read_bed(write(tmp_path / "alt.bed", "chr1_KI270762v1_alt\t0\t1\n"), g.sizes(), aliases)


def test_preset_all_records_keeps_the_download_and_aliases_it(assembly, tmp_path, cache):
    preset, seqs = assembly
    path = download.download_preset(preset, tmp_path / "dl", all_records=True, **FAST)
    assert path == tmp_path / "dl" / "asm_genomic.fna.gz"
    g = Genome.open(path, cache_dir=cache)
    assert g.names == list(seqs)
    aliases = regions.read_aliases(f"{path}.aliases.tsv", g.names)
    assert aliases["chr1"] == aliases["1"] == "NC_000001.11" and aliases["chr1_KI270762v1_alt"] == "NT_187515.1"
    assert regions.select_records(["chr1", "chrM"], g.sizes(), aliases) == ["NC_000001.11", "NC_012920.1"]


def test_cli_download_preset_prints_the_fasta(assembly, tmp_path, capsys, monkeypatch):
    preset, _ = assembly
    monkeypatch.setitem(download.PRESETS, "grch38-p13", preset)
    argv = ["download", "grch38-p13", "--dest", str(tmp_path / "dl"), "--cache-dir", str(tmp_path / "cache")]
    assert genome.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'dl' / 'asm.primary.fa.gz'}\n"
    assert f"record aliases (use as data.aliases): {tmp_path / 'dl' / 'asm.primary.fa.gz'}.aliases.tsv" in err


def test_grch38_preset_points_at_ncbi_p13_assembly():
    preset = download.PRESETS["grch38-p13"]
    folder = "https://ftp.ncbi.nlm.nih.gov/genomes/all/GCF/000/001/405/GCF_000001405.39_GRCh38.p13/"
    assert preset.url == folder + "GCF_000001405.39_GRCh38.p13_genomic.fna.gz"
    assert preset.md5_url == folder + "md5checksums.txt"
    assert preset.report_url == folder + "GCF_000001405.39_GRCh38.p13_assembly_report.txt"


def test_cli_download_url(server, small_fasta_gz, tmp_path, capsys, monkeypatch):
    server.files["g.fa.gz"] = small_fasta_gz
    argv = ["download", "--url", server.url("g.fa.gz"), "--md5", md5(small_fasta_gz), "--dest", str(tmp_path / "dl"),
            "--cache-dir", str(tmp_path / "cache")]
    assert genome.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dl" / "g.fa.gz")
    assert len(os.listdir(tmp_path / "cache" / "genome-v2")) == 1
    assert genome.main(argv[:4] + ["0" * 32] + argv[5:7]) == 2  # wrong md5, nothing written
    assert "md5" in capsys.readouterr().err
