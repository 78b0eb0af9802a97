"""FASTA parsing and validation: one streaming pass from (gzipped) text to tokens and soft mask.

:func:`parse_fasta` reads a FASTA file in blocks of a few MiB (decompressing gzip/bgzip on the fly),
validates it, and appends tokens (:mod:`jaxseq.tokens`) and the soft-mask track to two output files,
so a multi-gigabyte genome is never held in memory. It also returns what a samtools-style ``.fai``
index of the text needs, and per-record checksums of what it wrote (the token cache verifies them).

:func:`check_with_pyfaidx` then reads the same text with pyfaidx, an independent reader, and compares
names, lengths and sampled slices with the new tokens. Plain files are read in place; for gzip and
bgzip input (pyfaidx needs Biopython for bgzip, which is not a dependency) only an excerpt of the
decompressed text, the first :data:`PYFAIDX_EXCERPT_BYTES`, is written and checked, so no
decompressed copy of a whole genome is ever made.

Validation rules (each failure is a :class:`GenomeError` whose one-line message names the file, and
the record and 1-based line number when known):

* plain gzip and bgzip are decompressed on the fly; truncated or corrupt compressed data is an error;
  bzip2/xz/zstd/zip are refused;
* a UTF-8 byte-order mark at the start of the text is skipped (editors on Windows write one);
* blank lines may precede the first header; the first non-empty line must start with ``>``, and a
  header must have a name (a bare ``>`` is an error);
* a ``;`` comment line (old FASTA style) is an error saying so: skipping it would break the index's
  fixed line layout, and pyfaidx/samtools do not accept it either;
* a record with no sequence is an **error** (usually a truncated file; zero-length records would
  break splits downstream);
* within a record every line has the same length (bases and line-ending bytes) except the last,
  which may be shorter; blank lines may only follow the last sequence line;
* LF and CRLF endings are both read; CR-only endings or a stray CR are an error; mixing LF and CRLF
  within a record is an error;
* record names (the first word of the header, pyfaidx's default key) must be unique;
* sequence bytes must be A C G T U, lowercase, or IUPAC codes (mapped to N); anything else is an
  error naming record, line, and 1-based position in the record.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import warnings
import zlib
from pathlib import Path
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from jaxseq import tokens as tokens_lib

#: Bytes read per block; 4 MiB keeps the numpy temporaries small and the loop short.
BLOCK_BYTES = 4 << 20
#: Decompressed bytes of a gzipped FASTA that pyfaidx cross-checks (the whole file when plain).
PYFAIDX_EXCERPT_BYTES = 8 << 20

_LF, _CR, _GT, _SEMICOLON = 10, 13, ord(">"), ord(";")
_BOM = b"\xef\xbb\xbf"
_COMPRESSED_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}


class GenomeError(ValueError):
    """A FASTA file that cannot be used; the one-line message names the file (record, line when known)."""


def is_gzip(path: Path, raw: BinaryIO) -> bool:
    """Returns whether ``raw`` (open at offset 0, left there) is gzip; refuses other compressions.

    Raises:
      GenomeError: bzip2, xz, zstd or zip data.
    """
    magic = raw.read(6)
    raw.seek(0)
    for prefix, kind in _COMPRESSED_MAGIC.items():
        if magic.startswith(prefix):
            raise GenomeError(f"{path}: {kind}-compressed FASTA is not supported; use plain text, gzip or bgzip")
    return magic.startswith(b"\x1f\x8b")


class HashingReader:
    """Read-only file wrapper that hashes (BLAKE2b-160) every byte passing through, for a re-check after parsing."""

    def __init__(self, raw: BinaryIO, progress: Callable[[int], object] | None):
        self._raw = raw
        self._progress = progress
        self.digest = hashlib.blake2b(digest_size=20)

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.digest.update(data)
        if self._progress is not None and data:
            self._progress(len(data))
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(BLOCK_BYTES):
            pass


@dataclasses.dataclass
class FastaRecord:
    """One record as parsed: its place in the token file and in the text, counts and checksums."""

    name: str
    header_line: int
    start: int  # offset of the record's first token in the token file
    fai_offset: int  # byte offset of the first sequence line in the (decompressed) text
    length: int = 0
    n_count: int = 0
    soft_masked: int = 0
    line_bases: int = 0
    line_bytes: int = 0
    tokens_crc32: int = 0  # zlib.crc32 of the record's tokens, checked whenever the cache is opened
    mask_crc32: int = 0  # zlib.crc32 of the record's soft-mask bytes
    digest: str = ""  # blake2b-160 of (token + 8 * mask) per base: the record's part of the genome fingerprint


def fai_line(record: FastaRecord, length: int | None = None) -> str:
    """Returns the record's samtools ``.fai`` line (optionally claiming only its first ``length`` bases)."""
    n = record.length if length is None else length
    return f"{record.name}\t{n}\t{record.fai_offset}\t{record.line_bases}\t{record.line_bytes}\n"


