"""Regions and record names: the one BED reader, the one region-string parser, record aliases.

Coordinates follow each format's convention on input and are 0-based, half-open in every
:class:`Region` returned:

* BED (3+ tab-separated columns: record, start, end, optional name): 0-based half-open. ``#``,
  ``track`` and ``browser`` lines are skipped; plain or gzip. Zero-length intervals and unsorted
  files are accepted as they are.
* Region strings, like samtools: ``chr1:10,001-20,000`` is 1-based inclusive (bases 10,001 to 20,000,
  i.e. ``Region("chr1", 10000, 20000)``), ``chr1:10,001`` runs to the record's end, and ``chr1``
  alone is the whole record. Commas in numbers are ignored.

Record names go through aliases, so ``chr1``, ``1`` and ``NC_000001.11`` can name the same record:
:func:`read_aliases` reads a two-column file (name in the FASTA, alias; either order is recognised
by which column the FASTA holds) or an NCBI assembly report (``*_assembly_report.txt``). Every
name is resolved to the FASTA's own record name; an unknown one is an error listing close names.

Errors are :class:`RegionError` with one line naming the file and line (or the region string).
"""

from __future__ import annotations

import difflib
import fnmatch
import gzip
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple


class RegionError(ValueError):
    """Bad BED, region string, alias file or record name; the one-line message says where."""


class Region(NamedTuple):
    """A 0-based, half-open stretch ``[start, end)`` of a record, with an optional name."""

    chrom: str
    start: int
    end: int
    name: str = ""


class AssemblyRecord(NamedTuple):
    """One sequence of an NCBI assembly report ("na" where the report has no such name)."""

    sequence_name: str
    role: str  # assembled-molecule, unlocalized-scaffold, unplaced-scaffold, alt-scaffold, fix-patch, novel-patch
    genbank: str
    refseq: str
    unit: str  # Primary Assembly, non-nuclear, ALT_REF_LOCI_*, PATCHES
    length: int
    ucsc: str

    def names(self) -> list[str]:
        """Returns every name the report gives this sequence (UCSC, RefSeq, GenBank, own name)."""
        seen = []
        for name in (self.ucsc, self.refseq, self.genbank, self.sequence_name):
            if name and name != "na" and name not in seen:
                seen.append(name)
        return seen


_REPORT_COLUMNS = {"sequence_name": "Sequence-Name", "role": "Sequence-Role", "genbank": "GenBank-Accn",
                   "refseq": "RefSeq-Accn", "unit": "Assembly-Unit", "length": "Sequence-Length",
                   "ucsc": "UCSC-style-name"}


def _read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return data.decode("utf-8").splitlines()
    except FileNotFoundError:
        raise RegionError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise RegionError(f"{path}: cannot read: {e}") from None
    except UnicodeDecodeError as e:
        raise RegionError(f"{path}: not UTF-8 text (byte {e.start})") from None


def read_assembly_report(path: str | Path) -> list[AssemblyRecord]:
    """Reads an NCBI assembly report (tab-separated, header line ``# Sequence-Name<TAB>...``).

    Args:
      path: the report (plain or gzip).

    Returns:
      Its sequences in file order.

    Raises:
      RegionError: no header line with the needed columns, or a row with too few columns.
    """
    lines = _read_lines(path)
    columns = None
    rows = []
    for number, line in enumerate(lines, 1):
        if line.startswith("# Sequence-Name"):
            header = line[2:].split("\t")
            missing = [c for c in _REPORT_COLUMNS.values() if c not in header]
            if missing:
                raise RegionError(f"{path}, line {number}: assembly report lacks column(s) {missing}")
            columns = {key: header.index(c) for key, c in _REPORT_COLUMNS.items()}
        elif line.strip() and not line.startswith("#"):
            if columns is None:
                raise RegionError(f"{path}, line {number}: data before the '# Sequence-Name' header line; "
                                  "not an NCBI assembly report")
            cells = line.split("\t")
            if len(cells) <= max(columns.values()):
                raise RegionError(f"{path}, line {number}: {len(cells)} columns, the header has more")
            values = {key: cells[i].strip() for key, i in columns.items()}
            values["length"] = int(values["length"]) if values["length"].isdigit() else 0
            rows.append(AssemblyRecord(**values))
    if columns is None:
        raise RegionError(f"{path}: no '# Sequence-Name' header line; not an NCBI assembly report")
    return rows


