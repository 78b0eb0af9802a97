"""Reading GFF3 annotation files (https://github.com/The-Sequence-Ontology/Specifications).

Coordinates stay as the file has them: 1-based and inclusive (``start <= end``). Sequence lengths
come from ``##sequence-region`` lines, else from an embedded ``##FASTA`` section, else from the
largest feature end. ``###`` (forward references resolved) needs no action here; everything after
``##FASTA`` is sequence; ``#`` lines are comments; columns 1-3 and attribute tags and values are
URL-unescaped (``%3B`` -> ``;``), attribute values split on unescaped commas.

Every error is a one-line :class:`GFF3Error` naming the file and, when there is one, the line.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path
from typing import NamedTuple, Sequence
from urllib.parse import unquote

STRANDS = frozenset("+-.?")
#: Types that describe a whole sequence rather than a feature on it (left out by default).
WHOLE_SEQUENCE_TYPES = frozenset(
    {"region", "chromosome", "contig", "supercontig", "scaffold", "databank_entry", "source"})


class GFF3Error(ValueError):
    """A GFF3 file is malformed or does not hold what was asked; the message is one line."""


class Feature(NamedTuple):
    """One GFF3 feature line.

    Attributes:
      seqid: sequence name (column 1, unescaped).
      source: column 2.
      type: feature type (column 3), e.g. ``gene``.
      start: 1-based first base (inclusive).
      end: 1-based last base (inclusive), ``>= start``.
      score: float or None for ``.``.
      strand: one of ``+ - . ?``.
      phase: 0, 1, 2 or None for ``.``.
      attributes: tag -> list of values, unescaped.
      line: 1-based line number in the file.
    """

    seqid: str
    source: str
    type: str
    start: int
    end: int
    score: float | None
    strand: str
    phase: int | None
    attributes: dict
    line: int


@dataclasses.dataclass
class Annotations:
    """The contents of a GFF3 file.

    Attributes:
      path: the file read.
      features: every feature, in file order.
      regions: seqid -> ``(start, end)`` from ``##sequence-region`` lines.
      fasta_lengths: seqid -> length of the sequence in the ``##FASTA`` section, if any.
    """

    path: Path
    features: list[Feature]
    regions: dict[str, tuple[int, int]]
    fasta_lengths: dict[str, int]

    @property
    def seqids(self) -> list[str]:
        """Sequence names in order of first mention (regions, then features, then FASTA)."""
        names = dict.fromkeys(self.regions)
        names.update(dict.fromkeys(f.seqid for f in self.features))
        names.update(dict.fromkeys(self.fasta_lengths))
        return list(names)

    @property
    def lengths(self) -> dict[str, int]:
        """seqid -> sequence length: region end, else FASTA length, else the largest feature end."""
        largest: dict[str, int] = {}
        for f in self.features:
            largest[f.seqid] = max(largest.get(f.seqid, 0), f.end)
        out = {}
        for name in self.seqids:
            if name in self.regions:
                out[name] = self.regions[name][1]
            elif name in self.fasta_lengths:
                out[name] = self.fasta_lengths[name]
            else:
                out[name] = largest[name]
        return out

    @property
    def circular(self) -> set[str]:
        """seqids marked ``Is_circular=true`` on any of their features."""
        return {f.seqid for f in self.features
                if any(v.lower() == "true" for v in f.attributes.get("Is_circular", ()))}

    @property
    def types(self) -> list[str]:
        """Feature types in order of first appearance."""
        return list(dict.fromkeys(f.type for f in self.features))

    def check_seqid(self, seqid: str) -> None:
        """Raises GFF3Error if the file says nothing about ``seqid``."""
        if seqid not in self.seqids:
            raise GFF3Error(f"{self.path}: seqid {seqid!r} not found (seqids: {_listing(self.seqids)})")

    def check_types(self, types: Sequence[str]) -> None:
        """Raises GFF3Error if a requested feature type never occurs in the file."""
        missing = [t for t in types if t not in self.types]
        if missing:
            raise GFF3Error(f"{self.path}: no features of type {', '.join(map(repr, missing))} "
                            f"(types: {_listing(self.types)})")

    def select(self, seqid: str, feature_type: str) -> list[Feature]:
        """Features of one type on one sequence, in file order."""
        return [f for f in self.features if f.seqid == seqid and f.type == feature_type]


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"


def _open_text(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline=None)
    return open(path, encoding="utf-8", newline=None)


def parse_attributes(text: str, where: str) -> dict[str, list[str]]:
    """Parses column 9 (``tag=value1,value2;tag2=...``), unescaping tags and values.

    Args:
      text: the attribute column; ``.`` means none.
      where: ``"file:line"`` for error messages.

    Returns:
      tag -> list of values.

    Raises:
      GFF3Error: for an entry without ``=`` (e.g. GTF-style ``gene_id "x"``) or an empty tag.
    """
    attributes: dict[str, list[str]] = {}
    if text in ("", "."):
        return attributes
    for entry in text.split(";"):
        entry = entry.strip()
        if not entry:
            continue  # a trailing ';' is common and harmless
        tag, sep, value = entry.partition("=")
        if not sep or not tag.strip():
            raise GFF3Error(f"{where}: attribute {entry!r} is not tag=value (GTF-style attributes?)")
        # Split before unescaping: an escaped comma (%2C) is part of a value, not a separator.
        attributes.setdefault(unquote(tag.strip()), []).extend(unquote(v) for v in value.split(","))
    return attributes


def _parse_int(text: str, column: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise GFF3Error(f"{where}: {column} {text!r} is not an integer") from None


def _add_sequence_region(words: list[str], line: str, where: str, regions: dict[str, tuple[int, int]]) -> None:
    """Records a ``##sequence-region seqid start end`` directive (1-based, inclusive)."""
    if len(words) != 4:
        raise GFF3Error(f"{where}: ##sequence-region needs 'seqid start end', got {line!r}")
    name = unquote(words[1])
    start = _parse_int(words[2], "sequence-region start", where)
    end = _parse_int(words[3], "sequence-region end", where)
    if start < 1 or start > end:
        raise GFF3Error(f"{where}: ##sequence-region {name} has start {start} and end {end}")
    if name in regions and regions[name] != (start, end):
        raise GFF3Error(f"{where}: ##sequence-region {name} given twice with different bounds")
    regions[name] = (start, end)