def parse_fasta(path: Path, raw: BinaryIO, tokens_out: BinaryIO, mask_out: BinaryIO, *, compressed: bool,
                excerpt_out: BinaryIO | None = None) -> list[FastaRecord]:
    """Streams a FASTA file through the validating parser in blocks.

    Args:
      path: the file's name, for messages.
      raw: the file's bytes (read sequentially; gzip-compressed when ``compressed``).
      tokens_out: receives uint8 tokens (0..4) of all records, concatenated.
      mask_out: receives one byte per base, 1 where the base was lowercase.
      compressed: ``raw`` is gzip or bgzip.
      excerpt_out: receives the first :data:`PYFAIDX_EXCERPT_BYTES` of the decompressed text.

    Returns:
      The records in file order, with offsets, counts, line layout and checksums.

    Raises:
      GenomeError: invalid FASTA (see the module docstring) or corrupt gzip data.
    """
    parser = FastaParser(path, tokens_out, mask_out)
    reader = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    carry = b""
    excerpt_left = PYFAIDX_EXCERPT_BYTES if excerpt_out is not None else 0
    first = True
    try:
        while chunk := reader.read(BLOCK_BYTES):
            if excerpt_left:
                excerpt_out.write(chunk[:excerpt_left])
                excerpt_left -= min(excerpt_left, len(chunk))
            if first and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
                parser.skip_bytes(len(_BOM))
            first = False
            carry = _feed_block(parser, carry + chunk if carry else chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise GenomeError(f"{path}: truncated or corrupt gzip data ({e})") from None
    if carry:
        parser.feed(carry, open_tail=True, eof=True)
    parser.finish()
    return parser.records


def _feed_block(parser: "FastaParser", buf: bytes) -> bytes:
    """Feeds the complete lines of ``buf`` (or all of a very long line); returns the bytes to carry."""
    cut = buf.rfind(b"\n") + 1
    tail = len(buf) - cut
    at_line_start = cut > 0 or parser.pending == 0
    if tail > BLOCK_BYTES and not (at_line_start and buf[cut] == _GT):
        # A very long (unwrapped) sequence line: consume it now instead of carrying it, so memory
        # stays bounded. A final CR waits for the next block's LF.
        keep = 1 if buf[-1] == _CR else 0
        parser.feed(buf[:len(buf) - keep], open_tail=True, eof=False)
        return buf[len(buf) - keep:]
    if cut:
        parser.feed(buf[:cut] if tail else buf, open_tail=False, eof=False)
    return buf[cut:]


class FastaParser:
    """Validating FASTA parser fed blocks of bytes; writes tokens and soft mask as it goes.

    Blocks normally end at a line feed. A block may instead end inside a long sequence line
    (``open_tail``); the line's length so far is kept in :attr:`pending` and its validation waits
    for the block that completes it. Work per block is vectorised with numpy over line boundaries;
    the Python loop runs once per header, not per line.
    """

    def __init__(self, path: Path, tokens_out: BinaryIO, mask_out: BinaryIO):
        self.path = path
        self.records: list[FastaRecord] = []
        self.total = 0
        self.pending = 0  # bases of a sequence line left open at the end of the previous block
        self._tokens_out = tokens_out
        self._mask_out = mask_out
        self._record: FastaRecord | None = None
        self._header_lines: dict[str, int] = {}
        self._lines_done = 0  # complete lines before the current block
        self._bytes_done = 0  # bytes before the current block
        # Layout state of the current record: the line that ended its regular run (short, blank or
        # differently terminated), after which only blank lines may follow.
        self._final_line = 0
        self._final_bases = 0
        self._final_bytes = 0
        self._crc_tokens = self._crc_mask = 0
        self._digest = hashlib.blake2b(digest_size=20)

    def skip_bytes(self, n: int) -> None:
        """Counts ``n`` bytes of the text that are not FASTA (a byte-order mark) in the index offsets."""
        self._bytes_done += n

    def _error(self, message: str, line: int | None = None, record: str | None = None) -> GenomeError:
        where = [str(self.path)]
        if record is not None:
            where.append(f"record {record!r}")
        if line is not None:
            where.append(f"line {line}")
        return GenomeError(f"{', '.join(where)}: {message}")

    def feed(self, buf: bytes, *, open_tail: bool, eof: bool) -> None:
        """Consumes a block.

        Args:
          buf: text bytes; ends with LF unless ``open_tail``.
          open_tail: the last line has no LF in this block (continued next block unless ``eof``).
          eof: this is the end of the text (the unterminated last line is complete).
        """
        arr = np.frombuffer(buf, dtype=np.uint8)
        size = arr.size
        newlines = np.flatnonzero(arr == _LF)
        ends = np.append(newlines, size) if open_tail else newlines
        n = ends.size
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        carriage = np.flatnonzero(arr == _CR)
        if carriage.size:
            after = carriage + 1
            stray = (after >= size) | (arr[np.minimum(after, size - 1)] != _LF)
            if stray.any():
                line = self._lines_done + int(np.searchsorted(starts, carriage[stray][0], side="right"))
                raise self._error("carriage return not followed by a line feed (CR-only 'classic Mac' line "
                                  "endings are not supported; convert to LF or CRLF)", line=line)
            has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == _CR)
        else:
            has_cr = np.zeros(n, dtype=bool)
        bases = ends - starts - has_cr
        line_bytes = bases + has_cr + 1
        if open_tail:
            line_bytes[-1] = bases[-1]
        first_byte = np.where(ends > starts, arr[np.minimum(starts, size - 1)], 0)
        if self.pending:
            bases[0] += self.pending
            line_bytes[0] += self.pending
            first_byte[0] = 0  # the continuation of a line started in the previous block
        is_header = first_byte == _GT
        keep = (arr != _LF) & (arr != _CR) if (newlines.size or carriage.size) else None

        segment_start = 0
        for h in np.flatnonzero(is_header | (first_byte == _SEMICOLON)).tolist():
            self._sequence_lines(arr, keep, starts, ends, bases, line_bytes, segment_start, h, open_last=False)
            if not is_header[h]:
                raise self._error("comment line starting with ';' (old FASTA comments are not accepted: they "
                                  "break the fixed line layout that indexes rely on; delete the line)",
                                  line=self._lines_done + h + 1, record=self._record and self._record.name)
            self._header(buf, int(starts[h]), int(bases[h]), line=self._lines_done + h + 1,
                         text_offset=self._bytes_done + int(starts[h] + line_bytes[h]))
            segment_start = h + 1
        open_last = open_tail and not eof
        self._sequence_lines(arr, keep, starts, ends, bases, line_bytes, segment_start, n, open_last=open_last)
        self.pending = int(bases[-1]) if open_last else 0
        self._lines_done += n - 1 if open_tail else n
        self._bytes_done += size

    def _header(self, buf: bytes, start: int, length: int, line: int, text_offset: int) -> None:
        self._end_record()
        try:
            text = buf[start + 1:start + length].decode("utf-8")
        except UnicodeDecodeError:
            raise self._error("header is not valid UTF-8", line=line) from None
        words = text.split()
        if not words:
            raise self._error("header '>' has no record name", line=line)
        name = words[0]
        if name in self._header_lines:
            raise self._error(f"duplicate record name {name!r} (first defined at line "
                              f"{self._header_lines[name]})", line=line)
        self._header_lines[name] = line
        self._record = FastaRecord(name=name, header_line=line, start=self.total, fai_offset=text_offset)
        self._final_line = 0
        self._crc_tokens = self._crc_mask = 0
        self._digest = hashlib.blake2b(digest_size=20)

    def _sequence_lines(self, arr, keep, starts, ends, bases, line_bytes, i0: int, i1: int, open_last: bool) -> None:
        if i0 >= i1:
            return
        first_line = self._lines_done + i0 + 1
        record = self._record
        if record is None:
            content = np.flatnonzero(bases[i0:i1] > 0)
            if content.size:
                raise self._error("no FASTA header: the first non-empty line does not start with '>'",
                                  line=first_line + int(content[0]))
            return
        checked = i1 - i0 - (1 if open_last else 0)
        if checked > 0:
            self._check_layout(record, bases[i0:i0 + checked], line_bytes[i0:i0 + checked], first_line)
        a, b = int(starts[i0]), int(ends[i1 - 1])
        raw = arr[a:b]
        seq = raw if keep is None else raw[keep[a:b]]
        if seq.size == 0:
            return
        try:
            tok = tokens_lib.encode(seq, record=record.name, offset=record.length)
        except tokens_lib.InvalidSequenceError:
            # Re-derive the details so the message names the line too and does not depend on
            # where the block boundaries fell.
            bad = int(np.flatnonzero(tokens_lib.BYTE_TO_TOKEN[seq] < 0)[0])
            offset = a + (bad if keep is None else int(np.flatnonzero(keep[a:b])[bad]))
            line = self._lines_done + int(np.searchsorted(starts, offset, side="right"))
            message = (f"invalid character {chr(seq[bad])!r} at position {record.length + bad + 1} "
                       "(expected A C G T, lowercase, or an IUPAC code)")
            raise self._error(message, line=line, record=record.name) from None
        tok_bytes = tok.tobytes()
        mask = tokens_lib.soft_mask(seq)
        mask_bytes = mask.view(np.uint8).tobytes()
        self._tokens_out.write(tok_bytes)
        self._mask_out.write(mask_bytes)
        self._crc_tokens = zlib.crc32(tok_bytes, self._crc_tokens)
        self._crc_mask = zlib.crc32(mask_bytes, self._crc_mask)
        # One byte per base (token + 8 * mask): half the bytes to hash of two streams, and
        # independent of where block boundaries fall.
        self._digest.update((tok | (mask.view(np.uint8) << 3)).tobytes())
        record.length += tok.size
        record.n_count += int(np.count_nonzero(tok == tokens_lib.N))
        record.soft_masked += int(np.count_nonzero(mask))
        self.total += tok.size

    def _check_layout(self, record: FastaRecord, bases: np.ndarray, line_bytes: np.ndarray, first_line: int) -> None:
        """Checks complete sequence lines against the record's fixed line layout (see Genome.open)."""
        if self._final_line:
            content = np.flatnonzero(bases > 0)
            if content.size:
                raise self._layout_error(record, first_line + int(content[0]))
            return
        if record.line_bases == 0 and bases[0] > 0:
            record.line_bases, record.line_bytes = int(bases[0]), int(line_bytes[0])
        irregular = np.flatnonzero((bases != record.line_bases) | (line_bytes != record.line_bytes))
        if not irregular.size:
            return
        t = int(irregular[0])
        if bases[t] > record.line_bases and record.line_bases:
            raise self._error(f"inconsistent line length: {int(bases[t])} bases where the record's lines have "
                              f"{record.line_bases}", line=first_line + t, record=record.name)
        self._final_line = first_line + t
        self._final_bases = int(bases[t])
        self._final_bytes = int(line_bytes[t])
        content = np.flatnonzero(bases[t + 1:] > 0)
        if content.size:
            raise self._layout_error(record, first_line + t + 1 + int(content[0]))

    def _layout_error(self, record: FastaRecord, next_line: int) -> GenomeError:
        line = self._final_line
        if self._final_bases == 0:
            message = f"blank line inside the sequence (sequence continues at line {next_line})"
        elif self._final_bases == record.line_bases:
            message = ("inconsistent line endings: this line ends differently from the record's first line "
                       "(mixed LF and CRLF)")
        else:
            message = (f"inconsistent line length: {self._final_bases} bases where the record's lines have "
                       f"{record.line_bases} (only the last line of a record may be shorter)")
        return self._error(message, line=line, record=record.name)

    def _end_record(self) -> None:
        record = self._record
        if record is None:
            return
        if record.length == 0:
            raise self._error("record has no sequence", line=record.header_line, record=record.name)
        if record.line_bases == 0:
            # A single unterminated line that was still open: its layout is its own length.
            record.line_bases = record.line_bytes = record.length
        record.tokens_crc32, record.mask_crc32 = self._crc_tokens, self._crc_mask
        record.digest = self._digest.hexdigest()
        self.records.append(record)
        self._record = None

    def finish(self) -> None:
        """Ends the last record; raises if the text held no record."""
        if self._bytes_done == 0:
            raise self._error("FASTA file is empty after decompression")
        self._end_record()
        if not self.records:
            raise self._error("no FASTA records (the file holds only blank lines)")




