"""Reference genomes: a FASTA file as a verified, memory-mapped uint8 token cache.

:meth:`Genome.open` turns a FASTA file into a token cache once and memory-maps it afterwards:

* :func:`jaxseq.fasta.parse_fasta` validates the text in one streaming pass and writes tokens and
  the soft-mask track to two flat files, with a CRC-32 and a BLAKE2b digest per record; pyfaidx then
  cross-checks names, lengths and slices (:func:`jaxseq.fasta.check_with_pyfaidx`) during the build
  only: a ``pyfaidx.Fasta`` holds an open file and a lock and must not be shared across a fork, so
  training reads nothing but memmaps;
* the cache lives under ``$JAXSEQ_CACHE_DIR`` (default ``~/.cache/jaxseq``), never next to the
  FASTA, so read-only data folders work and nothing is written beside the input;
* it is keyed by a hash of the file's bytes, not its mtime (a ``.fai`` or cache trusted by mtime
  silently goes stale when the FASTA is replaced by an older-dated file);
* it is built in a temporary folder and renamed into place, so a killed build is never trusted;
* every open verifies it: sizes, layout, each record's CRC-32 (tokens and mask) and that every
  token is in 0..4. A cache that fails is moved aside and rebuilt, with a one-line message on
  stderr; it is never blamed on the FASTA. Cost: zlib.crc32 reads ~2.4 GB/s per core; a 1 Gb cache
  in the page cache verified in 1.3-2.5 s on a loaded 2-core machine (README.md, "Genomes").

:attr:`Genome.fingerprint` identifies the *content* (names, lengths, bases, soft mask), not the file:
the same sequence plain or gzipped has one fingerprint, and a run stores it to stay bound to its data.

Cache layout: ``<cache_dir>/genome-v2/<blake2b-160 of the FASTA file>/`` holding ``tokens.u8``
(uint8, all records concatenated), ``soft_mask.u8`` (0/1 per base), ``meta.json`` (records,
offsets, lengths, counts, checksums, fingerprint) and, for uncompressed FASTA, ``index.fai``.

Command line::

    python -m jaxseq.genome prepare FASTA [--cache-dir D]
    python -m jaxseq.genome info FASTA [--cache-dir D]
    python -m jaxseq.genome sizes FASTA [--cache-dir D]      # chrom.sizes on stdout, nothing else
    python -m jaxseq.genome download grch38-p13 --dest DIR [--all-records] [--no-prepare]
    python -m jaxseq.genome download --url URL --md5 SUM --dest DIR
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import difflib
import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxseq import fasta as fasta_lib
from jaxseq import tokens as tokens_lib
from jaxseq.download import PRESETS, DownloadError, download, download_preset, progress_bar
from jaxseq.fasta import GenomeError

__all__ = ["CACHE_VERSION", "Genome", "GenomeError", "GenomeRecord", "default_cache_dir", "default_fasta",
           "hash_file", "main", "prepare"]

log = logging.getLogger(__name__)

#: Bump when the cache layout or parsing rules change: old caches are then simply not found.
CACHE_VERSION = 2
_HASH_BYTES = 8 << 20
_VERIFY_BYTES = 64 << 20
_LOWER = np.frombuffer(tokens_lib.SYMBOLS.lower().encode(), dtype=np.uint8)
_UPPER = np.frombuffer(tokens_lib.SYMBOLS.encode(), dtype=np.uint8)


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
    """A validated reference genome backed by a verified, memory-mapped token cache.

    Access is pyfaidx-like, with 0-based half-open coordinates: ``genome.fetch("chr1", 0, 10)``,
    ``genome.tokens("chr1", 0, 10)``, ``genome["chr1"][0:10]``, ``genome.sizes()``.

    Attributes:
      path: the FASTA file given to :meth:`open`.
      names: record names in file order (the first whitespace-delimited word of each header,
        pyfaidx's default key).
      lengths: record name -> number of bases.
      content_hash: BLAKE2b-160 of the FASTA file's bytes (the cache key).
      fingerprint: BLAKE2b-160 of the content: record names, lengths, tokens and soft mask, in file
        order. Independent of compression, line width and line endings; what runs store.
      cache_path: folder holding this genome's cache files.
    """

    path: Path
    names: list[str]
    lengths: dict[str, int]
    content_hash: str
    fingerprint: str
    cache_path: Path

    def __init__(self, path: Path, cache_path: Path, meta: dict):
        """Maps an existing, verified cache folder. Use :meth:`open` instead."""
        self.path = Path(path)
        self.cache_path = Path(cache_path)
        self.content_hash = meta["content_hash"]
        self.fingerprint = meta["fingerprint"]
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

        Validation rules are :mod:`jaxseq.fasta`'s; the cache is verified on every open (see the
        module docstring) and rebuilt when it fails.

        Args:
          fasta: FASTA file, optionally gzip/bgzip-compressed.
          cache_dir: cache root; default :func:`default_cache_dir`.

        Returns:
          The genome, its tokens memory-mapped read-only.

        Raises:
          GenomeError: if the file is missing, unreadable or invalid, or the cache cannot be written.
        """
        return prepare(fasta, cache_dir=cache_dir, progress=False)

    def tokens(self, name: str, start: int | None = None, end: int | None = None) -> np.ndarray:
        """Returns tokens of a record or of ``[start, end)`` of it.

        Args:
          name: record name (as in the FASTA; resolve aliases with :mod:`jaxseq.regions` first).
          start: 0-based first base; default 0.
          end: 0-based end, exclusive; default the record's length.

        Returns:
          Read-only uint8 memmap ``(end - start,)`` with values in 0..4 (A C G T N).

        Raises:
          KeyError: unknown record (the message lists close names).
          ValueError: coordinates outside ``0 <= start <= end <= length``.
        """
        whole = self._tokens[self._check_name(name)]
        return whole if start is None and end is None else whole[self._span(name, start, end)]

    def soft_mask(self, name: str, start: int | None = None, end: int | None = None) -> np.ndarray:
        """Returns the soft-mask track of a record (or ``[start, end)``): read-only bool ``(n,)``, True where lowercase."""
        whole = self._soft_mask[self._check_name(name)]
        return whole if start is None and end is None else whole[self._span(name, start, end)]

    def fetch(self, name: str, start: int | None = None, end: int | None = None) -> str:
        """Returns ``[start, end)`` of a record as text, like ``pyfaidx.Fasta(...)[name][start:end]``.

        The text is the cached sequence: ``ACGTN``, lowercase where the FASTA was lowercase; IUPAC
        ambiguity codes read as ``N`` and ``U`` as ``T`` (that is what the model sees).

        Returns:
          A string of ``end - start`` characters.
        """
        tok = np.asarray(self.tokens(name, start, end))
        mask = np.asarray(self.soft_mask(name, start, end))
        return np.where(mask, _LOWER[tok], _UPPER[tok]).tobytes().decode("ascii")

    def sizes(self) -> dict[str, int]:
        """Returns record name -> length in bases, in file order (a ``chrom.sizes`` table)."""
        return dict(self.lengths)

    def __getitem__(self, name: str) -> "GenomeRecord":
        return GenomeRecord(self, self._check_name(name))

    def __contains__(self, name: object) -> bool:
        return name in self._tokens

    def as_mapping(self) -> dict[str, np.ndarray]:
        """Returns record name -> tokens memmap (uint8 ``(length,)``), in file order (what the loader takes)."""
        return {name: self._tokens[name] for name in self.names}

    def record_stats(self, name: str) -> dict[str, int]:
        """Returns counts for a record: ``length``, ``n_count`` (tokens == N), ``soft_masked``."""
        record = self._meta["records"][self.names.index(self._check_name(name))]
        return {key: int(record[key]) for key in ("length", "n_count", "soft_masked")}

    def _check_name(self, name: str) -> str:
        if name not in self._tokens:
            close = difflib.get_close_matches(str(name), self.names, n=5)
            hint = f"close names: {', '.join(close)}" if close else (
                f"records: {', '.join(self.names[:10])}{', ...' if len(self.names) > 10 else ''}")
            raise KeyError(f"{self.path}: no record named {name!r} ({hint})")
        return name

    def _span(self, name: str, start: int | None, end: int | None) -> slice:
        length = self.lengths[name]
        start = 0 if start is None else int(start)
        end = length if end is None else int(end)
        if not 0 <= start <= end <= length:
            raise ValueError(f"{self.path}, record {name!r}: [{start}, {end}) is outside [0, {length}) "
                             f"or start > end (coordinates are 0-based, half-open)")
        return slice(start, end)

    def __reduce__(self):
        # Pickling a memmap copies its data; a Genome sent to another process re-maps the cache instead.
        return (Genome, (self.path, self.cache_path, self._meta))

    def __repr__(self) -> str:
        return f"Genome({str(self.path)!r}, {len(self.names)} records, {sum(self.lengths.values()):,} bp)"


class GenomeRecord:
    """``genome[name]``: a record's length and text slices (``record[a:b]`` is ``genome.fetch(name, a, b)``)."""

    def __init__(self, genome: Genome, name: str):
        self.genome = genome
        self.name = name

    def __len__(self) -> int:
        return self.genome.lengths[self.name]

    def __getitem__(self, index: slice) -> str:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"record {self.name!r}: index with a slice [start:end] (step 1), got {index!r}")
        start, end, _ = index.indices(len(self))
        return self.genome.fetch(self.name, start, max(start, end))

    def __repr__(self) -> str:
        return f"GenomeRecord({self.name!r}, {len(self):,} bp)"


