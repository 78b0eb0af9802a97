"""Reference genomes: FASTA -> validated, memory-mapped uint8 token cache (and the download helper).

:meth:`Genome.open` turns a FASTA file into a token cache once and memory-maps it afterwards:

* one streaming pass reads the FASTA in blocks of a few MiB (decompressing gzip/bgzip on the fly),
  validates it, and appends tokens (:mod:`jaxseq.tokens`) and the soft-mask track to two flat files,
  so building a multi-gigabyte genome never holds it in memory;
* the same pass writes a samtools-style ``.fai`` index for the text, which pyfaidx then reads to
  cross-check record names, lengths and random slices against the new cache (pyfaidx is only ever
  used here, during the build: a ``pyfaidx.Fasta`` holds an open file and a lock and must not be
  shared across a fork, so training reads nothing but memmaps);
* the cache lives under ``$JAXSEQ_CACHE_DIR`` (default ``~/.cache/jaxseq``), never next to the
  FASTA, so read-only data folders work and nothing is written beside the input;
* it is keyed by a hash of the file's bytes, not its mtime: pyfaidx trusts a ``.fai`` that is newer
  than the FASTA and silently returns wrong sequence when the FASTA is replaced by an older-dated
  file; a content key cannot go stale that way, and a ``.fai`` lying next to the FASTA is ignored;
* it is built in a temporary folder and renamed into place, so a killed build never leaves a cache
  that is trusted later.

Cache layout: ``<cache_dir>/genome-v1/<blake2b-160 of the FASTA file>/`` holding ``tokens.u8``
(uint8, all records concatenated), ``soft_mask.u8`` (0/1 per base), ``meta.json`` (records,
offsets, lengths, counts) and, for uncompressed FASTA, ``index.fai`` (pyfaidx/samtools index of the
original file).

The download helper (:func:`download`, :func:`download_preset`) fetches a FASTA over HTTP(S) with
urllib, resuming through ``Range`` requests, and only renames it into place after its md5 matches.

Command line::

    python -m jaxseq.genome prepare FASTA [--cache-dir D]
    python -m jaxseq.genome info FASTA [--cache-dir D]
    python -m jaxseq.genome download grch38-p13 --dest DIR [--cache-dir D] [--no-prepare]
    python -m jaxseq.genome download --url URL --md5 SUM --dest DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import http.client
import importlib.resources
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jaxseq import tokens as tokens_lib

log = logging.getLogger(__name__)

#: Bump when the cache layout or parsing rules change: old caches are then simply not found.
CACHE_VERSION = 1
#: Bytes read per block while building; 4 MiB keeps the numpy temporaries small and the loop short.
BLOCK_BYTES = 4 << 20
_HASH_BYTES = 8 << 20

_LF, _CR, _GT = 10, 13, ord(">")
_COMPRESSED_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}


class GenomeError(ValueError):
    """A FASTA file that cannot be used; the one-line message names the file (record, line when known)."""


class DownloadError(RuntimeError):
    """A download that failed or did not match its checksum; the message names the URL or file."""


def default_fasta() -> Path:
    """Returns the path of the bundled lambda phage genome (plain gzip, 48,502 bp, 1 record)."""
    resource = importlib.resources.files("jaxseq") / "data" / "lambda_phage.fa.gz"
    return Path(os.fspath(resource))


def default_cache_dir() -> Path:
    """Returns ``$JAXSEQ_CACHE_DIR`` if set, else ``~/.cache/jaxseq``."""
    env = os.environ.get("JAXSEQ_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxseq"


def hash_file(path: str | Path, progress: Callable[[int], object] | None = None) -> str:
    """Hashes a file's bytes as stored (compressed bytes for ``.gz``): the token cache's key.

    BLAKE2b with a 160-bit digest, streamed 8 MiB at a time: about 1 GB/s on one core, so a ~1 GB
    gzipped human genome costs about a second on every :meth:`Genome.open`. That is the price of
    never trusting mtimes (see the module docstring).

    Args:
      path: file to hash.
      progress: optional callback given the number of bytes read after each block.

    Returns:
      40 lowercase hex characters.
    """
    digest = hashlib.blake2b(digest_size=20)
    buffer = bytearray(_HASH_BYTES)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            if progress is not None:
                progress(n)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Genome


class Genome:
    """A validated reference genome backed by a memory-mapped token cache.

    Attributes:
      path: the FASTA file given to :meth:`open`.
      names: record names in file order (the first whitespace-delimited word of each header,
        pyfaidx's default key).
      lengths: record name -> number of bases.
      content_hash: BLAKE2b-160 of the FASTA file's bytes (the cache key).
      cache_path: folder holding this genome's cache files.
    """

    path: Path
    names: list[str]
    lengths: dict[str, int]
    content_hash: str
    cache_path: Path

    def __init__(self, path: Path, cache_path: Path, meta: dict):
        """Maps an existing, complete cache folder. Use :meth:`open` instead."""
        self.path = Path(path)
        self.cache_path = Path(cache_path)
        self.content_hash = meta["content_hash"]
        self._meta = meta
        records = meta["records"]
        self.names = [r["name"] for r in records]
        self.lengths = {r["name"]: int(r["length"]) for r in records}
        total = int(meta["total_length"])
        all_tokens = np.memmap(self.cache_path / "tokens.u8", dtype=np.uint8, mode="r", shape=(total,))
        all_mask = np.memmap(self.cache_path / "soft_mask.u8", dtype=np.bool_, mode="r", shape=(total,))
        # Slices of a memmap are memmaps over the same mapping: one mmap per file, not per record.
        self._tokens = {r["name"]: all_tokens[r["start"]:r["start"] + r["length"]] for r in records}
        self._soft_mask = {r["name"]: all_mask[r["start"]:r["start"] + r["length"]] for r in records}

    @classmethod
    def open(cls, fasta: str | Path, cache_dir: str | Path | None = None) -> "Genome":
        """Opens a FASTA file, building and validating its token cache on first use.

        Validation rules (each failure is a :class:`GenomeError` with a one-line message naming the
        file, and the record and 1-based line number when known):

        * the file must exist and be non-empty; plain gzip and bgzip are decompressed on the fly
          (bgzip is multi-member gzip; Biopython, which pyfaidx needs for it, is not a dependency),
          and truncated or corrupt compressed data is an error; bzip2/xz/zstd/zip are refused;
        * blank lines may precede the first header; the first non-empty line must start with ``>``,
          and a header must have a name (a bare ``>`` is an error);
        * a record with no sequence is an **error** (not skipped): it usually means a truncated or
          mangled file, and a zero-length record would break splits downstream;
        * within a record every line has the same length (bases and line-ending bytes) except the
          last, which may be shorter; blank lines may only follow the last sequence line;
        * LF and CRLF endings are both read (tokens never see ``\\r``); CR-only (classic Mac) endings,
          or a stray CR, are an error; mixing LF and CRLF within a record is an error (it would
          break the index's fixed line layout);
        * record names must be unique;
        * sequence bytes must be A C G T U, lowercase, or IUPAC codes (mapped to N); anything else
          (digits, ``*``, ``-``, ``.``, spaces, non-ASCII) is an error naming record, line, and
          1-based position in the record.

        Args:
          fasta: FASTA file, optionally gzip/bgzip-compressed.
          cache_dir: cache root; default :func:`default_cache_dir`.

        Returns:
          The genome, its tokens memory-mapped read-only.

        Raises:
          GenomeError: if the file is missing, unreadable or invalid, or the cache cannot be written.
        """
        return prepare(fasta, cache_dir=cache_dir, progress=False)

    def tokens(self, name: str) -> np.ndarray:
        """Returns a record's tokens: read-only uint8 memmap ``(length,)`` with values in 0..4."""
        return self._tokens[self._check_name(name)]

    def soft_mask(self, name: str) -> np.ndarray:
        """Returns a record's soft-mask track: read-only bool memmap ``(length,)``, True where lowercase."""
        return self._soft_mask[self._check_name(name)]

    def as_mapping(self) -> dict[str, np.ndarray]:
        """Returns record name -> tokens memmap (uint8 ``(length,)``), in file order (what the loader takes)."""
        return {name: self._tokens[name] for name in self.names}

    def record_stats(self, name: str) -> dict[str, int]:
        """Returns counts for a record: ``length``, ``n_count`` (tokens == N), ``soft_masked``."""
        record = self._meta["records"][self.names.index(self._check_name(name))]
        return {key: int(record[key]) for key in ("length", "n_count", "soft_masked")}

    def _check_name(self, name: str) -> str:
        if name not in self._tokens:
            raise KeyError(f"{self.path}: no record named {name!r} (records: {', '.join(self.names[:10])}"
                           f"{', ...' if len(self.names) > 10 else ''})")
        return name

    def __reduce__(self):
        # Pickling a memmap copies its data; a Genome sent to another process re-maps the cache instead.
        return (Genome, (self.path, self.cache_path, self._meta))

    def __repr__(self) -> str:
        return f"Genome({str(self.path)!r}, {len(self.names)} records, {sum(self.lengths.values()):,} bp)"


def prepare(fasta: str | Path, cache_dir: str | Path | None = None, progress: bool = False) -> Genome:
    """Same as :meth:`Genome.open`, optionally with tqdm progress bars for hashing and building."""
    path = Path(fasta).expanduser()
    _check_readable(path)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = root.expanduser() / f"genome-v{CACHE_VERSION}"
    size = path.stat().st_size
    with _progress_bar(size, f"hash {path.name}", progress) as bar:
        key = hash_file(path, bar.update)
    final = root / key
    if final.is_dir():
        genome = _load(path, final, key)
        if genome is not None:
            return genome
        # A folder that exists but fails its checks was damaged after its atomic rename (manual
        # deletion, disk trouble): move it out of the way and rebuild rather than trust it.
        log.warning("token cache %s is damaged; rebuilding", final)
        _discard(final, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenomeError(f"{path}: cannot create token cache folder {root}: {e.strerror}") from None
    _remove_dead_builds(root)
    start = time.perf_counter()
    try:
        _build(path, key, root, final, progress)
    except OSError as e:  # disk full, permissions, I/O errors: still a one-line message naming the file
        raise GenomeError(f"{path}: cannot build the token cache in {root}: {e}") from None
    log.info("built token cache for %s in %.1f s: %s", path, time.perf_counter() - start, final)
    genome = _load(path, final, key)
    if genome is None:
        raise GenomeError(f"{path}: token cache {final} failed its checks right after being built")
    return genome


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise GenomeError(f"{path}: FASTA file not found")
    if not path.is_file():
        raise GenomeError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise GenomeError(f"{path}: FASTA file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise GenomeError(f"{path}: FASTA file is empty")


def _load(path: Path, folder: Path, key: str) -> Genome | None:
    """Maps a finished cache folder, or returns None if it is incomplete or not this content's."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        total = int(meta["total_length"])
        ok = (meta.get("version") == CACHE_VERSION and meta.get("content_hash") == key
              and (folder / "tokens.u8").stat().st_size == total
              and (folder / "soft_mask.u8").stat().st_size == total
              and sum(int(r["length"]) for r in meta["records"]) == total)
        return Genome(path, folder, meta) if ok else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _discard(folder: Path, root: Path) -> None:
    # Rename first (atomic) so no other process can load the folder while it is being deleted.
    trash = root / f".trash-{folder.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _remove_dead_builds(root: Path) -> None:
    """Deletes temporary build folders left by killed processes on this machine."""
    for entry in root.glob(".tmp-*"):
        match = re.match(r"\.tmp-[0-9a-f]+-(\d+)-", entry.name)
        if not match:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# Building


class _HashingReader:
    """Read-only file wrapper that hashes every byte passing through (for the re-check after building)."""

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
        while self.read(_HASH_BYTES):
            pass


def _build(path: Path, key: str, root: Path, final: Path, progress: bool) -> None:
    """Builds the cache for ``path`` in a temporary folder under ``root`` and renames it to ``final``."""
    # The pid in the name lets _remove_dead_builds tell a killed build from a running one.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-{os.getpid()}-", dir=root))
    try:
        with open(path, "rb") as raw:
            magic = raw.read(6)
            raw.seek(0)
            for prefix, kind in _COMPRESSED_MAGIC.items():
                if magic.startswith(prefix):
                    raise GenomeError(
                        f"{path}: {kind}-compressed FASTA is not supported; use plain text, gzip or bgzip")
            compressed = magic.startswith(b"\x1f\x8b")
            stat_before = os.fstat(raw.fileno())
            with _progress_bar(stat_before.st_size, f"build {path.name}", progress) as bar:
                hashing = _HashingReader(raw, bar.update)
                text_path = tmp / "genome.fa" if compressed else path
                parser = _parse_stream(path, hashing, tmp, text_path if compressed else None, compressed)
            hashing.drain()
            if hashing.digest.hexdigest() != key or os.stat(path).st_mtime_ns != stat_before.st_mtime_ns:
                raise GenomeError(f"{path}: file changed while the token cache was being built; try again")
        fai = tmp / "index.fai"
        fai.write_text("".join(
            f"{r.name}\t{r.length}\t{r.fai_offset}\t{r.line_bases}\t{r.line_bytes}\n" for r in parser.records))
        _check_with_pyfaidx(path, text_path, fai, tmp, parser.records, key)
        if compressed:
            # The decompressed text and its index only served the pyfaidx cross-check; the tokens
            # and mask are all training needs, and keeping a second copy of the genome is costly.
            (tmp / "genome.fa").unlink()
            fai.unlink()
        meta = {
            "version": CACHE_VERSION,
            "content_hash": key,
            "source": str(path.resolve()),
            "source_size": stat_before.st_size,
            "compressed": compressed,
            "total_length": parser.total,
            "records": [dataclasses.asdict(r) for r in parser.records],
        }
        _write_synced(tmp / "meta.json", json.dumps(meta, indent=1).encode())
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process finished the same content first; its folder is equivalent to ours.
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _parse_stream(path: Path, hashing: _HashingReader, tmp: Path, text_copy: Path | None,
                  compressed: bool) -> "_FastaParser":
    """Streams the (decompressed) text through the parser in blocks; returns the finished parser."""
    with open(tmp / "tokens.u8", "wb") as tokens_out, open(tmp / "soft_mask.u8", "wb") as mask_out, \
            (open(text_copy, "wb") if text_copy is not None else _NullWriter()) as text_out:
        parser = _FastaParser(path, tokens_out, mask_out)
        reader = gzip.GzipFile(fileobj=hashing, mode="rb") if compressed else hashing
        carry = b""
        try:
            while True:
                chunk = reader.read(BLOCK_BYTES)
                if not chunk:
                    break
                text_out.write(chunk)
                buf = carry + chunk if carry else chunk
                cut = buf.rfind(b"\n") + 1
                tail = len(buf) - cut
                at_line_start = cut > 0 or parser.pending == 0
                if tail > BLOCK_BYTES and not (at_line_start and buf[cut] == _GT):
                    # A very long (unwrapped) sequence line: consume it now instead of carrying it,
                    # so memory stays bounded. A final CR waits for the next block's LF.
                    keep = 1 if buf[-1] == _CR else 0
                    parser.feed(buf[:len(buf) - keep], open_tail=True, eof=False)
                    carry = buf[len(buf) - keep:]
                else:
                    if cut:
                        parser.feed(buf[:cut] if tail else buf, open_tail=False, eof=False)
                    carry = buf[cut:]
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise GenomeError(f"{path}: truncated or corrupt gzip data ({e})") from None
        if carry:
            parser.feed(carry, open_tail=True, eof=True)
        parser.finish()
        for f in (tokens_out, mask_out):
            f.flush()
            os.fsync(f.fileno())
    return parser


class _NullWriter:
    def write(self, data: bytes) -> int:
        return len(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


@dataclasses.dataclass
class _Record:
    name: str
    header_line: int
    start: int  # offset of the record's first token in tokens.u8
    fai_offset: int  # byte offset of the first sequence line in the (decompressed) text
    length: int = 0
    n_count: int = 0
    soft_masked: int = 0
    line_bases: int = 0
    line_bytes: int = 0


class _FastaParser:
    """Validating FASTA parser fed blocks of bytes; writes tokens and soft mask as it goes.

    Blocks normally end at a line feed. A block may instead end inside a long sequence line
    (``open_tail``); the line's length so far is kept in :attr:`pending` and its validation waits
    for the block that completes it. Work per block is vectorised with numpy over line boundaries;
    the Python loop runs once per header, not per line.
    """

    def __init__(self, path: Path, tokens_out: BinaryIO, mask_out: BinaryIO):
        self.path = path
        self.records: list[_Record] = []
        self.total = 0
        self.pending = 0  # bases of a sequence line left open at the end of the previous block
        self._tokens_out = tokens_out
        self._mask_out = mask_out
        self._record: _Record | None = None
        self._header_lines: dict[str, int] = {}
        self._lines_done = 0  # complete lines before the current block
        self._bytes_done = 0  # bytes before the current block
        # Layout state of the current record: the line that ended its regular run (short, blank or
        # differently terminated), after which only blank lines may follow.
        self._final_line = 0
        self._final_bases = 0
        self._final_bytes = 0

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
        is_header = arr[np.minimum(starts, size - 1)] == _GT
        is_header &= ends > starts
        if self.pending:
            bases[0] += self.pending
            line_bytes[0] += self.pending
            is_header[0] = False
        keep = (arr != _LF) & (arr != _CR) if (newlines.size or carriage.size) else None

        segment_start = 0
        for h in np.flatnonzero(is_header).tolist():
            self._sequence_lines(arr, keep, starts, ends, bases, line_bytes, segment_start, h, open_last=False)
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
        self._record = _Record(name=name, header_line=line, start=self.total, fai_offset=text_offset)
        self._final_line = 0

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
        mask = tokens_lib.soft_mask(seq)
        self._tokens_out.write(tok.tobytes())
        self._mask_out.write(mask.view(np.uint8).tobytes())
        record.length += tok.size
        record.n_count += int(np.count_nonzero(tok == tokens_lib.N))
        record.soft_masked += int(np.count_nonzero(mask))
        self.total += tok.size

    def _check_layout(self, record: _Record, bases: np.ndarray, line_bytes: np.ndarray, first_line: int) -> None:
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

    def _layout_error(self, record: _Record, next_line: int) -> GenomeError:
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
        self.records.append(record)
        self._record = None

    def finish(self) -> None:
        """Ends the last record; raises if the text held no record."""
        if self._bytes_done == 0:
            raise self._error("FASTA file is empty after decompression")
        self._end_record()
        if not self.records:
            raise self._error("no FASTA records (the file holds only blank lines)")


def _check_with_pyfaidx(path: Path, text_path: Path, fai: Path, tmp: Path, records: list[_Record], key: str) -> None:
    """Reads the new index with pyfaidx and compares names, lengths and sampled slices with the cache.

    This is an independent reader of the same bytes: a disagreement means a bug in the streaming
    parser (or an index layout pyfaidx reads differently), which must never reach training.
    """
    import pyfaidx  # deferred: only builds need it, and it must never be open across a fork

    total = sum(r.length for r in records)
    all_tokens = np.memmap(tmp / "tokens.u8", dtype=np.uint8, mode="r", shape=(total,))
    all_mask = np.memmap(tmp / "soft_mask.u8", dtype=np.bool_, mode="r", shape=(total,))
    rng = np.random.default_rng(int(key[:8], 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyfaidx warns about index mtimes, which we do not rely on
        fasta = pyfaidx.Fasta(str(text_path), indexname=str(fai), build_index=False, rebuild=False,
                              as_raw=True, strict_bounds=True, sequence_always_upper=False)
    try:
        names = list(fasta.keys())
        if names != [r.name for r in records]:
            raise GenomeError(f"{path}: internal error: pyfaidx reads record names {names[:5]} from the new "
                              f"index, expected {[r.name for r in records][:5]}")
        for record in records:
            if len(fasta[record.name]) != record.length:
                raise GenomeError(f"{path}, record {record.name!r}: internal error: pyfaidx length "
                                  f"{len(fasta[record.name])} != {record.length}")
            width = min(record.length, 200)
            starts = {0, record.length - width, *rng.integers(0, record.length - width + 1, size=2).tolist()}
            for s in sorted(starts):
                text = fasta[record.name][s:s + width]
                expected = all_tokens[record.start + s:record.start + s + width]
                expected_mask = all_mask[record.start + s:record.start + s + width]
                got = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
                if not (np.array_equal(tokens_lib.encode(got), expected)
                        and np.array_equal(tokens_lib.soft_mask(got), expected_mask)):
                    raise GenomeError(f"{path}, record {record.name!r}: internal error: pyfaidx reads "
                                      f"different sequence at {s + 1}-{s + width} than the token cache")
    finally:
        fasta.close()
        del all_tokens, all_mask


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # The rename is only durable once the parent folder's entry is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _NoBar:
    def update(self, n: int = 1) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _progress_bar(total: int | None, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Downloading


@dataclasses.dataclass(frozen=True)
class DownloadPreset:
    """A named FASTA to download.

    Attributes:
      url: the FASTA's URL.
      md5_url: URL of an ``md5checksums.txt`` listing (``<md5>  ./<file name>`` per line) that holds
        the FASTA's md5; fetched at download time, since the sum cannot be known offline.
      description: one line for ``--help``.
    """

    url: str
    md5_url: str
    description: str


_NCBI_GRCH38_P13 = "https://ftp.ncbi.nlm.nih.gov/genomes/all/GCF/000/001/405/GCF_000001405.39_GRCh38.p13/"

#: Named downloads for ``python -m jaxseq.genome download NAME``.
PRESETS: dict[str, DownloadPreset] = {
    "grch38-p13": DownloadPreset(
        url=_NCBI_GRCH38_P13 + "GCF_000001405.39_GRCh38.p13_genomic.fna.gz",
        md5_url=_NCBI_GRCH38_P13 + "md5checksums.txt",
        description="NCBI RefSeq human GRCh38.p13 (GCF_000001405.39), all records, soft-masked, about 1 GB gzipped",
    ),
}


class _Retryable(Exception):
    """A transfer failure worth retrying (connection dropped, timeout, 5xx)."""


def _user_agent() -> str:
    from jaxseq import __version__

    return f"jaxseq/{__version__} (python-urllib)"


def fetch_md5(md5_url: str, filename: str, *, timeout: float = 60.0) -> str:
    """Looks up a file's md5 in an ``md5checksums.txt`` listing.

    Args:
      md5_url: URL of the listing; lines are ``<32 hex>  <path>`` (NCBI writes ``./name``).
      filename: the file's base name.
      timeout: socket timeout in seconds.

    Returns:
      The md5 as 32 lowercase hex characters.

    Raises:
      DownloadError: if the listing cannot be fetched or has no entry for ``filename``.
    """
    request = urllib.request.Request(md5_url, headers={"User-Agent": _user_agent()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listing = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"{md5_url}: cannot fetch checksum listing: {e}") from None
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"[0-9a-fA-F]{32}", parts[0]) and Path(parts[-1]).name == filename:
            return parts[0].lower()
    raise DownloadError(f"{md5_url}: no md5 listed for {filename}")


def file_md5(path: str | Path) -> str:
    """Returns the md5 of a file as 32 lowercase hex characters (streamed)."""
    digest = hashlib.md5()
    buffer = bytearray(_HASH_BYTES)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def download(url: str, dest: str | Path, *, md5: str, retries: int = 5, retry_wait: float = 2.0,
             timeout: float = 60.0, progress: bool = True, chunk_bytes: int = 1 << 20) -> Path:
    """Downloads ``url`` into folder ``dest``, resumably, and verifies its md5.

    Bytes go to ``<dest>/<name>.part``; an interrupted transfer (dropped connection, timeout, 5xx)
    is retried with an HTTP ``Range`` request from the ``.part`` file's size, and a later call
    resumes the same way. The file is renamed to ``<dest>/<name>`` only after its md5 matches; a
    mismatch deletes the ``.part`` file, so no wrong or half file is ever left under the final name.
    If the final file already exists with the right md5, nothing is downloaded.

    Args:
      url: http(s) URL; the file name is the URL path's last component.
      dest: folder to download into (created if missing).
      md5: expected md5, 32 hex characters.
      retries: further attempts after a retryable failure (0 = one attempt).
      retry_wait: seconds before the first retry; doubles each time, at most 60.
      timeout: socket timeout in seconds.
      progress: show a tqdm bar on stderr.
      chunk_bytes: bytes per read.

    Returns:
      Path of the verified file.

    Raises:
      DownloadError: on a non-retryable HTTP error, when retries are exhausted (the ``.part`` file
        is kept for a later resume), or on an md5 mismatch (the ``.part`` file is deleted).
    """
    md5 = md5.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise DownloadError(f"{url}: expected md5 must be 32 hex characters, got {md5!r}")
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise DownloadError(f"{url}: URL has no file name")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / name
    part = dest / (name + ".part")
    if final.exists():
        got = file_md5(final)
        if got == md5:
            log.info("%s already downloaded and verified", final)
            return final
        raise DownloadError(f"{final}: already exists with md5 {got}, expected {md5}; remove it to download again")
    attempt = 0
    while True:
        try:
            _transfer(url, part, timeout=timeout, progress=progress, chunk_bytes=chunk_bytes)
            break
        except _Retryable as e:
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"{url}: download failed after {attempt} attempt(s): {e}; "
                                    f"partial data kept in {part}, run again to resume") from None
            wait = min(retry_wait * 2 ** (attempt - 1), 60.0)
            log.warning("%s: %s; retrying in %.0f s (attempt %d of %d)", url, e, wait, attempt + 1, retries + 1)
            time.sleep(wait)
    got = file_md5(part)
    if got != md5:
        part.unlink()
        raise DownloadError(f"{url}: md5 mismatch (expected {md5}, got {got}); deleted {part}")
    os.replace(part, final)
    return final


def _transfer(url: str, part: Path, *, timeout: float, progress: bool, chunk_bytes: int) -> None:
    """One HTTP request appending to ``part`` from its current size; raises _Retryable on transient failure."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: a transparently gzipped response would break byte offsets for Range resumes.
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            total = _content_range_total(e.headers.get("Content-Range", ""))
            if total == offset:
                return  # the previous attempt had already received every byte
            part.unlink()
            raise _Retryable(f"server refused resuming at byte {offset} (HTTP 416); restarting") from None
        if e.code >= 500 or e.code in (408, 429):
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retryable(str(getattr(e, "reason", e))) from None
    with response:
        if offset and response.status == 206:
            match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                part.unlink()
                raise _Retryable("server answered a resume with the wrong byte range; restarting")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:
            # 200: no Range sent, or the server ignores Range: start over from byte 0.
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        with open(part, mode) as out, _progress_bar(total, part.name[:-5], progress, initial=offset) as bar:
            while True:
                try:
                    chunk = response.read(chunk_bytes)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retryable(f"connection lost: {e!r}") from None
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        # http.client returns b"" (no exception) when the server closes early: check the count.
        raise _Retryable(f"connection closed after {size:,} of {total:,} bytes")


def _content_range_total(value: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", value)
    return int(match.group(1)) if match else None


def download_preset(preset: str | DownloadPreset, dest: str | Path, *, cache_dir: str | Path | None = None,
                    prepare_cache: bool = True, progress: bool = True, **download_kwargs) -> Path:
    """Downloads a named FASTA (see :data:`PRESETS`), verifies it, and prepares its token cache.

    The md5 is read from the preset's ``md5checksums.txt`` at download time.

    Args:
      preset: a key of :data:`PRESETS` or a :class:`DownloadPreset`.
      dest: folder to download into.
      cache_dir: token cache root for the preparation step.
      prepare_cache: build the token cache after downloading.
      progress: show progress bars.
      **download_kwargs: passed to :func:`download` (retries, timeout, ...).

    Returns:
      Path of the verified FASTA.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise DownloadError(f"unknown download {preset!r}; known: {', '.join(sorted(PRESETS))}")
        preset = PRESETS[preset]
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(preset.url).path)).name
    md5 = fetch_md5(preset.md5_url, name, timeout=download_kwargs.get("timeout", 60.0))
    path = download(preset.url, dest, md5=md5, progress=progress, **download_kwargs)
    if prepare_cache:
        prepare(path, cache_dir=cache_dir, progress=progress)
    return path


# --------------------------------------------------------------------------------------------
# Command line


def _print_records(genome: Genome, detailed: bool) -> None:
    total = sum(genome.lengths.values())
    print(f"{genome.path}: {len(genome.names)} record(s), {total:,} bp")
    if detailed:
        print(f"content hash (blake2b-160): {genome.content_hash}")
        print(f"token cache: {genome.cache_path}")
        print(f"{'record':<30} {'length':>14} {'N':>8} {'soft-masked':>12}")
    for name in genome.names:
        if detailed:
            stats = genome.record_stats(name)
            length = stats["length"]
            print(f"{name:<30} {length:>14,} {stats['n_count'] / length:>8.2%} {stats['soft_masked'] / length:>12.2%}")
        else:
            print(f"{name}\t{genome.lengths[name]}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jaxseq.genome", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="validate a FASTA and build its token cache; print records")
    p.add_argument("fasta")
    p.add_argument("--cache-dir", default=None, help="token cache root (default $JAXSEQ_CACHE_DIR or ~/.cache/jaxseq)")
    p = commands.add_parser("info", help="print records, lengths, N and soft-masked fractions, cache location")
    p.add_argument("fasta")
    p.add_argument("--cache-dir", default=None)
    p = commands.add_parser("download", help="download a FASTA (resumable, md5-checked) and prepare it",
                            description="Presets: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("preset", nargs="?", choices=sorted(PRESETS), help="named genome to download")
    p.add_argument("--url", help="URL of a FASTA (with --md5), instead of a preset")
    p.add_argument("--md5", help="expected md5 of --url")
    p.add_argument("--dest", required=True, help="folder to download into")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--no-prepare", action="store_true", help="do not build the token cache afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = sys.stderr.isatty()
    try:
        if args.command in ("prepare", "info"):
            genome = prepare(args.fasta, cache_dir=args.cache_dir, progress=progress)
            _print_records(genome, detailed=args.command == "info")
        else:
            if (args.preset is None) == (args.url is None):
                parser.error("download needs exactly one of a preset name or --url")
            if args.url is not None:
                if not args.md5:
                    parser.error("--url needs --md5")
                path = download(args.url, args.dest, md5=args.md5, retries=args.retries, progress=progress)
                if not args.no_prepare:
                    prepare(path, cache_dir=args.cache_dir, progress=progress)
            else:
                path = download_preset(args.preset, args.dest, cache_dir=args.cache_dir,
                                       prepare_cache=not args.no_prepare, progress=progress, retries=args.retries)
            print(path)
    except (GenomeError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
