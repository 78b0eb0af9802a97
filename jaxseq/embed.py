"""Embed genome regions with a trained model: ``python -m jaxseq.embed RUN_DIR --out FILE [options]``.

Examples::

    python -m jaxseq.embed runs/aemd --genome --out ecoli.h5
    python -m jaxseq.embed runs/aemd --bed peaks.bed --reduce mean --out peak_means.npy   # + peak_means.bed
    python -m jaxseq.embed runs/aemd --region K-12-MG1655:10,001-20,000 --stride 32 --out a.h5
    python -m jaxseq.embed runs/aemd --fasta ../shared/data/vcholerae_o395.fa.gz --genome --out vc.h5

What is embedded
    Regions come from ``--bed`` (0-based half-open, names kept), ``--region`` (samtools style,
    1-based inclusive, ``chr1`` alone = the whole record) or ``--genome`` (every record). The sequence
    is the run's genome (``data.fasta``, with ``data.aliases``) or ``--fasta`` (plain, gzip or bgzip).
    Each region is tiled by windows of the model's ``window_len`` starting at the region's start,
    every ``--stride`` bases (default: ``window_len``, no overlap):

    * when the last window would run past the region's end, one more window is added, shifted back
      to end exactly at the region's end (it overlaps its neighbour);
    * a region shorter than one window (zero-length included) gets one window, extended
      symmetrically around it and moved inside its record where the record ends; its rows are
      flagged ``extended``;
    * a region on a record shorter than one window cannot be embedded: it is skipped, counted and
      named on stderr; the ``region`` column keeps every row tied to its input region.

    Every row records the true 0-based half-open coordinates of its window. N bases are embedded as
    they are (N is an all-zero input); ``n_fraction`` lets users filter. ``--reduce mean`` writes one
    row per region: the mean of its windows' embeddings (and of the positions, for per-position
    models), with the region's own coordinates and ``span_start``/``span_end`` = the bases its
    windows read.

Output
    ``.h5``: datasets ``embeddings`` float32 ``(N, ...)`` (``(N, latent_len)`` for ``multilayer``,
    ``(N, L', C)`` per position for the others, ``(N, C)`` with ``--reduce mean``), ``chrom``
    (strings), ``start``, ``end`` (int64, 0-based half-open), ``name`` (BED name or ""),
    ``n_fraction`` (float32), ``region`` (int64 index into the input regions), ``extended`` (bool),
    and with ``--reduce mean`` ``windows``, ``span_start``, ``span_end``; attributes ``run_dir``,
    ``step``, ``model``, ``window_len``, ``stride``, ``reduce``, ``jaxseq_version``,
    ``genome_fingerprint``, ``fasta``. ``.npy``: the embeddings only, with a ``.bed`` sidecar beside it
    listing each row's ``chrom start end name`` in order (name ``.`` when empty).

    Windows are read from the token cache and written in chunks of ``--batch-size`` rows, so resident
    memory stays flat as the output grows. The output is written under a temporary name and renamed
    when complete: a failed or interrupted run never leaves a half-written file at ``--out``.

Errors (missing run, bad ``--step``, bad region string or BED line, unknown record, an output that is
not ``.h5``/``.npy`` or cannot be written) are one line on stderr with exit status 2, before compute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import jaxseq
from jaxseq import regions as regions_lib
from jaxseq import tokens as tok
from jaxseq.regions import Region, RegionError

FORMATS = (".h5", ".npy")
REDUCTIONS = ("none", "mean")
# Rows per h5 chunk are capped so that one chunk stays near this many bytes (fast appends, cheap reads).
_CHUNK_BYTES = 1 << 20


class EmbedError(ValueError):
    """Bad embedding request (output, stride, batch size, regions); the one-line message says which."""


# ----------------------------------------------------------------------------------------------
# Tiling


def tile_region(start: int, end: int, record_len: int, window_len: int, stride: int) -> tuple[np.ndarray, bool]:
    """Window starts covering ``[start, end)`` of a record (the rules of the module docstring).

    Args:
      start, end: the region, 0-based half-open, ``0 <= start <= end <= record_len``.
      record_len: length of the region's record.
      window_len: the model's window length.
      stride: bases between consecutive window starts (>= 1).

    Returns:
      ``(starts, extended)``: int64 ``(K,)`` window starts (each window is ``[s, s + window_len)``,
      inside the record), ascending; ``extended`` is True when the region is shorter than a window
      and its one window reaches outside it. ``K == 0`` when the record is shorter than a window.
    """
    if record_len < window_len:
        return np.zeros(0, np.int64), False
    if end - start < window_len:
        centred = start - (window_len - (end - start)) // 2
        return np.array([min(max(centred, 0), record_len - window_len)], np.int64), True
    starts = np.arange(start, end - window_len + 1, stride, dtype=np.int64)
    if starts[-1] + window_len < end:
        starts = np.append(starts, end - window_len)  # the tail window, shifted back to end at the region's end
    return starts, False


def count_windows(region_list: Sequence[Region], sizes: dict[str, int], window_len: int, stride: int) -> list[int]:
    """Number of windows of each region (0 for a region whose record is shorter than a window)."""
    counts = []
    for r in region_list:
        if sizes[r.chrom] < window_len:
            counts.append(0)
        elif r.end - r.start < window_len:
            counts.append(1)
        else:
            full = (r.end - r.start - window_len) // stride + 1
            counts.append(full + ((r.start + (full - 1) * stride + window_len) < r.end))
    return counts


class _Batch(NamedTuple):
    tokens: np.ndarray  # int8 (B, window_len)
    region: np.ndarray  # int64 (B,) index into the region list
    start: np.ndarray  # int64 (B,)
    extended: np.ndarray  # bool (B,)


def _window_batches(genome, region_list: Sequence[Region], window_len: int, stride: int,
                    batch_size: int) -> Iterator[_Batch]:
    """Batches of windows in region order, read from the token cache (one region's starts at a time)."""
    pending: list[_Batch] = []
    filled = 0
    for index, r in enumerate(region_list):
        record = genome.tokens(r.chrom)
        starts, extended = tile_region(r.start, r.end, len(record), window_len, stride)
        if not len(starts):
            continue
        view = np.lib.stride_tricks.sliding_window_view(record, window_len)
        i = 0
        while i < len(starts):
            part = starts[i:i + batch_size - filled]
            pending.append(_Batch(view[part].astype(np.int8), np.full(len(part), index, np.int64), part,
                                  np.full(len(part), extended)))
            filled += len(part)
            i += len(part)
            if filled == batch_size:
                yield _Batch(*(np.concatenate(column) for column in zip(*pending)))
                pending, filled = [], 0
    if pending:
        yield _Batch(*(np.concatenate(column) for column in zip(*pending)))


def _embedded_batches(model, batches: Iterator[_Batch], batch_size: int, bar
                      ) -> Iterator[tuple[_Batch, np.ndarray, np.ndarray]]:
    """``(batch, embeddings float32 (n, ...), n_fraction float32 (n,))``; one compiled shape for every call."""
    for batch in batches:
        bar.update(len(batch.start))
        n = len(batch.start)
        tokens = batch.tokens
        if n < batch_size:  # the last batch: padded with N windows so the model never recompiles
            tokens = np.concatenate([tokens, np.full((batch_size - n, tokens.shape[1]), tok.N, np.int8)])
        embeddings = np.asarray(model.encode(tokens, batch_size=batch_size)[:n], np.float32)
        yield batch, embeddings, (batch.tokens == tok.N).mean(axis=1, dtype=np.float32)


def _per_window_rows(embedded, region_list: Sequence[Region], window_len: int) -> Iterator[tuple[np.ndarray, dict]]:
    for batch, embeddings, n_fraction in embedded:
        yield embeddings, {"region": batch.region, "start": batch.start, "end": batch.start + window_len,
                           "n_fraction": n_fraction, "extended": batch.extended}


def _region_mean_rows(embedded, region_list: Sequence[Region], window_len: int) -> Iterator[tuple[np.ndarray, dict]]:
    """One row per region: means over its windows (and positions). A region's windows are consecutive."""
    current: dict[str, Any] | None = None
    for batch, embeddings, n_fraction in embedded:
        if embeddings.ndim == 3:  # per-position (n, L', C): the window's mean over positions first
            embeddings = embeddings.mean(axis=1)
        rows, columns = [], []
        bounds = np.flatnonzero(np.diff(batch.region)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(batch.region)]):
            index = int(batch.region[lo])
            if current is not None and current["region"] != index:
                rows.append(current.pop("sum") / current["windows"])
                columns.append(current)
                current = None
            if current is None:
                current = {"region": index, "sum": np.zeros(embeddings.shape[1:], np.float64), "windows": 0,
                           "n_sum": 0.0, "span_start": int(batch.start[lo]), "extended": bool(batch.extended[lo])}
            current["sum"] += embeddings[lo:hi].sum(axis=0, dtype=np.float64)
            current["windows"] += hi - lo
            current["n_sum"] += float(n_fraction[lo:hi].sum(dtype=np.float64))
            current["span_end"] = int(batch.start[hi - 1]) + window_len
        if rows:
            yield _mean_chunk(rows, columns, region_list)
    if current is not None:
        yield _mean_chunk([current.pop("sum") / current["windows"]], [current], region_list)