def prepare(fasta: str | Path, cache_dir: str | Path | None = None, progress: bool = False) -> Genome:
    """Same as :meth:`Genome.open`, optionally with tqdm progress bars for hashing and building."""
    path = Path(fasta).expanduser()
    _check_readable(path)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = root.expanduser() / f"genome-v{CACHE_VERSION}"
    with progress_bar(path.stat().st_size, f"hash {path.name}", progress) as bar:
        key = hash_file(path, bar.update)
    final = root / key
    if final.is_dir():
        meta, problem = _verify(final, key)
        if problem is None:
            return Genome(path, final, meta)
        # Damaged after its atomic rename (disk trouble, a stray write, deletion): the FASTA is fine.
        print(f"warning: token cache {final} failed verification ({problem}); rebuilding it from {path}",
              file=sys.stderr)
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
    meta, problem = _verify(final, key)
    if problem is not None:
        raise GenomeError(f"token cache {final} (of {path}) failed verification right after being built: "
                          f"{problem}; check the disk holding {root}")
    return Genome(path, final, meta)


def fingerprint(records: list[dict]) -> str:
    """Returns the content fingerprint of records (dicts with ``name``, ``length``, ``digest``)."""
    text = "".join(f"{r['name']}\t{r['length']}\t{r['digest']}\n" for r in records)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def _verify(folder: Path, key: str) -> tuple[dict | None, str | None]:
    """Checks a finished cache folder; returns (meta, None) when sound, else (None, what failed).

    Every byte of both files is read: CRC-32 per record (zlib, ~2 GB/s) and the largest token and
    mask value, so a token outside 0..4 can never reach the loader even if a checksum collided.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
        total = int(meta["total_length"])
        records = meta["records"]
        if meta.get("version") != CACHE_VERSION or meta.get("content_hash") != key:
            return None, "meta.json is not this file's"
        if meta.get("fingerprint") != fingerprint(records):
            return None, "meta.json fingerprint does not match its records"
        for name in ("tokens.u8", "soft_mask.u8"):
            size = (folder / name).stat().st_size
            if size != total:
                return None, f"{name} has {size:,} bytes, expected {total:,}"
        offset = 0
        for r in records:
            if int(r["start"]) != offset or int(r["length"]) <= 0:
                return None, f"meta.json layout of record {r['name']!r} is inconsistent"
            offset += int(r["length"])
        if offset != total:
            return None, "meta.json record lengths do not add up"
        checks = [(name, field, limit, r) for name, field, limit in (
            ("tokens.u8", "tokens_crc32", tokens_lib.N), ("soft_mask.u8", "mask_crc32", 1)) for r in records]
        # zlib.crc32 and ndarray.max release the GIL: threads check records side by side.
        with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            for problem in pool.map(lambda check: _check_record(folder, total, *check), checks):
                if problem is not None:
                    return None, problem
        return meta, None
    except FileNotFoundError as e:
        return None, f"{Path(e.filename).name} is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable: {type(e).__name__}: {e}"


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise GenomeError(f"{path}: FASTA file not found")
    if not path.is_file():
        raise GenomeError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise GenomeError(f"{path}: FASTA file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise GenomeError(f"{path}: FASTA file is empty")


def _check_record(folder: Path, total: int, name: str, field: str, limit: int, record: dict) -> str | None:
    """CRC-32 and largest value of one record's bytes in one cache file; None when both are right."""
    data = np.memmap(folder / name, dtype=np.uint8, mode="r", shape=(total,))
    crc, top = 0, 0
    end = record["start"] + record["length"]
    for a in range(record["start"], end, _VERIFY_BYTES):
        chunk = data[a:min(a + _VERIFY_BYTES, end)]
        crc = zlib.crc32(chunk, crc)
        top = max(top, int(chunk.max()))
    if crc != int(record[field]) or top > limit:
        return f"{name}, record {record['name']!r}: checksum mismatch" + (
            f" (holds the value {top})" if top > limit else "")
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