def check_with_pyfaidx(path: Path, text_path: Path, fai: Path, records: list[FastaRecord], tokens: np.ndarray,
                       mask: np.ndarray, *, text_size: int | None = None, seed: int = 0) -> int:
    """Writes a ``.fai`` index for ``text_path`` and compares pyfaidx's reading of it with the tokens.

    pyfaidx is an independent reader of the same bytes: a disagreement means a bug in the streaming
    parser (or an index layout pyfaidx reads differently), which must never reach training. Names,
    lengths and four 200-base slices per record (both ends, two random) are compared.

    Args:
      path: the FASTA file, for messages.
      text_path: its text: the file itself when plain, or an excerpt of the decompressed text.
      fai: where to write the index (the plain file's index stays in the token cache).
      records: what :func:`parse_fasta` returned.
      tokens: uint8 ``(total,)`` all records' tokens; ``mask``: bool ``(total,)`` the soft mask.
      text_size: bytes in an excerpt; None when ``text_path`` holds the whole text. Records wholly
        past the excerpt are skipped, and the record it cuts is checked over its complete lines.
      seed: seed of the random slices.

    Returns:
      The number of bases that pyfaidx could check (each record's checked length, summed).

    Raises:
      GenomeError: pyfaidx reads different names, lengths or sequence.
    """
    import pyfaidx  # deferred: only builds need it, and it must never be open across a fork

    checked = []
    for r in records:
        if text_size is None:
            checked.append((r, r.length))
        elif r.fai_offset < text_size:
            lines = (text_size - r.fai_offset) // r.line_bytes
            if min(r.length, lines * r.line_bases):
                checked.append((r, min(r.length, lines * r.line_bases)))
    fai.write_text("".join(fai_line(r, n) for r, n in checked))
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyfaidx warns about index mtimes, which we do not rely on
        fasta = pyfaidx.Fasta(str(text_path), indexname=str(fai), build_index=False, rebuild=False,
                              as_raw=True, strict_bounds=True, sequence_always_upper=False)
    try:
        if list(fasta.keys()) != [r.name for r, _ in checked]:
            raise GenomeError(f"{path}: internal error: pyfaidx reads record names {list(fasta.keys())[:5]} "
                              f"from the new index, expected {[r.name for r, _ in checked][:5]}")
        for record, length in checked:
            width = min(length, 200)
            starts = {0, length - width, *rng.integers(0, length - width + 1, size=2).tolist()}
            for s in sorted(starts):
                got = np.frombuffer(fasta[record.name][s:s + width].encode("ascii"), dtype=np.uint8)
                span = slice(record.start + s, record.start + s + width)
                if not (np.array_equal(tokens_lib.encode(got), tokens[span])
                        and np.array_equal(tokens_lib.soft_mask(got), mask[span])):
                    raise GenomeError(f"{path}, record {record.name!r}: internal error: pyfaidx reads "
                                      f"different sequence at {s + 1}-{s + width} than the token cache")
    finally:
        fasta.close()
    return sum(n for _, n in checked)
