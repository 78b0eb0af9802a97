"""Tests for jaxseq.regions: the BED reader, region strings, record aliases and selection."""

import gzip
import re
from pathlib import Path

import pytest

from jaxseq.regions import Region, RegionError, parse_region, read_aliases, read_bed, resolve_record, select_records

SIZES = {"chr1": 1000, "chr2": 500, "chr10": 300, "NC_045512.2": 200}


def write(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


@pytest.mark.parametrize("name", ["r.bed", "r.bed.gz"])
def test_bed_reads_plain_and_gzip_skipping_headers(tmp_path, name):
    text = ("browser position chr1:1-100\ntrack name=peaks\n# comment\n\n"
            "chr2\t10\t20\tpeak1\t0\t+\nchr1\t0\t1000\nchr1\t5\t5\tempty\nchr10 7 9\r\n")
    regions = read_bed(write(tmp_path / name, text), SIZES)
    assert regions == [Region("chr2", 10, 20, "peak1"), Region("chr1", 0, 1000, ""),
                       Region("chr1", 5, 5, "empty"), Region("chr10", 7, 9, "")]  # unsorted, zero-length kept
    assert all(isinstance(r.start, int) for r in regions)


@pytest.mark.parametrize("line, message", [
    ("chr1\t10", "line 2: 2 column(s), BED needs at least 3 (record, start, end)"),
    ("chr1\t1.5\t20", "line 2: start and end must be integers, got '1.5' and '20'"),
    ("chr1\t10\tend", "line 2: start and end must be integers, got '10' and 'end'"),
    ("chr1\t-5\t20", "line 2: negative coordinate (-5, 20)"),
    ("chr1\t30\t20", "line 2: start 30 is after end 20"),
    ("chr1\t0\t1001", "line 2: end 1001 is past the end of record 'chr1' (1000 bases)"),
    ("chr3\t0\t10", "line 2: unknown record 'chr3' (close names: chr2, chr1, chr10)"),
    ("Chr1\t0\t10", "line 2: unknown record 'Chr1' (close names: chr1"),
])
def test_bad_bed_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.bed", f"chr1\t0\t10\n{line}\n")
    with pytest.raises(RegionError) as info:
        read_bed(path, SIZES)
    text = str(info.value)
    assert text.startswith(f"{path}, line 2: ") and message in text and "\n" not in text


def test_bed_missing_or_binary_file(tmp_path):
    with pytest.raises(RegionError, match=r"nope\.bed: file not found$"):
        read_bed(tmp_path / "nope.bed", SIZES)
    (tmp_path / "bin.bed").write_bytes(b"chr1\t0\t1\n\xff\xfe\n")
    with pytest.raises(RegionError, match=r"bin\.bed: not UTF-8 text"):
        read_bed(tmp_path / "bin.bed", SIZES)


@pytest.mark.parametrize("text, region", [
    ("chr1:10,001-20,000".replace("20,000", "1,000").replace("10,001", "101"), Region("chr1", 100, 1000)),
    ("chr1:1-1", Region("chr1", 0, 1)),
    ("chr2:401", Region("chr2", 400, 500)),
    ("chr10", Region("chr10", 0, 300)),
    (" chr2:1-500 ", Region("chr2", 0, 500)),
])
def test_region_strings_are_one_based_inclusive(text, region):
    assert parse_region(text, SIZES) == region


def test_region_string_like_samtools_on_a_big_record():
    assert parse_region("chr1:10,001-20,000", {"chr1": 50_000}) == Region("chr1", 10_000, 20_000)


@pytest.mark.parametrize("text, message", [
    ("chr1:0-10", "start must be >= 1"),
    ("chr1:20-10", "end 10 is before start 20"),
    ("chr1:1-1001", "end 1001 is past the end of record 'chr1' (1000 bases)"),
    ("chrX:1-10", "unknown record 'chrX'"),
    ("chr1:a-b", "not a record name, and not NAME:START or NAME:START-END"),
    ("chrX", "unknown record 'chrX' (close names"),
])
def test_bad_region_strings(text, message):
    with pytest.raises(RegionError, match=f"region '{text}'") as info:
        parse_region(text, SIZES)
    assert message in str(info.value)


def test_two_column_aliases_either_order(tmp_path):
    path = write(tmp_path / "aliases.tsv", "# fasta\talias\nchr1\t1\nNC_000001.11\tchr1\nchr2\t2\nchrY\tY\n")
    aliases = read_aliases(path, SIZES)
    assert aliases == {"1": "chr1", "NC_000001.11": "chr1", "2": "chr2"}  # chrY is not in this FASTA
    assert resolve_record("1", SIZES, aliases) == resolve_record("NC_000001.11", SIZES, aliases) == "chr1"
    bed = write(tmp_path / "a.bed", "1\t0\t5\nNC_000001.11\t5\t9\n2\t0\t500\n")
    assert read_bed(bed, SIZES, aliases) == [("chr1", 0, 5, ""), ("chr1", 5, 9, ""), ("chr2", 0, 500, "")]
    assert parse_region("1:1-10", SIZES, aliases) == Region("chr1", 0, 10)
    assert parse_region("2", SIZES, aliases) == Region("chr2", 0, 500)


@pytest.mark.parametrize("text, message", [
    ("chr1\t1\textra\n", "line 1: expected two columns (name in the FASTA, alias), got 3"),
    ("chr1\t1\nchr2\t1\n", "line 2: alias '1' of record 'chr2' already names record 'chr1'"),
    ("chr1\tchr2\n", "line 1: alias 'chr2' of record 'chr1' already names record 'chr2'"),
])
def test_bad_alias_files(tmp_path, text, message):
    with pytest.raises(RegionError, match=re.escape(message)):
        read_aliases(write(tmp_path / "a.tsv", text), SIZES)


def test_select_records_by_name_glob_and_alias():
    aliases = {"1": "chr1", "NC_000002.12": "chr2"}
    assert select_records(["chr2", "chr1"], SIZES) == ["chr1", "chr2"]  # file order
    assert select_records(["chr1*"], SIZES) == ["chr1", "chr10"]
    assert select_records(["NC_*"], SIZES, aliases) == ["chr2", "NC_045512.2"]  # names and aliases
    assert select_records(["1", "chr?"], SIZES, aliases) == ["chr1", "chr2"]
    with pytest.raises(RegionError, match=r"'chrZ\*' matches no record"):
        select_records(["chrZ*"], SIZES)
    with pytest.raises(RegionError, match=r"unknown record 'chr3' \(close names"):
        select_records(["chr3"], SIZES)
    with pytest.raises(RegionError, match="got the string 'chr1'"):
        select_records("chr1", SIZES)