def _mean_chunk(rows: list, columns: list[dict], region_list: Sequence[Region]) -> tuple[np.ndarray, dict]:
    index = np.array([c["region"] for c in columns], np.int64)
    return np.asarray(rows, np.float32), {
        "region": index, "start": np.array([region_list[i].start for i in index], np.int64),
        "end": np.array([region_list[i].end for i in index], np.int64),
        "n_fraction": np.array([c["n_sum"] / c["windows"] for c in columns], np.float32),
        "extended": np.array([c["extended"] for c in columns], bool),
        "windows": np.array([c["windows"] for c in columns], np.int64),
        "span_start": np.array([c["span_start"] for c in columns], np.int64),
        "span_end": np.array([c["span_end"] for c in columns], np.int64)}


# ----------------------------------------------------------------------------------------------
# Writers: a temporary file renamed into place when complete


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class _H5Writer:
    """Resizable datasets appended a chunk at a time."""

    def __init__(self, path: Path, row_shape: tuple, columns: dict[str, Any], attrs: dict):
        import h5py

        self.path, self.tmp, self.rows = path, _temporary(path), 0
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs.update(attrs)
        chunk = max(1, min(4096, _CHUNK_BYTES // (4 * int(np.prod(row_shape)))))
        kinds = {"embeddings": (row_shape, np.float32), "chrom": ((), h5py.string_dtype()),
                 "name": ((), h5py.string_dtype()), **{k: ((), v) for k, v in columns.items()}}
        self.sets = {k: self.file.create_dataset(k, shape=(0, *shape), maxshape=(None, *shape),
                                                 chunks=(chunk, *shape), dtype=dtype)
                     for k, (shape, dtype) in kinds.items()}

    def append(self, embeddings: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        n = len(embeddings)
        for key, data in (("embeddings", embeddings), *columns.items()):
            dataset = self.sets[key]
            dataset.resize(self.rows + n, axis=0)
            dataset[self.rows:self.rows + n] = data
        self.rows += n

    def commit(self) -> list[Path]:
        self.file.close()
        os.replace(self.tmp, self.path)
        return [self.path]

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        self.tmp.unlink(missing_ok=True)


class _NpyWriter:
    """An ``.npy`` written sequentially after its header (no memmap: dirty mapped pages would count as
    resident memory until written back) and its ``.bed`` sidecar, line by line."""

    def __init__(self, path: Path, row_shape: tuple, n_rows: int, header: str):
        self.path, self.bed = path, path.with_suffix(".bed")
        self.tmp, self.bed_tmp, self.rows, self.n_rows = _temporary(path), _temporary(self.bed), 0, n_rows
        self.file = open(self.tmp, "wb")
        self.bed_file = open(self.bed_tmp, "w")
        np.lib.format.write_array_header_2_0(self.file, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                         "fortran_order": False, "shape": (n_rows, *row_shape)})
        self.bed_file.write(header)

    def append(self, embeddings: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        self.file.write(np.ascontiguousarray(embeddings, "<f4").tobytes())
        self.bed_file.writelines(f"{c}\t{s}\t{e}\t{n or '.'}\n" for c, s, e, n in
                                 zip(columns["chrom"], columns["start"], columns["end"], columns["name"]))
        self.rows += len(embeddings)

    def commit(self) -> list[Path]:
        if self.rows != self.n_rows:  # the header's shape was fixed up front
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows, the header says {self.n_rows}")
        self.file.close()
        self.bed_file.close()
        os.replace(self.tmp, self.path)
        os.replace(self.bed_tmp, self.bed)
        return [self.path, self.bed]

    def discard(self) -> None:
        for handle, tmp in ((self.file, self.tmp), (self.bed_file, self.bed_tmp)):
            with contextlib.suppress(Exception):
                handle.close()
            tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# The job


def resolve_regions(regions: Path | str | Sequence[Region | str] | None, sizes: dict[str, int],
                    aliases: dict[str, str] | None = None) -> list[Region]:
    """The regions to embed, 0-based half-open, record names resolved to the FASTA's.

    Args:
      regions: None for every record (``--genome``); a :class:`pathlib.Path` to a BED file; a region
        string (``chr1:10,001-20,000``, samtools style) or a sequence of region strings and
        :class:`jaxseq.regions.Region` (0-based half-open).
      sizes: record name -> length (``Genome.sizes()``).
      aliases: alias -> record name.

    Raises:
      RegionError: a bad BED line or region string, an unknown record, coordinates outside the record.
    """
    if regions is None:
        return [Region(name, 0, length) for name, length in sizes.items()]
    if isinstance(regions, Path):
        return regions_lib.read_bed(regions, sizes, aliases)
    resolved = []
    for item in [regions] if isinstance(regions, str) else regions:
        if isinstance(item, str):
            resolved.append(regions_lib.parse_region(item, sizes, aliases))
            continue
        r = Region(*item)
        chrom = regions_lib.resolve_record(r.chrom, sizes, aliases)
        if not 0 <= r.start <= r.end <= sizes[chrom]:
            raise RegionError(f"region {tuple(r)}: outside [0, {sizes[chrom]}] of record {chrom!r} or start > end "
                              "(0-based half-open)")
        resolved.append(r._replace(chrom=chrom))
    return resolved


def _check_output(out: str | Path, bed: Path | None) -> Path:
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise EmbedError(f"--out {out}: unknown output format {out.suffix or '(no suffix)'!r}; use .h5 (embeddings "
                         "and coordinates) or .npy (embeddings, with a .bed sidecar of coordinates)")
    if out.is_dir():
        raise EmbedError(f"--out {out}: is a directory")
    if not out.parent.is_dir():
        raise EmbedError(f"--out {out}: directory {out.parent} does not exist")
    sidecar = out.with_suffix(".bed")
    if out.suffix.lower() == ".npy" and bed is not None and sidecar.exists() and sidecar.samefile(bed):
        raise EmbedError(f"--out {out}: its .bed sidecar would overwrite the input {bed}; choose another name")
    probe = _temporary(out)
    try:
        probe.open("wb").close()
        probe.unlink()
    except OSError as e:
        raise EmbedError(f"--out {out}: cannot write in {out.parent} ({e.strerror})") from None
    return out


def _open_model(run_dir_or_model, step: int | None):
    if isinstance(run_dir_or_model, (str, Path)):
        return jaxseq.load_run(run_dir_or_model, step)
    if step is not None and step != run_dir_or_model.step:
        raise EmbedError(f"--step {step}: the given model is of step {run_dir_or_model.step}")
    return run_dir_or_model


def _open_genome(model, fasta, aliases, cache_dir):
    from jaxseq.genome import Genome, default_fasta

    data = model.config.data
    if fasta is None:  # the run's own genome, with its aliases
        fasta, aliases = (data.fasta or default_fasta()), (aliases or data.aliases or None)
    genome = Genome.open(fasta, cache_dir=cache_dir or data.cache_dir or None)
    return genome, (regions_lib.read_aliases(aliases, genome.names) if aliases else None)


def embed(run_dir_or_model, regions: Path | str | Sequence[Region | str] | None, out: str | Path, *,
          fasta: str | Path | None = None, aliases: str | Path | None = None, stride: int | None = None,
          reduce: str = "none", step: int | None = None, batch_size: int = 256,
          cache_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Embeds regions of a genome with a trained model and writes ``.h5`` or ``.npy`` + ``.bed``.

    Every check on the request (run, step, genome, regions, output) happens before any window is
    embedded; the output appears at ``out`` only when complete. Tiling, columns and attributes are
    described in the module docstring.

    Args:
      run_dir_or_model: a run directory (loaded with :func:`jaxseq.load_run`) or a :class:`jaxseq.TrainedModel`.
      regions: see :func:`resolve_regions` (None: the whole genome).
      out: ``.h5`` or ``.npy`` path (``.npy`` also writes ``out`` with suffix ``.bed``).
      fasta: genome to read (default: the run's ``data.fasta``).
      aliases: record aliases file (default: the run's ``data.aliases`` when reading the run's genome).
      stride: bases between window starts (default: the window length).
      reduce: ``none`` (a row per window) or ``mean`` (a row per region).
      step: checkpoint step when loading a run directory (default: the latest).
      batch_size: windows per model call and per written chunk.
      cache_dir: token cache root (default: the run's ``data.cache_dir``).
      progress: a tqdm bar on stderr.

    Returns:
      A summary: ``out`` (list of written paths), ``rows``, ``windows``, ``regions``,
      ``skipped_regions`` (names of ``chrom:start-end`` skipped), ``extended_regions``, ``shape``,
      ``seconds``, ``windows_per_sec`` and the file attributes.

    Raises:
      EmbedError, RegionError, GenomeError, EvaluateError, CheckpointError: bad input, before compute.
    """
    if reduce not in REDUCTIONS:
        raise EmbedError(f"--reduce {reduce!r}: choose from {', '.join(REDUCTIONS)}")
    for setting, value in (("--batch-size", batch_size), ("--stride", 1 if stride is None else stride)):
        if value < 1:
            raise EmbedError(f"{setting} must be >= 1, got {value}")
    bed = regions if isinstance(regions, Path) else None
    out = _check_output(out, bed)
    model = _open_model(run_dir_or_model, step)
    genome, alias_map = _open_genome(model, fasta, aliases, cache_dir)
    region_list = resolve_regions(regions, genome.sizes(), alias_map)
    window_len = model.window_len
    stride = stride or window_len
    counts = count_windows(region_list, genome.sizes(), window_len, stride)
    attrs = {"run_dir": str(model.run_dir or ""), "step": int(model.step), "model": model.config.model.name,
             "window_len": window_len, "stride": stride, "reduce": reduce, "jaxseq_version": jaxseq.__version__,
             "genome_fingerprint": genome.fingerprint, "fasta": str(genome.path),
             "coordinates": "0-based half-open", "regions": len(region_list)}
    return _compute(model, genome, region_list, counts, out, attrs, min(batch_size, max(1, sum(counts))), progress)


def _compute(model, genome, region_list: list[Region], counts: list[int], out: Path, attrs: dict, batch_size: int,
             progress: bool) -> dict:
    from tqdm import tqdm

    window_len, reduce = attrs["window_len"], attrs["reduce"]
    skipped = [f"{r.chrom}:{r.start + 1}-{r.end}" for r, c in zip(region_list, counts) if c == 0]
    attrs["skipped_regions"] = len(skipped)
    attrs["extended_regions"] = sum(c == 1 and r.end - r.start < window_len for r, c in zip(region_list, counts))
    # One padded batch of N windows: compiles the only shape used and gives the row shape.
    row_shape = model.encode(np.full((batch_size, window_len), tok.N, np.int8), batch_size=batch_size).shape[1:]
    row_shape = row_shape[-1:] if reduce == "mean" else row_shape
    n_rows = sum(counts) if reduce == "none" else sum(c > 0 for c in counts)
    if out.suffix.lower() == ".h5":
        columns = {"start": np.int64, "end": np.int64, "n_fraction": np.float32, "region": np.int64, "extended": bool}
        if reduce == "mean":
            columns |= {"windows": np.int64, "span_start": np.int64, "span_end": np.int64}
        writer = _H5Writer(out, row_shape, columns, attrs)
    else:
        header = "# jaxseq.embed rows of {}: {}\n".format(out.name, ", ".join(f"{k}={v}" for k, v in attrs.items()))
        writer = _NpyWriter(out, row_shape, n_rows, header)
    chroms = np.array([r.chrom for r in region_list], object)
    names = np.array([r.name for r in region_list], object)
    started = time.perf_counter()
    # Off a terminal (logs, CI) a line per refresh floods the file: refresh every 30 s there.
    bar = tqdm(total=sum(counts), desc=f"embed {out.name}", unit="window", disable=not progress, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    try:
        batches = _window_batches(genome, region_list, window_len, attrs["stride"], batch_size)
        embedded = _embedded_batches(model, batches, batch_size, bar)
        for embeddings, columns in (_region_mean_rows if reduce == "mean" else _per_window_rows)(
                embedded, region_list, window_len):
            writer.append(embeddings, {"chrom": chroms[columns["region"]], "name": names[columns["region"]],
                                       **columns})
        written = writer.commit()
    except BaseException:
        writer.discard()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    return {"out": [str(p) for p in written], "rows": n_rows, "windows": sum(counts), "shape": (n_rows, *row_shape),
            "skipped": skipped, "seconds": seconds, "windows_per_sec": sum(counts) / max(seconds, 1e-9), **attrs}


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxseq.embed", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dir", help="training run directory (config.yaml + checkpoints/)")
    parser.add_argument("--out", required=True, help="output file: .h5, or .npy (+ a .bed sidecar)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--bed", type=Path, help="regions to embed: BED file (plain or gzip, 0-based half-open)")
    what.add_argument("--region", nargs="+", action="extend", metavar="REGION",
                      help="regions like chr1:10,001-20,000 (1-based inclusive) or chr1 (whole record)")
    what.add_argument("--genome", action="store_true", help="every record of the genome")
    parser.add_argument("--fasta", help="genome to read (default: the run's data.fasta); plain, gzip or bgzip")
    parser.add_argument("--aliases", help="record aliases: two columns (name in FASTA, alias) or an NCBI "
                                          "assembly report (default: the run's data.aliases for its own genome)")
    parser.add_argument("--stride", type=int, help="bases between window starts (default: the window length)")
    parser.add_argument("--reduce", choices=REDUCTIONS, default="none",
                        help="none: a row per window (default); mean: a row per region")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per model call (default 256)")
    parser.add_argument("--cache-dir", help="token cache root (default: the run's data.cache_dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 with a one-line error before compute)."""
    from jaxseq.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    regions = args.bed if args.bed is not None else (args.region or None)
    try:
        summary = embed(args.run_dir, regions, args.out, fasta=args.fasta, aliases=args.aliases, stride=args.stride,
                        reduce=args.reduce, step=args.step, batch_size=args.batch_size, cache_dir=args.cache_dir,
                        progress=True)
    # ValueError: EmbedError, RegionError, GenomeError, EvaluateError, ConfigError; OSError: e.g. a full disk.
    except (ValueError, CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; nothing was written to {args.out}", file=sys.stderr)
        return 130
    if summary["skipped"]:
        shown = ", ".join(summary["skipped"][:5]) + (", ..." if len(summary["skipped"]) > 5 else "")
        print(f"skipped {len(summary['skipped'])} region(s) on records shorter than the window "
              f"({summary['window_len']} bases): {shown}", file=sys.stderr)
    shape = " x ".join(f"{n:,}" for n in summary["shape"])
    print(f"wrote {' and '.join(summary['out'])}: {shape} float32 from {summary['windows']:,} windows of "
          f"{summary['regions']:,} region(s) (window {summary['window_len']}, stride {summary['stride']}, reduce "
          f"{summary['reduce']}, {summary['extended_regions']} extended) in {summary['seconds']:.1f} s "
          f"({summary['windows_per_sec']:,.0f} windows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