def read_aliases(path: str | Path, names: Iterable[str]) -> dict[str, str]:
    """Reads record aliases for a genome whose records are ``names``.

    Args:
      path: a two-column file (``name-in-FASTA<TAB>alias`` per line, ``#`` comments; the columns
        may be swapped) or an NCBI assembly report. Lines about records not in ``names`` are ignored
        (an aliases file may cover a whole assembly of which the FASTA holds a part).
      names: the genome's record names.

    Returns:
      alias -> record name in ``names``.

    Raises:
      RegionError: a line without exactly two columns, or an alias given to two records or equal
        to another record's name (file and line named).
    """
    known = set(names)
    lines = _read_lines(path)
    if any(line.startswith("# Sequence-Name") for line in lines):
        pairs = [(number, row.names()) for number, row in enumerate(read_assembly_report(path), 1)]
    else:
        pairs = []
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            cells = line.split("\t") if "\t" in line else line.split()
            if len(cells) != 2 or not all(c.strip() for c in cells):
                raise RegionError(f"{path}, line {number}: expected two columns (name in the FASTA, alias), "
                                  f"got {len(cells)}")
            pairs.append((number, [c.strip() for c in cells]))
    aliases: dict[str, str] = {}
    for number, group in pairs:
        record = next((n for n in group if n in known), None)
        if record is None:
            continue
        for alias in group:
            if alias == record:
                continue
            if alias in known or aliases.get(alias, record) != record:
                other = alias if alias in known else aliases[alias]
                raise RegionError(f"{path}, line {number}: alias {alias!r} of record {record!r} already names "
                                  f"record {other!r}")
            aliases[alias] = record
    return aliases


def resolve_record(name: str, sizes: Mapping[str, int], aliases: Mapping[str, str] | None = None) -> str:
    """Returns the FASTA's name for ``name`` (itself, or what an alias points to).

    Raises:
      RegionError: unknown record; the message lists close names (difflib).
    """
    if name in sizes:
        return name
    if aliases and name in aliases:
        return aliases[name]
    candidates = list(sizes) + list(aliases or ())
    close = difflib.get_close_matches(name, candidates, n=5)
    hint = f"close names: {', '.join(close)}" if close else f"{len(sizes)} records, e.g. {', '.join(list(sizes)[:5])}"
    raise RegionError(f"unknown record {name!r} ({hint})")


def select_records(patterns: Sequence[str], sizes: Mapping[str, int],
                   aliases: Mapping[str, str] | None = None) -> list[str]:
    """Returns the records named by names or globs (``fnmatch``: ``*``, ``?``, ``[...]``), in file order.

    A glob matches record names and aliases (``NC_*`` selects a UCSC-named FASTA's records through
    an assembly report's aliases).

    Raises:
      RegionError: a name that is no record, or a glob that matches none.
    """
    if isinstance(patterns, str):
        raise RegionError(f"expected a list of record names or globs, got the string {patterns!r}")
    chosen = set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            hits = {n for n in sizes if fnmatch.fnmatchcase(n, pattern)}
            hits |= {r for a, r in (aliases or {}).items() if fnmatch.fnmatchcase(a, pattern)}
            if not hits:
                raise RegionError(f"{pattern!r} matches no record (records: {', '.join(list(sizes)[:5])}"
                                  f"{', ...' if len(sizes) > 5 else ''})")
            chosen |= hits
        else:
            chosen.add(resolve_record(pattern, sizes, aliases))
    return [n for n in sizes if n in chosen]