def _parse_feature(line: str, where: str, lineno: int) -> Feature:
    """One nine-column feature line, checked."""
    columns = line.split("\t")
    if len(columns) != 9:
        raise GFF3Error(f"{where}: expected 9 tab-separated columns, found {len(columns)}")
    seqid, source, ftype, start_text, end_text, score_text, strand, phase_text, attr = columns
    start = _parse_int(start_text, "start", where)
    end = _parse_int(end_text, "end", where)
    if start < 1:
        raise GFF3Error(f"{where}: start {start} < 1 (GFF3 coordinates are 1-based)")
    if start > end:
        raise GFF3Error(f"{where}: start {start} > end {end}")
    if strand not in STRANDS:
        raise GFF3Error(f"{where}: strand {strand!r} is not one of + - . ?")
    if score_text == ".":
        score = None
    else:
        try:
            score = float(score_text)
        except ValueError:
            raise GFF3Error(f"{where}: score {score_text!r} is not a number or '.'") from None
    if phase_text == ".":
        phase = None
    elif phase_text in ("0", "1", "2"):
        phase = int(phase_text)
    else:
        raise GFF3Error(f"{where}: phase {phase_text!r} is not 0, 1, 2 or '.'")
    return Feature(unquote(seqid), unquote(source), unquote(ftype), start, end, score, strand, phase,
                   parse_attributes(attr, where), lineno)


def read_gff3(path: str | Path) -> Annotations:
    """Reads a GFF3 file (plain or gzip).

    Args:
      path: the file.

    Returns:
      the :class:`Annotations`.

    Raises:
      GFF3Error: one line naming file and line, for a wrong column count, a non-integer or
        non-positive coordinate, ``start > end``, a bad strand, score or phase, a malformed
        ``##sequence-region``, or a feature beyond its sequence-region on a linear sequence.
      OSError: if the file cannot be read.
    """
    path = Path(path)
    features: list[Feature] = []
    regions: dict[str, tuple[int, int]] = {}
    fasta_lengths: dict[str, int] = {}
    in_fasta = False
    fasta_name = None
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            where = f"{path}:{lineno}"
            if in_fasta or line.startswith(">"):
                # A '>' line without ##FASTA is not strictly GFF3, but it can only mean sequence.
                in_fasta = True
                if line.startswith(">"):
                    fasta_name = line[1:].split(maxsplit=1)[0] if line[1:].strip() else ""
                    fasta_lengths[fasta_name] = 0
                elif fasta_name is not None:
                    fasta_lengths[fasta_name] += len("".join(line.split()))
                continue
            if not line.strip():
                continue
            if line.startswith("##"):
                words = line.split()
                if words[0] == "##FASTA":
                    in_fasta = True
                elif words[0] == "##sequence-region":
                    _add_sequence_region(words, line, where, regions)
                # '###' and other directives (gff-version, species, ...) do not affect coordinates.
                continue
            if line.startswith("#"):
                continue
            features.append(_parse_feature(line, where, lineno))
    annotations = Annotations(path, features, regions, fasta_lengths)
    _check_bounds(annotations)
    return annotations


def _check_bounds(annotations: Annotations) -> None:
    """Features may pass the end of a sequence only if it is circular (they wrap round the origin)."""
    lengths = annotations.lengths
    circular = annotations.circular
    for f in annotations.features:
        if f.end > lengths[f.seqid] and f.seqid not in circular:
            raise GFF3Error(f"{annotations.path}:{f.line}: end {f.end} is beyond the end of {f.seqid} "
                            f"({lengths[f.seqid]}) and the sequence is not Is_circular=true")


def write_fasta_section(path: str | Path, out: str | Path) -> list[str]:
    """Copies the sequence after a GFF3 file's ``##FASTA`` directive into a FASTA file.

    Args:
      path: the GFF3 file (plain or gzip).
      out: the FASTA file to write (replaced if it exists); not written when there is no sequence.

    Returns:
      the record names written, in file order; empty if the file has no ``##FASTA`` section.

    Raises:
      GFF3Error: sequence text before any ``>`` header in the section.
      OSError: if a file cannot be read or written.
    """
    path, out = Path(path), Path(out)
    names: list[str] = []
    writer = None
    try:
        with _open_text(path) as f:
            in_fasta = False
            for lineno, line in enumerate(f, start=1):
                if not in_fasta:
                    # The same rule as read_gff3: ##FASTA, or a bare '>' line, starts the sequence.
                    in_fasta = line.startswith("##FASTA") or line.startswith(">")
                    if not line.startswith(">"):
                        continue
                if line.startswith(">"):
                    names.append(line[1:].split(maxsplit=1)[0] if line[1:].strip() else "")
                    writer = writer or open(out, "w", encoding="utf-8")
                elif line.strip() and writer is None:
                    raise GFF3Error(f"{path}:{lineno}: sequence before any '>' header in the ##FASTA section")
                if writer is not None and line.strip():  # blank lines would break a FASTA's fixed layout
                    writer.write(line.rstrip("\r\n") + "\n")
    finally:
        if writer is not None:
            writer.close()
    return names