def _build(path: Path, key: str, root: Path, final: Path, progress: bool) -> None:
    """Builds the cache for ``path`` in a temporary folder under ``root`` and renames it to ``final``."""
    # The pid in the name lets _remove_dead_builds tell a killed build from a running one.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-{os.getpid()}-", dir=root))
    try:
        with open(path, "rb") as raw:
            compressed = fasta_lib.is_gzip(path, raw)
            stat_before = os.fstat(raw.fileno())
            excerpt = tmp / "excerpt.fa"
            with progress_bar(stat_before.st_size, f"build {path.name}", progress) as bar, \
                    open(tmp / "tokens.u8", "wb") as tokens_out, open(tmp / "soft_mask.u8", "wb") as mask_out, \
                    open(excerpt if compressed else os.devnull, "wb") as excerpt_out:
                hashing = fasta_lib.HashingReader(raw, bar.update)
                records = fasta_lib.parse_fasta(path, hashing, tokens_out, mask_out, compressed=compressed,
                                                excerpt_out=excerpt_out if compressed else None)
                for f in (tokens_out, mask_out):
                    f.flush()
                    os.fsync(f.fileno())
            hashing.drain()
            if hashing.digest.hexdigest() != key or os.stat(path).st_mtime_ns != stat_before.st_mtime_ns:
                raise GenomeError(f"{path}: file changed while the token cache was being built; try again")
        _cross_check(path, tmp, records, key, compressed)
        rows = [dataclasses.asdict(r) for r in records]
        meta = {
            "version": CACHE_VERSION,
            "content_hash": key,
            "fingerprint": fingerprint(rows),
            "source": str(path.resolve()),
            "source_size": stat_before.st_size,
            "compressed": compressed,
            "total_length": sum(r.length for r in records),
            "records": rows,
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


def _cross_check(path: Path, tmp: Path, records: list, key: str, compressed: bool) -> None:
    """pyfaidx re-reads the text: the plain file in place, or the excerpt of a gzipped one."""
    total = sum(r.length for r in records)
    tokens = np.memmap(tmp / "tokens.u8", dtype=np.uint8, mode="r", shape=(total,))
    mask = np.memmap(tmp / "soft_mask.u8", dtype=np.bool_, mode="r", shape=(total,))
    excerpt = tmp / "excerpt.fa"
    try:
        if compressed:
            size = excerpt.stat().st_size
            # A decompressed text that fits in the excerpt is checked whole.
            complete = size < fasta_lib.PYFAIDX_EXCERPT_BYTES
            fasta_lib.check_with_pyfaidx(path, excerpt, tmp / "excerpt.fai", records, tokens, mask,
                                         text_size=None if complete else size, seed=int(key[:8], 16))
        else:
            # The plain file's index stays in the cache: pyfaidx users can read the FASTA with it.
            fasta_lib.check_with_pyfaidx(path, path, tmp / "index.fai", records, tokens, mask, seed=int(key[:8], 16))
    finally:
        del tokens, mask
        for name in ("excerpt.fa", "excerpt.fai"):
            (tmp / name).unlink(missing_ok=True)


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



# --------------------------------------------------------------------------------------------
# Command line


def _print_records(genome: Genome, detailed: bool) -> None:
    total = sum(genome.lengths.values())
    print(f"{genome.path}: {len(genome.names)} record(s), {total:,} bp")
    if detailed:
        print(f"file hash (blake2b-160): {genome.content_hash}")
        print(f"content fingerprint: {genome.fingerprint}")
        print(f"token cache: {genome.cache_path}")
        print(f"{'record':<30} {'length':>14} {'N':>8} {'soft-masked':>12}")
    for name in genome.names:
        if detailed:
            stats = genome.record_stats(name)
            length = stats["length"]
            print(f"{name:<30} {length:>14,} {stats['n_count'] / length:>8.2%} {stats['soft_masked'] / length:>12.2%}")
        else:
            print(f"{name}\t{genome.lengths[name]}")




def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxseq.genome", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cache_help = "token cache root (default $JAXSEQ_CACHE_DIR or ~/.cache/jaxseq)"
    for name, text in (("prepare", "validate a FASTA and build its token cache; print records"),
                       ("info", "print records, lengths, N and soft-masked fractions, fingerprint, cache location"),
                       ("sizes", "print a two-column chrom.sizes table (name, length) and nothing else")):
        p = commands.add_parser(name, help=text)
        p.add_argument("fasta")
        p.add_argument("--cache-dir", default=None, help=cache_help)
    p = commands.add_parser("download", help="download a FASTA (resumable, md5-checked) and prepare it",
                            description="Presets: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("preset", nargs="?", choices=sorted(PRESETS), help="named genome to download")
    p.add_argument("--url", help="URL of a FASTA (with --md5), instead of a preset")
    p.add_argument("--md5", help="expected md5 of --url")
    p.add_argument("--dest", required=True, help="folder to download into")
    p.add_argument("--cache-dir", default=None, help=cache_help)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--all-records", action="store_true",
                   help="keep alternate loci, patches and unplaced scaffolds (default: assembled chromosomes only)")
    p.add_argument("--no-prepare", action="store_true", help="do not build the token cache afterwards")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = sys.stderr.isatty()
    try:
        if args.command in ("prepare", "info", "sizes"):
            genome = prepare(args.fasta, cache_dir=args.cache_dir, progress=progress)
            if args.command == "sizes":
                sys.stdout.write("".join(f"{name}\t{length}\n" for name, length in genome.sizes().items()))
            else:
                _print_records(genome, detailed=args.command == "info")
            return 0
        if (args.preset is None) == (args.url is None):
            parser.error("download needs exactly one of a preset name or --url")
        if args.url is not None:
            if not args.md5:
                parser.error("--url needs --md5")
            path = download(args.url, args.dest, md5=args.md5, retries=args.retries, progress=progress)
        else:
            path = download_preset(args.preset, args.dest, all_records=args.all_records, progress=progress,
                                   retries=args.retries)
            if Path(f"{path}.aliases.tsv").exists():
                print(f"record aliases (use as data.aliases): {path}.aliases.tsv", file=sys.stderr)
        if not args.no_prepare:
            prepare(path, cache_dir=args.cache_dir, progress=progress)
        print(path)
    except (GenomeError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