def _coordinate(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", text.strip()):
        raise ValueError(text)
    return int(text)


def read_bed(path: str | Path, sizes: Mapping[str, int], aliases: Mapping[str, str] | None = None) -> list[Region]:
    """Reads a BED file against a genome's records.

    Args:
      path: BED file, plain or gzip: tab-separated ``record start end [name ...]``, 0-based
        half-open; ``#``, ``track`` and ``browser`` lines and blank lines are skipped.
      sizes: record name -> length (``Genome.sizes()``), in file order.
      aliases: alias -> record name (:func:`read_aliases`).

    Returns:
      The intervals in file order (unsorted input stays unsorted), record names resolved to the
      FASTA's, ``name`` the 4th column or ``""``. Zero-length intervals are kept.

    Raises:
      RegionError: one line naming the file and line: fewer than 3 columns, a non-integer or
        negative coordinate, start > end, an end past the record's end, an unknown record.
    """
    regions = []
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        cells = line.split("\t") if "\t" in line else line.split()
        where = f"{path}, line {number}"
        if len(cells) < 3:
            raise RegionError(f"{where}: {len(cells)} column(s), BED needs at least 3 (record, start, end)")
        try:
            start, end = _coordinate(cells[1]), _coordinate(cells[2])
        except ValueError:
            raise RegionError(f"{where}: start and end must be integers, got {cells[1]!r} and {cells[2]!r}") from None
        if start < 0 or end < 0:
            raise RegionError(f"{where}: negative coordinate ({start}, {end})")
        if start > end:
            raise RegionError(f"{where}: start {start} is after end {end}")
        try:
            chrom = resolve_record(cells[0].strip(), sizes, aliases)
        except RegionError as e:
            raise RegionError(f"{where}: {e}") from None
        if end > sizes[chrom]:
            raise RegionError(f"{where}: end {end} is past the end of record {chrom!r} ({sizes[chrom]} bases)")
        regions.append(Region(chrom, start, end, cells[3].strip() if len(cells) > 3 else ""))
    return regions


def parse_region(text: str, sizes: Mapping[str, int], aliases: Mapping[str, str] | None = None) -> Region:
    """Parses a samtools-style region string: ``chr1``, ``chr1:10,001`` or ``chr1:10,001-20,000``.

    Args:
      text: the region; positions are 1-based and inclusive, commas ignored.
      sizes: record name -> length; ``aliases``: alias -> record name.

    Returns:
      The 0-based half-open :class:`Region` (``chr1:10,001-20,000`` -> ``Region("chr1", 10000, 20000)``).

    Raises:
      RegionError: malformed text, start < 1, end < start, end past the record's end, unknown record.
    """
    text = text.strip()
    if text in sizes or (aliases and text in aliases):
        chrom = resolve_record(text, sizes, aliases)
        return Region(chrom, 0, sizes[chrom])
    # Names may hold ':' (HLA contigs): only a trailing ':START[-END]' is read as coordinates.
    match = re.fullmatch(r"(.+):([\d,]+)(?:-([\d,]+))?", text)
    if not match and ":" not in text:
        try:
            resolve_record(text, sizes, aliases)  # raises, naming close records
        except RegionError as e:
            raise RegionError(f"region {text!r}: {e}") from None
    if not match:
        raise RegionError(f"region {text!r}: not a record name, and not NAME:START or NAME:START-END")
    try:
        chrom = resolve_record(match.group(1), sizes, aliases)
    except RegionError as e:
        raise RegionError(f"region {text!r}: {e}") from None
    start = int(match.group(2).replace(",", ""))
    end = int(match.group(3).replace(",", "")) if match.group(3) else sizes[chrom]
    if start < 1:
        raise RegionError(f"region {text!r}: positions are 1-based, start must be >= 1")
    if end < start:
        raise RegionError(f"region {text!r}: end {end} is before start {start}")
    if end > sizes[chrom]:
        raise RegionError(f"region {text!r}: end {end} is past the end of record {chrom!r} ({sizes[chrom]} bases)")
    return Region(chrom, start - 1, end)
